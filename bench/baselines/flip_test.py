"""Flip testing, as both baselines' published COCO test settings run it (``FLIP_TEST: true``).

The network also sees the image mirrored; the mirror's maps are mirrored back (columns reversed, left
and right joints swapped) and merged with the image's: heatmaps averaged (both methods), DEKR's
offsets averaged (the mirror's x components negated), associative embedding's tags kept side by side,
so that each pixel has a two-dimensional tag (HigherHRNet). DEKR first shifts the mirrored image 3
pixels left, which puts its stride-4 cells back on the image's (for widths divisible by 4);
HigherHRNet does not.

The image and its mirror go through the network as one batch of 2B, where the published test code
runs them one after the other: the faster way, so the baseline is timed at its best. The channel
permutations and the offsets' signs are built on the maps' device (:func:`kernels.dispatch.device_table`):
made from Python lists, they would be host constants in the compiled network, copied in every call,
and Inductor would not capture it as a CUDA graph.
"""

import torch
from torch import nn

from jcra.data.keypoint_layouts import layout_for
from kernels.dispatch import device_table


def flip_back(maps: torch.Tensor, channel_index: list[int]) -> torch.Tensor:
    """A mirrored image's maps [..., C, h, w] laid out as the image's: columns reversed, channel c taken
    from the mirror's channel ``channel_index[c]``."""
    return maps.flip(-1).index_select(-3, device_table([channel_index], torch.int64, maps.device)[0])


def merge_associative_embedding(direct, mirrored):
    """(heatmaps, tags) [..., K, h, w] of an image and of its mirror -> heatmaps [..., K, h, w]
    averaged and tags [..., K, h, w, 2] (the image's, the mirror's)."""
    (heat, tags), (heat_m, tags_m) = direct, mirrored
    index = layout_for(heat.shape[-3]).flip_index
    return (heat + flip_back(heat_m, index)) / 2, torch.stack([tags, flip_back(tags_m, index)], -1)


def merge_dekr(direct, mirrored):
    """(heatmaps [..., K + 1, h, w], offsets [..., 2K, h, w]) of an image and of its mirror -> both
    averaged. Offsets point from a pixel to its person's joints, so the mirror's x components change
    sign; the centre heatmap (last) has no side."""
    (heat, offsets), (heat_m, offsets_m) = direct, mirrored
    index = layout_for(heat.shape[-3] - 1).flip_index
    offset_index = [2 * joint + axis for joint in index for axis in (0, 1)]
    sign = device_table([[-1.0, 1.0] * len(index)], offsets.dtype, offsets.device).view(-1, 1, 1)
    heat = (heat + flip_back(heat_m, index + [len(index)])) / 2
    return heat, (offsets + sign * flip_back(offsets_m, offset_index)) / 2


FLIP_TESTS = {"associative_embedding": (merge_associative_embedding, 0), "dekr": (merge_dekr, 3)}
"""method: (merge of the image's and the mirror's maps, pixels the mirror is shifted left)."""


class FlipTest(nn.Module):
    """``forward(images [B, 3, H, W]) -> merged maps``: ``head`` on the images and their mirrors (shifted
    ``shift`` pixels left, the last columns repeated) as one batch of 2B, merged by ``merge``."""

    def __init__(self, head: nn.Module, merge, shift: int = 0):
        super().__init__()
        if shift < 0:
            raise ValueError(f"shift must be >= 0 pixels, got {shift}")
        self.head, self.merge, self.shift = head, merge, shift

    def forward(self, images: torch.Tensor):
        if self.shift >= images.shape[-1]:
            raise ValueError(f"images of width {images.shape[-1]} cannot be shifted {self.shift} pixels")
        mirrored = images.flip(-1)
        if self.shift:
            mirrored = torch.cat([mirrored[..., self.shift :], mirrored[..., -self.shift :]], -1)
        batch = images.shape[0]
        maps = self.head(torch.cat([images, mirrored]))
        return self.merge([m[:batch] for m in maps], [m[batch:] for m in maps])
