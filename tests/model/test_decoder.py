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
