"""jcra.decoder: the keypoint-local refinement (sampling local maps at each keypoint) and its head."""

import pytest
import torch
import torch.nn.functional as F

from jcra.decoder import LocalKeypointHead, finest_level_map, sample_map
from jcra.model import _image_extent

H, W = 5, 7  # the finest level, odd sizes; a coarser level's tokens follow in memory


def _memory(gen: torch.Generator, B: int = 2, C: int = 3) -> torch.Tensor:
    return torch.randn(B, H * W + 3 * 4, C, generator=gen)


def test_samples_at_cell_centres_are_the_tokens_and_zero_far_outside():
    gen = torch.Generator().manual_seed(0)
    memory = _memory(gen)
    padding = torch.zeros(memory.shape[:2], dtype=torch.bool)
    # token (row 2, col 5) at its cell centre; a point left of the map
    points = torch.tensor([(5.5 / W, 2.5 / H), (-1.0, 0.5)]).expand(2, -1, -1)
    level_map = finest_level_map(memory, H, W, padding)
    out = sample_map(level_map, points)  # [B, N=2, C]
    torch.testing.assert_close(out[:, 0], memory[:, 2 * W + 5])
    assert (out[:, 1] == 0).all()
    # halfway between two horizontal neighbours: their mean
    mid = sample_map(level_map, torch.tensor([[(3.0 / W, 1.5 / H)]]).expand(2, -1, -1))
    torch.testing.assert_close(mid[:, 0], (memory[:, W + 2] + memory[:, W + 3]) / 2)


def test_padded_tokens_read_as_zero():
    gen = torch.Generator().manual_seed(1)
    memory = _memory(gen)
    padding = torch.zeros(memory.shape[:2], dtype=torch.bool)
    padding[0, 6] = True  # row 0, col 6 of image 0
    level_map = finest_level_map(memory, H, W, padding)
    out = sample_map(level_map, torch.tensor([[(6.5 / W, 0.5 / H)]]).expand(2, -1, -1))
    assert (out[0, 0] == 0).all()
    torch.testing.assert_close(out[1, 0], memory[1, 6])


def test_a_fresh_head_returns_its_reference_and_a_trained_one_reads_the_memory():
    gen = torch.Generator().manual_seed(2)
    B, Q, K, C = 2, 4, 17, 8
    head = LocalKeypointHead(C, K, local_dim=2 * C)  # two local maps
    ref = torch.rand(B, Q, K, 2, generator=gen) * 0.9 + 0.05
    x = torch.randn(B, Q, C, generator=gen)
    local = torch.randn(B, Q, K, 2 * C, generator=gen, requires_grad=True)
    torch.testing.assert_close(head(x, ref, local), ref)

    with torch.no_grad():
        head.mlp[-1].weight.normal_(generator=gen)
    assert not torch.allclose(head(x, ref, local), ref)
    # keypoint k's update reads keypoint k's samples only
    grad = torch.autograd.grad(head(x, ref, local)[0, 0, 3].sum(), local)[0]
    assert grad[0, 0, 3].abs().sum() > 0
    assert grad.abs().sum() == grad[0, 0, 3].abs().sum()


