"""Batching: images padded bottom/right to multiples of 32, the mask True exactly on padding."""

import pytest
import torch

from jcra.data import canvas, collate, collate_on_canvas


def test_padding_and_mask():
    images = [torch.rand(3, 50, 70), torch.rand(3, 65, 33)]
    targets = [{"image_id": 1}, {"image_id": 2}]
    batch, mask, out_targets = collate(list(zip(images, targets, strict=True)))
    assert batch.shape == (2, 3, 96, 96) and mask.shape == (2, 96, 96) and mask.dtype == torch.bool
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        torch.testing.assert_close(batch[i, :, :h, :w], image)
        assert not mask[i, :h, :w].any() and mask[i].sum() == 96 * 96 - h * w
        assert (batch[i][:, mask[i]] == 0).all()
    assert out_targets == targets


def test_sides_already_multiples_are_not_padded():
    batch, mask, _ = collate([(torch.rand(3, 64, 96), {})])
    assert batch.shape == (1, 3, 64, 96) and not mask.any()


def test_a_minimum_size_pads_further_and_rounds_up_too():
    """``min_hw``: a fixed canvas for a compiled model, each side still a multiple of 32; a larger image
    widens it."""
    image = torch.rand(3, 40, 50)
    batch, mask, _ = collate([(image, {})], min_hw=(70, 30))
    assert batch.shape == (1, 3, 96, 64) and mask.sum() == 96 * 64 - 40 * 50
    torch.testing.assert_close(batch[0, :, :40, :50], image)
    assert (batch[0][:, mask[0]] == 0).all()


@pytest.mark.parametrize(
    "sizes, expected",
    [
        ([(48, 80)], (48, 80)),  # landscape
        ([(80, 48), (60, 48)], (80, 48)),  # portraits
        ([(48, 48), (40, 48)], (48, 48)),  # squares, or smaller than the short side
        ([(48, 60), (50, 48)], (80, 80)),  # one wide and one tall: the cap both ways
    ],
)
def test_canvas_is_the_short_side_where_every_image_fits_else_the_cap(sizes, expected):
    assert canvas(sizes, 48, 80) == expected


def test_collate_on_canvas_pads_to_the_batchs_canvas():
    """Each side the short side (48, padded to 64) or the cap (80, padded to 96): images of other sizes
    on one canvas give one batch shape."""
    shapes = []
    for h, w in [(48, 70), (48, 80), (40, 66)]:
        batch, mask, _ = collate_on_canvas([(torch.rand(3, h, w), {})], sides=(48, 80))
        shapes.append(tuple(batch.shape[-2:]))
        assert mask.sum() == 64 * 96 - h * w
    assert shapes == [(64, 96)] * 3
    assert collate([(torch.rand(3, 40, 60), {})])[0].shape[-2:] == (64, 64)  # by itself: its own size
    assert collate_on_canvas([(torch.rand(3, 40, 60), {})], sides=(48, 80))[0].shape[-2:] == (64, 96)


def test_empty_batch():
    with pytest.raises(ValueError, match="empty"):
        collate([])


def test_image_without_pixels_is_refused():
    with pytest.raises(ValueError, match=r"image\(s\) \[1\] of the batch have no pixels"):
        collate([(torch.rand(3, 8, 8), {}), (torch.rand(3, 0, 8), {})])


@pytest.mark.parametrize(
    "odd",
    [
        torch.rand(3, 12, 12, dtype=torch.float64),
        torch.rand(1, 12, 12),
        torch.rand(4, 12, 12),
        torch.rand(12, 12),
    ],
    ids=["other-dtype", "one-channel", "four-channels", "no-channel-dim"],
)
def test_image_of_another_dtype_or_shape_is_refused(odd):
    """Padding into the first image's dtype and 3 channels would cast or broadcast it silently."""
    with pytest.raises(ValueError, match=r"image 1 of the batch is .*\[3, h, w\] of one dtype"):
        collate([(torch.rand(3, 10, 10), {}), (odd, {})])
