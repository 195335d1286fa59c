"""Images as 8-bit RGB, whatever their file's mode or in-memory form, with errors that name them."""

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

UNREADABLE = (OSError, Image.DecompressionBombError)
"""What PIL raises for a file it cannot read as an image (UnidentifiedImageError is an OSError; a
header claiming more than about 179 megapixels, corrupt or real, raises DecompressionBombError)."""

# PIL's modes of 16-bit grayscale ("I" is how some PNG decoders give it). convert("RGB") clips their
# values at 255, which turns a 16-bit image almost entirely white: they are scaled instead.
_WIDE_GRAY = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def to_rgb(image: Image.Image) -> Image.Image:
    """A new 8-bit RGB image of ``image``: 16-bit grayscale scaled from 0..65535 to 0..255. Float
    pixels (mode "F"), and 32-bit ones beyond 16 bits, have no scale to assume: ValueError. 32-bit
    pixels (mode "I") that all fit in 8 bits are scaled as 16-bit ones too, almost black: a warning."""
    if 0 in image.size:
        raise ValueError(f"the image is {image.width}x{image.height} pixels: it has none")
    if image.mode == "F":
        raise ValueError("float pixels (PIL mode F) have no 8-bit scale to assume; save it as 8 or 16 bits")
    if image.mode in _WIDE_GRAY:
        values = np.asarray(image, dtype=np.float64)
        if values.size and not 0 <= values.min() <= values.max() <= 65535:
            raise ValueError(
                f"32-bit pixels from {values.min():.0f} to {values.max():.0f} (PIL mode {image.mode}) are "
                "not 16-bit grayscale, the one wide format with a known scale; save it as 8 or 16 bits"
            )
        if image.mode == "I" and values.max() <= 255:
            warnings.warn(
                f"32-bit pixels (PIL mode I) all at most {values.max():.0f} are read as 16-bit grayscale, "
                "so the image comes out almost black; if they are 8-bit values, pass them as uint8",
                stacklevel=2,
            )
        image = Image.fromarray((values / 257.0).round().astype(np.uint8))
    return image.convert("RGB")  # convert copies even when the mode is already RGB


def read_rgb(path: Path, upright: bool = False) -> Image.Image:
    """The image file at ``path`` decoded to 8-bit RGB; OSError naming ``path`` if it cannot be read
    (or has pixels :func:`to_rgb` refuses).

    The pixels as stored, which is what annotations are labelled on; ``upright`` turns them as the
    file's EXIF orientation says, as photo viewers show them (a phone photo taken upright).
    """
    try:
        with Image.open(path) as image:
            return to_rgb(ImageOps.exif_transpose(image) if upright else image)
    except (*UNREADABLE, ValueError) as err:
        raise OSError(f"cannot read image {path}: {err}") from err


def as_rgb_image(image, name: str = "image") -> Image.Image:
    """A new RGB PIL image from a PIL image, a numpy [H, W, 3] uint8 array or a torch [3, H, W] uint8
    tensor, used as stored (no EXIF turn); the input is never shared, so drawing cannot modify it.
    ValueError naming ``name`` for an image without pixels."""
    if isinstance(image, np.ndarray | torch.Tensor) and 0 in image.shape:
        raise ValueError(f"{name} has no pixels: shape {tuple(image.shape)}")
    if isinstance(image, Image.Image):
        try:
            return to_rgb(image)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from err
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise TypeError(
                f"{name} as a numpy array must be [H, W, 3] uint8, got {image.shape} {image.dtype}"
            )
        return Image.fromarray(np.ascontiguousarray(image), "RGB")
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise TypeError(
                f"{name} as a tensor must be [3, H, W] uint8, got {tuple(image.shape)} {image.dtype}"
            )
        return Image.fromarray(image.detach().cpu().permute(1, 2, 0).contiguous().numpy(), "RGB")
    raise TypeError(
        f"{name} must be a PIL image, a numpy [H, W, 3] uint8 array or a torch [3, H, W] uint8 tensor, "
        f"got {type(image).__name__}"
    )