@pytest.mark.parametrize("stride", [4, 8])
def test_keypoints_sample_their_own_pixels_in_a_padded_map(stride):
    """A map holding each cell centre's pixel coordinates, sampled at keypoints scaled by the image's
    extent, returns the keypoints' pixel coordinates (odd image sizes, padded to multiples of 32)."""
    gen = torch.Generator().manual_seed(3)
    valid_hw = torch.tensor([[75, 101], [96, 128]])  # padded to 96 x 128
    h, w = 96 // stride, 128 // stride
    centres_x = ((torch.arange(w) + 0.5) * stride).expand(h, w)
    centres_y = ((torch.arange(h)[:, None] + 0.5) * stride).expand(h, w)
    level_map = torch.stack([centres_x, centres_y], -1).expand(2, -1, -1, -1)  # [B, h, w, 2]
    extent = _image_extent(valid_hw, level_map, stride)
    # away from the outer half cell, where bilinear sampling of a ramp is exact
    keypoints = torch.rand(2, 50, 2, generator=gen) * 0.8 + 0.1  # (x, y) of the unpadded image
    out = sample_map(level_map, keypoints * extent[:, None])
    torch.testing.assert_close(out, keypoints * valid_hw.flip(-1)[:, None].float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampling_matches_grid_sample_and_its_gradient(dtype):
    """sample_map against F.grid_sample (align_corners=False, zero padding) on a fresh odd-sized
    map, at points inside, on the border, outside and far outside; values and map gradient."""
    gen = torch.Generator().manual_seed(4)
    B, C = 3, 5
    h, w = torch.randint(1, 12, (2,), generator=gen).tolist()
    level_map = torch.randn(B, h, w, C, generator=gen, dtype=dtype, requires_grad=True)
    points = torch.rand(B, 40, 2, generator=gen, dtype=dtype) * 1.4 - 0.2
    points[:, :4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-3.0, 0.5], [0.5, 7.0]], dtype=dtype)
    out = sample_map(level_map, points)
    grid = (2 * points[:, :, None] - 1).to(dtype)
    ref = F.grid_sample(level_map.permute(0, 3, 1, 2), grid, align_corners=False)[..., 0].transpose(1, 2)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.to(dtype), ref, **tol)
    upstream = torch.randn(out.shape, generator=gen, dtype=dtype)
    (grad,) = torch.autograd.grad((out * upstream).sum(), level_map)
    (ref_grad,) = torch.autograd.grad((ref * upstream).sum(), level_map)
    torch.testing.assert_close(grad, ref_grad, **tol)


def test_non_finite_points_sample_zero():
    level_map = torch.randn(1, 4, 4, 3)
    points = torch.tensor([[[float("nan"), 0.5], [0.5, float("inf")], [0.5, 0.5]]])
    out = sample_map(level_map, points)
    assert (out[0, :2] == 0).all() and out[0, 2].abs().sum() > 0


# ---------------------------------------------------------------------------------------------------
# What the decoder feeds each layer, and the pieces around it
# ---------------------------------------------------------------------------------------------------


def _decoder_run(gen, keypoints, valid_ratios):
    """A 3-layer decoder (random heads) on one level: the offset_scale and query_pos input each layer
    got, its outputs and the decoder."""
    from jcra.decoder import PoseDecoder
    from tests.model.conftest import randomise_zero_init

    B, Q, K, _ = keypoints.shape
    C, shapes = 16, ((4, 6),)
    decoder = PoseDecoder(C, K, num_layers=3, num_heads=2, num_levels=1, ffn_dim=32, dropout=0.0)
    randomise_zero_init(decoder, gen)
    seen = {"offset_scale": [], "query_pos": []}
    for layer in decoder.layers:
        layer.register_forward_pre_hook(lambda m, args: seen["offset_scale"].append(args[3]))
    decoder.query_pos.register_forward_pre_hook(lambda m, args: seen["query_pos"].append(args[0]))
    memory = torch.randn(B, 24, C, generator=gen)
    local = [(torch.randn(B, 4, 6, C, generator=gen), torch.ones(B, 2)) for _ in range(2)]
    tgt = torch.randn(B, Q, C, generator=gen)
    out = decoder(tgt, keypoints, memory, shapes, torch.zeros(B, 24, dtype=torch.bool), valid_ratios, local)
    return seen, out, decoder


def test_each_layer_attends_over_its_current_poses_extent():
    """offset_scale = max(extent, min_extent) * extent_scale * valid ratio, per axis, extent_scale PETR's
    0.5: a pose collapsed to one point gets the floor (0.01 * 0.5), one spanning 0.4 x 0.2 (0.2, 0.1)."""
    gen = torch.Generator().manual_seed(3)
    keypoints = torch.full((1, 2, 17, 2), 0.3)
    keypoints[0, 1, :, 0] = torch.linspace(0.2, 0.6, 17)
    keypoints[0, 1, :, 1] = torch.linspace(0.1, 0.3, 17)
    ratios = torch.tensor([[[0.8, 0.5]]])  # [B, L, 2] (x, y)
    seen, _, _ = _decoder_run(gen, keypoints, ratios)
    extent = torch.tensor([[[0.005, 0.005], [0.2, 0.1]]])
    expected = extent[:, :, None, None, None, :] * ratios[:, None, None, :, None, :]
    torch.testing.assert_close(seen["offset_scale"][0], expected)


