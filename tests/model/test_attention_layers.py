"""What each attention layer attends with: the softmax of the deformable attention's weights, and
which of content and position go into query and value (Deformable-DETR's, PETR's)."""

import pytest
import torch

import jcra.deformable_attention
from jcra.decoder import PoseDecoderLayer, PoseDeformAttn
from jcra.deformable_attention import MSDeformAttn
from jcra.encoder import DeformableEncoderLayer
from tests.model.conftest import randomise_zero_init

SHAPES = ((5, 6), (3, 2))
S = sum(h * w for h, w in SHAPES)


def _recorded_calls(module: torch.nn.Module) -> list:
    """The positional arguments of each call of ``module``, recorded by a forward pre-hook."""
    calls = []
    module.register_forward_pre_hook(lambda _, args, kwargs: calls.append(args), with_kwargs=True)
    return calls


@pytest.mark.parametrize("points", [1, 3])
def test_each_heads_weights_are_a_softmax_over_all_its_levels_and_points(monkeypatch, points):
    gen = torch.Generator().manual_seed(0)
    attn = MSDeformAttn(16, num_heads=4, num_levels=2, num_points=points)
    attn.use_fused = False
    with torch.no_grad():
        for p in attn.attention_weights.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    seen = []

    def recorded_reference(value, shapes, locations, weights):
        seen.append(weights)
        return reference(value, shapes, locations, weights)

    reference = jcra.deformable_attention.ms_deform_attn_reference
    monkeypatch.setattr(jcra.deformable_attention, "ms_deform_attn_reference", recorded_reference)
    query, value = torch.randn(2, 7, 16, generator=gen), torch.randn(2, S, 16, generator=gen)
    attn(query, torch.rand(2, 7, 2, 2, generator=gen), value, SHAPES)
    (weights,) = seen  # [N, Lq, M, L, P]
    logits = attn.attention_weights(query).view(2, 7, 4, 2 * points)
    torch.testing.assert_close(weights.flatten(-2), logits.softmax(-1))
    torch.testing.assert_close(weights.sum((-2, -1)), torch.ones(2, 7, 4))
    assert weights.sum(-1).std() > 0.01  # the levels share each head's weight unequally


def test_pose_attention_starts_on_the_keypoints_themselves():
    attn = PoseDeformAttn(16, num_heads=4, num_levels=2, num_points=17)
    assert not attn.sampling_offsets.weight.any() and not attn.sampling_offsets.bias.any()
    assert MSDeformAttn(16, 4, 2, 4).sampling_offsets.bias.any()  # Deformable-DETR's ring


def test_encoder_layer_queries_with_position_and_samples_the_content():
    gen = torch.Generator().manual_seed(1)
    layer = DeformableEncoderLayer(16, num_heads=4, num_levels=2, num_points=2, ffn_dim=32, dropout=0.0)
    layer.attn.use_fused = False
    calls = _recorded_calls(layer.attn)
    src, pos = torch.randn(2, S, 16, generator=gen), torch.randn(2, S, 16, generator=gen)
    layer(src, pos, torch.rand(2, S, 2, 2, generator=gen), SHAPES, torch.zeros(2, S, dtype=torch.bool))
    query, _, value, *_ = calls[0]
    torch.testing.assert_close(query, src + pos)
    torch.testing.assert_close(value, src)


def test_decoder_layer_adds_the_query_position_to_queries_and_keys_never_to_values():
    gen = torch.Generator().manual_seed(2)
    layer = PoseDecoderLayer(16, num_keypoints=3, num_heads=4, num_levels=2, ffn_dim=32, dropout=0.0).eval()
    randomise_zero_init(layer, gen)
    layer.cross_attn.use_fused = False
    self_calls, cross_calls = _recorded_calls(layer.self_attn), _recorded_calls(layer.cross_attn)
    normed = []
    layer.norm1.register_forward_hook(lambda _, args, out: normed.append(out))
    tgt, query_pos = torch.randn(2, 5, 16, generator=gen), torch.randn(2, 5, 16, generator=gen)
    memory = torch.randn(2, S, 16, generator=gen)
    reference = torch.rand(2, 5, 2, 3, 2, generator=gen)
    layer(tgt, query_pos, reference, None, memory, SHAPES, torch.zeros(2, S, dtype=torch.bool))
    q, k, v = self_calls[0][:3]
    torch.testing.assert_close(q, tgt + query_pos)
    torch.testing.assert_close(k, tgt + query_pos)
    torch.testing.assert_close(v, tgt)
    query, _, value, *_ = cross_calls[0]
    torch.testing.assert_close(query, normed[0] + query_pos)
    torch.testing.assert_close(value, memory)
