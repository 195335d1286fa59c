"""jcra.decoder: the keypoint-local refinement (sampling local maps at each keypoint) and its head."""

import pytest
import torch

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
    level_map = torch.stack([centres_x, centres_y]).expand(2, -1, -1, -1)  # [B, 2, h, w]
    extent = _image_extent(valid_hw, level_map, stride)
    # away from the outer half cell, where bilinear sampling of a ramp is exact
    keypoints = torch.rand(2, 50, 2, generator=gen) * 0.8 + 0.1  # (x, y) of the unpadded image
    out = sample_map(level_map, keypoints * extent[:, None])
    torch.testing.assert_close(out, keypoints * valid_hw.flip(-1)[:, None].float())