def test_each_layer_embeds_the_previous_layers_keypoints_which_carry_no_gradient_back():
    gen = torch.Generator().manual_seed(4)
    keypoints = 0.2 + 0.6 * torch.rand(2, 3, 17, 2, generator=gen)
    seen, (_, layer_keypoints), decoder = _decoder_run(gen, keypoints, torch.ones(2, 1, 2))
    torch.testing.assert_close(seen["query_pos"][0], keypoints.flatten(2))
    for i in (1, 2):
        torch.testing.assert_close(seen["query_pos"][i], layer_keypoints[i - 1].detach().flatten(2))
    assert not torch.allclose(layer_keypoints[0], keypoints)  # the first layer moved them
    grads = torch.autograd.grad(
        layer_keypoints[1].sum(), list(decoder.keypoint_heads[0].parameters()), allow_unused=True
    )
    assert all(g is None or not g.any() for g in grads)


@pytest.mark.parametrize("head", ["local", "encoder"])
def test_keypoint_heads_refine_in_inverse_sigmoid_space(head):
    """A constant update d moves each coordinate to sigmoid(logit(ref) + d): little near the border,
    most in the middle."""
    from jcra.heads import KeypointHead

    gen = torch.Generator().manual_seed(5)
    B, Q, K, C = 1, 3, 17, 8
    module = LocalKeypointHead(C, K, 2 * C) if head == "local" else KeypointHead(C, K)
    with torch.no_grad():
        module.mlp[-1].bias.fill_(0.7)
    ref = torch.tensor([0.05, 0.5, 0.95])[None, :, None, None].expand(B, Q, K, 2)
    x = torch.randn(B, Q, C, generator=gen)
    args = (x, ref, torch.randn(B, Q, K, 2 * C, generator=gen)) if head == "local" else (x, ref)
    torch.testing.assert_close(module(*args), torch.sigmoid(torch.logit(ref) + 0.7))


def test_class_heads_start_at_the_focal_prior():
    from jcra.heads import ClassHead, HeatmapHead

    assert torch.sigmoid(ClassHead(8)(torch.zeros(2, 8))).tolist() == pytest.approx([0.01, 0.01])
    assert torch.sigmoid(HeatmapHead(8, 3)[-1].bias).tolist() == pytest.approx([0.1] * 3)


def test_grid_centres_are_each_tokens_centre_in_its_images_frame():
    """A 4 x 6 map of which the image covers 3 rows and 5 columns: token (r, c) at ((c + 0.5) / 5,
    (r + 0.5) / 3); padded tokens beyond 1."""
    from jcra.encoder import grid_centres

    centres = grid_centres(((4, 6),), torch.tensor([[[3, 5]]]))[0].view(4, 6, 2)
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(6.0), indexing="ij")
    torch.testing.assert_close(centres, torch.stack([(cols + 0.5) / 5, (rows + 0.5) / 3], -1))
    assert (centres[3, :, 1] > 1).all() and (centres[:, 5, 0] > 1).all()


def test_local_maps_are_zero_beyond_each_image_with_its_exact_extent(tiny_model):
    """The finest memory level (stride 8) and the projected C2 (stride 4), for a padded batch of 64 x 96
    and 40 x 72 images: zero beyond each image's cells, extents its pixels over the map's."""
    gen = torch.Generator().manual_seed(6)
    valid_hw = torch.tensor([[64, 96], [40, 72]])
    C = tiny_model.detail_proj.out_features
    memory = torch.randn(2, 8 * 12 + 20, C, generator=gen)
    padding = torch.zeros(2, memory.shape[1], dtype=torch.bool)
    padding[1, : 8 * 12] = ~((torch.arange(8)[:, None] < 5) & (torch.arange(12)[None] < 9)).flatten()
    c2 = torch.randn(2, tiny_model.detail_proj.in_features, 16, 24, generator=gen)
    (finest, finest_extent), (detail, detail_extent) = tiny_model._local_maps(
        memory, (8, 12), padding, c2, valid_hw
    )
    torch.testing.assert_close(finest_extent, torch.tensor([[1.0, 1.0], [72 / 96, 40 / 64]]))
    torch.testing.assert_close(detail_extent, torch.tensor([[1.0, 1.0], [72 / 96, 40 / 64]]))
    assert not finest[1, 5:].any() and not finest[1, :, 9:].any() and finest[1, :5, :9].all()
    assert not detail[1, 10:].any() and not detail[1, :, 18:].any() and detail[1, :10, :18].any(-1).all()
