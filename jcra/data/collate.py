"""Batching images of different sizes: zero padding at the bottom and right, and the mask saying where."""

import torch
from torch import Tensor

SIZE_DIVISOR = 32
"""Padded sides are multiples of the backbone's largest stride, so every level's map covers the image."""


def collate(
    batch: list[tuple[Tensor, dict]], size_divisor: int = SIZE_DIVISOR, min_hw: tuple[int, int] = (0, 0)
):
    """(image [3, h, w], target) pairs -> (images [B, 3, H, W], padding_mask [B, H, W] bool, True on
    padding, targets list); H and W are the largest h and w, or ``min_hw`` if larger, rounded up to
    ``size_divisor``."""
    if not batch:
        raise ValueError("collate: batch is empty")
    images, targets = zip(*batch, strict=True)
    for i, image in enumerate(images):
        if image.dim() != 3 or image.shape[0] != 3 or image.dtype != images[0].dtype:
            raise ValueError(
                f"collate: image {i} of the batch is {image.dtype} {list(image.shape)}; every image must "
                f"be [3, h, w] of one dtype (image 0: {images[0].dtype})"
            )
    empty = [i for i, im in enumerate(images) if im.shape[-2] == 0 or im.shape[-1] == 0]
    if empty:
        raise ValueError(f"collate: image(s) {empty} of the batch have no pixels")
    height = -(-max(min_hw[0], *(im.shape[-2] for im in images)) // size_divisor) * size_divisor
    width = -(-max(min_hw[1], *(im.shape[-1] for im in images)) // size_divisor) * size_divisor
    out = images[0].new_zeros(len(images), 3, height, width)
    padding_mask = torch.ones(len(images), height, width, dtype=torch.bool)
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        out[i, :, :h, :w] = image
        padding_mask[i, :h, :w] = False
    return out, padding_mask, list(targets)


def canvas(sizes, short: int, cap: int) -> tuple[int, int]:
    """The padded (H, W) a compiled model gets for images of ``sizes`` [(h, w), ...], resized to a
    ``short`` short side with the long side at most ``cap``: each side ``short`` where every image's
    fits in it, else ``cap``. At most four canvases, so few graphs (one a canvas and batch size)."""
    return tuple(short if all(size[d] <= short for size in sizes) else cap for d in (0, 1))


def collate_on_canvas(batch: list[tuple[Tensor, dict]], sides: tuple[int, int]):
    """:func:`collate` padded at least to the :func:`canvas` of the batch's images, ``sides`` its
    (short, cap); a ``DataLoader``'s ``collate_fn`` as ``functools.partial(collate_on_canvas, sides=...)``."""
    return collate(batch, min_hw=canvas([image.shape[-2:] for image, _ in batch], *sides))
