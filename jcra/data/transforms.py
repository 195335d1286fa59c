"""Training and evaluation transforms on ``(image, target)`` pairs, keypoints kept on their pixels.

Images are float tensors [3, H, W] in 0..255 until :class:`Normalize`. Target keys as
:class:`jcra.data.CocoKeypoints` gives them; geometric transforms move ``keypoints`` (labelled ones only:
unlabelled stay (0, 0, 0)), ``boxes``, ``area`` and ``size``. Coordinates are continuous pixels: pixel
column c spans [c, c + 1), so a horizontal flip maps x to W - x. Randomness comes from torch's global
generator, which training seeds for each sample (``train.distributed.SeededSamples``): a resumed run
draws the same augmentations, whichever worker loads a sample.

The training recipe is PETR's: photometric distortion, flip, rotation up to 30 degrees (every image,
on its own canvas; CrowdPose's also shears up to 2 degrees; PETR turns before it flips, which draws
the same, the angle being symmetric), then either a multi-scale resize or resize-crop-resize (crops
of 384-600 pixels after a 400/500/600 resize, sizes that scale with ``crop_scale``, 800 there). The
short sides and their cap are the caller's: PETR's 400-1400 capped at 1400 for COCO and CrowdPose, a
few sizes near 256 for the demo.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from jcra.data.images import to_rgb
from jcra.data.keypoint_layouts import flip_permutation

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PERSON_KEYS = ("keypoints", "boxes", "area", "iscrowd")
"""Target entries with one row per person (filtered together when a crop removes someone)."""


def build_transforms(
    train: bool,
    *,
    flip_pairs,
    scales,
    max_size: int,
    rotation: float = 30.0,
    shear: float = 0.0,
    crop_scale: int | None = None,
):
    """The training pipeline, or the evaluation one (resize to ``scales[0]``, normalise).

    flip_pairs: the layout's (left, right) keypoint pairs; scales: short sides (pixels) to sample, each
    equally likely (PETR's range of 400-1400 is ``range(400, 1401)``); max_size: cap on the long side
    (pixels); rotation: largest random rotation (degrees, 0 disables); shear: largest random shear along
    each axis (degrees, 0 disables; PETR's CrowdPose recipe has 2); crop_scale: the size the crop
    branch scales with (a resize to 0.5, 0.625 or 0.75 of it, then a crop of 0.48-0.75 of it a side:
    400/500/600 and 384-600 at 800, PETR's and Deformable DETR's), by default the largest of ``scales``.
    """
    scales = [int(s) for s in scales]
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive pixel sizes, got {scales}")
    if max_size < max(scales):
        raise ValueError(f"max_size ({max_size}) must be at least the largest scale ({max(scales)})")
    if not train:
        return Compose([ToTensor(), Resize(scales[:1], max_size), Normalize()])
    top = crop_scale or max(scales)
    if top < 4:  # its first resize, to half of it, would be empty
        raise ValueError(f"crop_scale (default the largest scale) must be at least 4 pixels, got {top}")
    # PETR caps the crop branch's first resize at 4200, three times its 1400 (short sides of 600 and
    # below: only photos longer than 7 times their short side reach it)
    crop_then_resize = Compose(
        [
            Resize([round(top * r) for r in (0.5, 0.625, 0.75)], max_size=3 * max_size),
            RandomCrop(round(top * 0.48), round(top * 0.75)),
            Resize(scales, max_size),
        ]
    )
    geometric = [RandomHorizontalFlip(flip_pairs)]
    if rotation > 0 or shear > 0:
        geometric.append(RandomAffine(rotation, shear))
    return Compose(
        [
            ToTensor(),
            PhotometricDistortion(),
            *geometric,
            RandomChoice(Resize(scales, max_size), crop_then_resize),
            Normalize(),
        ]
    )


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target


class ToTensor:
    """PIL image (or uint8 tensor [3, H, W]) to a float tensor [3, H, W] in 0..255."""

    def __call__(self, image, target):
        if not isinstance(image, Tensor):
            image = torch.from_numpy(np.asarray(to_rgb(image)).copy()).permute(2, 0, 1)
        return image.float(), target


class Normalize:
    """ImageNet mean and std, on 0..1 intensities."""

    def __call__(self, image: Tensor, target):
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (image / 255.0 - mean) / std, target


class PhotometricDistortion:
    """mmdet's ``PhotoMetricDistortion``, which PETR trains with: brightness +-32 levels, then contrast
    x0.5-1.5 either first or last (even odds), saturation x0.5-1.5 and hue +-18 degrees in HSV, then the
    channels in a random order; each step with probability 1/2. mmdet's floats run outside 0-255 and
    enter HSV so; ours are clipped where HSV comes (drawn or not) and at the end."""

    def __init__(self, brightness=32.0, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=18.0):
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def __call__(self, image: Tensor, target):
        if _coin():
            image = image + _uniform(-self.brightness, self.brightness)
        contrast_first = _coin()
        if contrast_first and _coin():
            image = image * _uniform(*self.contrast)
        saturate = _uniform(*self.saturation) if _coin() else None
        turn = _uniform(-self.hue, self.hue) if _coin() else None
        image = image.clamp(0.0, 255.0)  # whether or not HSV follows, or a later contrast would differ
        if saturate is not None or turn is not None:  # a quarter of the images skip HSV
            hue, saturation, value = _rgb_to_hsv(image)
            if saturate is not None:
                saturation = saturation * saturate
            if turn is not None:
                hue = (hue + turn) % 360
            image = _hsv_to_rgb(hue, saturation, value)
        if not contrast_first and _coin():
            image = image * _uniform(*self.contrast)
        if _coin():
            image = image[torch.randperm(3)]
        return image.clamp(0.0, 255.0), target


class RandomHorizontalFlip:
    """Mirror with probability ``p``; left and right keypoints swap places (``flip_pairs``)."""

    def __init__(self, flip_pairs, p: float = 0.5):
        self.p = p
        self.perm = None if flip_pairs is None else flip_permutation(flip_pairs)

    def __call__(self, image: Tensor, target):
        if not _coin(self.p):
            return image, target
        width = image.shape[-1]
        target = dict(target)
        kpts = target["keypoints"].clone()
        if self.perm is not None:
            perm = self.perm + list(range(len(self.perm), kpts.shape[1]))
            kpts = kpts[:, perm]
        labelled = kpts[..., 2] > 0
        kpts[..., 0] = torch.where(labelled, width - kpts[..., 0], kpts[..., 0])
        target["keypoints"] = kpts
        if "boxes" in target:
            x0, y0, x1, y1 = target["boxes"].unbind(-1)
            target["boxes"] = torch.stack([width - x1, y0, width - x0, y1], -1)
        return image.flip(-1), target


class RandomAffine:
    """Rotate by an angle uniform in [-max_degrees, max_degrees] and shear by angles uniform in
    [-max_shear, max_shear] along x and along y, about the centre, with probability ``p``: opera's
    ``KeypointRandomAffine`` as PETR configures it (every image; no scaling or translation; shear 0 for
    COCO, 2 degrees for CrowdPose). As there, the canvas keeps its size: corners turned out are cut and
    those turned in take the mean colour (0 once normalised); keypoints turned out become unlabelled
    and people left with none are removed; boxes become their moved corners' bounds, clipped; areas are
    unchanged."""

    def __init__(self, max_degrees: float, max_shear: float = 0.0, p: float = 1.0):
        if not 0 <= max_shear < 90:
            raise ValueError(f"max_shear must be in [0, 90) degrees, got {max_shear!r}")
        self.max_degrees, self.max_shear, self.p = max_degrees, max_shear, p

    def __call__(self, image: Tensor, target):
        if not _coin(self.p):
            return image, target
        theta = math.radians(_uniform(-self.max_degrees, self.max_degrees))
        cos, sin = math.cos(theta), math.sin(theta)
        # acting on column vectors (x, y): counter-clockwise on screen for theta > 0 (y points down)
        matrix = torch.tensor([[cos, sin], [-sin, cos]], dtype=torch.float64)
        if self.max_shear > 0:  # drawn only then, so that rotation alone draws what it always did
            shear_x = math.tan(math.radians(_uniform(-self.max_shear, self.max_shear)))
            shear_y = math.tan(math.radians(_uniform(-self.max_shear, self.max_shear)))
            matrix = torch.tensor([[1.0, shear_x], [shear_y, 1.0]], dtype=torch.float64) @ matrix
        matrix = matrix.float()
        h, w = image.shape[-2:]
        centre = torch.tensor([w / 2, h / 2])

        # Sample: output pixel centre q comes from source point c + M^-1 (q - c); outside the source,
        # grid_sample's zeros become the mean colour.
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        src = (torch.stack([xs, ys], -1) - centre) @ torch.linalg.inv(matrix).T + centre
        grid = src / torch.tensor([w, h]) * 2 - 1  # align_corners=False: -1 and 1 are the outer edges
        fill = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
        moved = F.grid_sample((image - fill)[None], grid[None], mode="bilinear", align_corners=False)
        image = moved[0] + fill

        forward = lambda xy: (xy - centre) @ matrix.T + centre
        target = _move_keypoints(target, forward)
        if "boxes" in target and len(target["boxes"]):
            x0, y0, x1, y1 = target["boxes"].unbind(-1)
            corners = torch.stack([torch.stack(c, -1) for c in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))], 1)
            corners = forward(corners)
            target["boxes"] = _clip_boxes(torch.cat([corners.amin(1), corners.amax(1)], -1), h, w)
        return image, keep_inside(target, h, w)


class Resize:
    """Short side to one of ``scales`` (chosen at random), long side capped at ``max_size`` (DETR's rule)."""

    def __init__(self, scales, max_size: int | None):
        self.scales, self.max_size = list(scales), max_size

    def __call__(self, image: Tensor, target):
        h, w = image.shape[-2:]
        # One scale (evaluation) draws nothing, so evaluating never moves the training random stream.
        pick = int(torch.randint(len(self.scales), ())) if len(self.scales) > 1 else 0
        new_h, new_w = resized_shape(h, w, self.scales[pick], self.max_size)
        image = F.interpolate(image[None], (new_h, new_w), mode="bilinear", antialias=True)[0]
        sx, sy = new_w / w, new_h / h
        target = _move_keypoints(target, lambda xy: xy * torch.tensor([sx, sy]))
        if "boxes" in target:
            target["boxes"] = target["boxes"] * torch.tensor([sx, sy, sx, sy])
        target["area"] = target["area"] * (sx * sy)
        target["size"] = torch.tensor([new_h, new_w])
        return image, target


def resized_shape(h: int, w: int, scale: int, max_size: int | None) -> tuple[int, int]:
    """(h, w) with the short side ``scale`` unless that makes the long side exceed ``max_size``; no
    side below 1 pixel."""
    short, long = min(h, w), max(h, w)
    if max_size is not None and long / short * scale > max_size:
        scale = max(1, int(round(max_size * short / long)))
    new_long = max(1, int(round(scale * long / short)))
    if max_size is not None:
        new_long = min(new_long, max_size)  # the rounded short side can push it one pixel over
    return (scale, new_long) if h <= w else (new_long, scale)


class RandomCrop:
    """Crop a random window with sides uniform in [min_size, max_size] (capped by the image).

    As mmdet's and opera's ``RandomCrop``: boxes are clipped and people whose box is left empty are
    removed; keypoints left outside become unlabelled and people with none left are removed; areas
    are unchanged (a person's area is its scale in OKS, which a crop does not change).
    """

    def __init__(self, min_size: int, max_size: int):
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, image: Tensor, target):
        h, w = image.shape[-2:]
        ch, cw = (self._side(n) for n in (h, w))
        top, left = int(torch.randint(h - ch + 1, ())), int(torch.randint(w - cw + 1, ()))
        image = image[:, top : top + ch, left : left + cw]
        target = _move_keypoints(target, lambda xy: xy - torch.tensor([left, top], dtype=xy.dtype))
        target["size"] = torch.tensor([ch, cw])
        if "boxes" in target:
            boxes = _clip_boxes(target["boxes"] - torch.tensor([left, top, left, top]), ch, cw)
            target["boxes"] = boxes
            target = _keep_people(target, (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
        return image, keep_inside(target, ch, cw)

    def _side(self, n: int) -> int:
        high = min(n, self.max_size)
        low = min(self.min_size, high)
        return int(torch.randint(low, high + 1, ()))


class RandomChoice:
    """One of two transforms, each with probability 1/2."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def __call__(self, image, target):
        return (self.first if _coin() else self.second)(image, target)


def _coin(p: float = 0.5) -> bool:
    return bool(torch.rand(()) < p)


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


def _move_keypoints(target: dict, move) -> dict:
    """A copy of ``target`` with ``move`` ([N, 2] -> [N, 2] pixels) applied to the labelled keypoints."""
    target = dict(target)
    kpts = target["keypoints"].clone()
    labelled = kpts[..., 2] > 0
    kpts[labelled, :2] = move(kpts[labelled, :2]).to(kpts.dtype)
    target["keypoints"] = kpts
    return target


def keep_inside(target: dict, h: int, w: int) -> dict:
    """``target`` with the keypoints outside an ``h`` x ``w`` image unlabelled, and the people left
    without a labelled keypoint removed."""
    kpts = target["keypoints"]
    inside = (kpts[..., 0] >= 0) & (kpts[..., 0] < w) & (kpts[..., 1] >= 0) & (kpts[..., 1] < h)
    target = {**target, "keypoints": kpts * inside[..., None]}
    return _keep_people(target, (target["keypoints"][..., 2] > 0).any(-1))


def _keep_people(target: dict, keep: Tensor) -> dict:
    return {k: v[keep] if k in PERSON_KEYS else v for k, v in target.items()}


def _clip_boxes(boxes: Tensor, h: int, w: int) -> Tensor:
    """xyxy ``boxes`` [N, 4] clipped to an ``h`` x ``w`` image."""
    return torch.minimum(boxes.clamp(min=0), torch.tensor([w, h, w, h], dtype=boxes.dtype))


def _rgb_to_hsv(image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Hue (degrees in [0, 360)), saturation and value (the largest channel) of an RGB image [3, H, W]
    with values >= 0, as OpenCV's float conversion gives them; each [H, W]."""
    red, green, blue = image
    value, low = image.amax(0), image.amin(0)
    chroma = value - low
    saturation = torch.where(value > 0, chroma / value.clamp(min=1e-12), 0.0)
    span = chroma.clamp(min=1e-12)
    sector = torch.where(
        value == red,
        (green - blue) / span,
        torch.where(value == green, 2 + (blue - red) / span, 4 + (red - green) / span),
    )
    return torch.where(chroma > 0, (sector * 60) % 360, 0.0), saturation, value


def _hsv_to_rgb(hue: Tensor, saturation: Tensor, value: Tensor) -> Tensor:
    """The inverse of :func:`_rgb_to_hsv`: [3, H, W]. Linear in saturation, so a saturation above 1
    gives channels below 0, as OpenCV's does."""
    channels = []
    for n in (5, 3, 1):  # red, green, blue: where each channel's ramp sits on the hue circle
        k = (n + hue / 60) % 6
        channels.append(value - value * saturation * torch.minimum(k, 4 - k).clamp(0, 1))
    return torch.stack(channels)
