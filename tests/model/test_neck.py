"""jcra.neck: masked GroupNorm, sine positions, level geometry."""

import math

import torch
import torch.nn.functional as F

from jcra.backbone import MaskedGroupNorm
from jcra.neck import MultiScaleNeck, sine_position_encoding


def _group_norm(num_groups=4, channels=8):
    gen = torch.Generator().manual_seed(0)
    norm = MaskedGroupNorm(num_groups, channels).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(channels, generator=gen))
        norm.bias.copy_(torch.randn(channels, generator=gen))
    return norm, gen


def test_masked_group_norm_without_padding_is_group_norm():
    norm, gen = _group_norm()
    x = 3 + 2 * torch.randn(2, 8, 5, 7, generator=gen, dtype=torch.float64)
    ones = torch.ones(2, 1, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(norm(x, ones), F.group_norm(x, 4, norm.weight, norm.bias, norm.eps))


def test_masked_group_norm_normalises_the_valid_region_only():
    norm, gen = _group_norm()
    x = 3 + 2 * torch.randn(1, 8, 6, 9, generator=gen, dtype=torch.float64)
    mask = torch.zeros(1, 1, 6, 9, dtype=torch.float64)
    mask[..., :4, :5] = 1
    out = norm(x, mask)
    expected = F.group_norm(x[..., :4, :5], 4, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(out[..., :4, :5], expected)
    assert not out[..., 4:, :].any() and not out[..., :, 5:].any()


def test_sine_encoding_matches_deformable_detr_formula():
    """Against DETR's cumsum formulation (normalize=True, offset -0.5, scale 2 pi) on a padded map."""
    valid = torch.tensor([[3, 4]])
    dim, h, w = 8, 5, 6
    pos = sine_position_encoding(valid, h, w, dim).double()
    not_mask = torch.zeros(h, w, dtype=torch.float64)
    not_mask[:3, :4] = 1
    y = not_mask.cumsum(0)
    x = not_mask.cumsum(1)
    y = (y - 0.5) / (y[-1:, :] + 1e-6) * 2 * math.pi
    x = (x - 0.5) / (x[:, -1:] + 1e-6) * 2 * math.pi
    dim_t = 10000.0 ** (2 * (torch.arange(dim // 2, dtype=torch.float64) // 2) / (dim // 2))
    py, px = y[..., None] / dim_t, x[..., None] / dim_t
    py = torch.stack([py[..., 0::2].sin(), py[..., 1::2].cos()], -1).flatten(-2)
    px = torch.stack([px[..., 0::2].sin(), px[..., 1::2].cos()], -1).flatten(-2)
    expected = torch.cat([py, px], -1).permute(2, 0, 1)
    torch.testing.assert_close(pos[0, :, :3, :4], expected[:, :3, :4], rtol=1e-5, atol=1e-5)


def test_levels_strides_masks_and_positions():
    torch.manual_seed(0)
    neck = MultiScaleNeck((8, 16, 32), (8, 16, 32), d_model=32, num_levels=4, num_groups=8)
    H, W = 96, 136
    feats = [torch.randn(2, c, -(-H // s), -(-W // s)) for c, s in zip((8, 16, 32), (8, 16, 32), strict=True)]
    valid_hw = torch.tensor([[H, W], [70, 100]])
    maps, masks, pos, valid = neck(feats, valid_hw)
    assert neck.strides == (8, 16, 32, 64)
    for m, mk, p, v, s in zip(maps, masks, pos, valid, neck.strides, strict=True):
        assert m.shape == p.shape == (2, 32, -(-H // s), -(-W // s))
        assert mk.shape == (2, -(-H // s), -(-W // s))
        torch.testing.assert_close(v[1], torch.tensor([-(-70 // s), -(-100 // s)]))
        assert int((~mk[1]).sum()) == int(v[1].prod())
        assert not m[1][:, mk[1]].any()
