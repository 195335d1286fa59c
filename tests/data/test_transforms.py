"""Transforms keep keypoints on their pixels (draw markers, transform, look), flips swap sides."""

import colorsys
import math

import pytest
import torch

from jcra.data import CocoKeypoints, build_transforms
from jcra.data import transforms as transforms_module
from jcra.data.keypoint_layouts import COCO, CROWDPOSE
from jcra.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    RandomAffine,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    ToTensor,
    keep_inside,
    resized_shape,
)
from tests.data.test_coco import coco_mini

MARK = 5  # half side of the white square drawn at each keypoint (pixels)


def marked_sample(generator: torch.Generator, h=180, w=260, people=3, k=17):
    """A black image with a white square centred on every labelled keypoint, and its target."""
    xy = torch.rand(people, k, 2, generator=generator) * torch.tensor([w - 2 * MARK, h - 2 * MARK]) + MARK
    xy = xy.floor() + 0.5  # pixel centres
    v = torch.randint(0, 3, (people, k), generator=generator).float()
    v[:, 0] = 2  # everyone has a labelled keypoint
    keypoints = torch.cat([xy, v[..., None]], -1) * (v[..., None] > 0)
    image = torch.zeros(3, h, w)
    for x, y, vis in keypoints.view(-1, 3).tolist():
        if vis > 0:
            image[:, int(y) - MARK : int(y) + MARK + 1, int(x) - MARK : int(x) + MARK + 1] = 255.0
    lo, hi = xy.amin(1) - MARK, xy.amax(1) + MARK
    boxes = torch.cat([lo, hi], -1)
    target = {
        "keypoints": keypoints,
        "boxes": boxes,
        "area": (hi - lo).prod(-1),
        "iscrowd": torch.zeros(people, dtype=torch.int64),
        "image_id": 1,
        "orig_size": torch.tensor([h, w]),
        "size": torch.tensor([h, w]),
    }
    return image, target


def assert_keypoints_on_marks(image: torch.Tensor, target: dict):
    """Every labelled keypoint lies inside the image on a bright pixel; size matches the image."""
    assert target["size"].tolist() == list(image.shape[-2:])
    kpts = target["keypoints"].view(-1, 3)
    labelled = kpts[kpts[:, 2] > 0]
    h, w = image.shape[-2:]
    assert ((labelled[:, 0] >= 0) & (labelled[:, 0] < w) & (labelled[:, 1] >= 0) & (labelled[:, 1] < h)).all()
    gray = image.mean(0)
    values = gray[labelled[:, 1].long(), labelled[:, 0].long()]
    assert (values > 0.5 * gray.max()).all(), f"keypoints off their marks: {values.tolist()}"
    assert (kpts[kpts[:, 2] == 0] == 0).all(), "unlabelled keypoints must stay (0, 0, 0)"


def denormalise(image: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image * std + mean) * 255


@pytest.mark.parametrize(
    "transform",
    [
        RandomHorizontalFlip(COCO.flip_pairs, p=1.0),
        RandomAffine(40.0, p=1.0),
        RandomAffine(30.0, max_shear=15.0, p=1.0),
        Resize([101, 150], max_size=200),
        RandomCrop(60, 120),
        Compose([RandomHorizontalFlip(COCO.flip_pairs, p=1.0), RandomAffine(30, p=1.0), RandomCrop(80, 160)]),
    ],
    ids=["flip", "rotation", "rotation+shear", "resize", "crop", "flip+rotation+crop"],
)
def test_geometric_transform_keeps_keypoints_on_their_pixels(transform):
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)  # fresh inputs every run
    for _ in range(8):
        image, target = marked_sample(generator)
        out_image, out_target = transform(image, target)
        assert_keypoints_on_marks(out_image, out_target)


def test_resized_shape_never_exceeds_the_long_side_cap():
    for h in range(90, 130):
        for w in range(90, 130):
            for scale in (96, 112, 128):
                new_h, new_w = resized_shape(h, w, scale, 120)
                assert max(new_h, new_w) <= 120, (h, w, scale)
                assert min(new_h, new_w) == scale or max(new_h, new_w) >= 119, (h, w, scale)


def test_training_pipeline_keeps_keypoints_on_their_pixels():
    transforms = build_transforms(True, flip_pairs=COCO.flip_pairs, scales=[160, 192, 224], max_size=300)
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    for _ in range(12):
        image, target = marked_sample(generator)
        out_image, out_target = transforms(image.to(torch.uint8), target)
        assert out_image.dtype == torch.float32 and max(out_image.shape[-2:]) <= 300
        assert_keypoints_on_marks(denormalise(out_image), out_target)


def test_petrs_range_reaches_every_short_side_and_caps_the_long_one():
    """PETR's multi-scale resize: short sides drawn from 400-1400, long sides capped at 1400, in both
    branches; the crop branch first resizes to 400/500/600 and crops 384-600 (``crop_scale`` 800)."""
    transforms = build_transforms(
        True, flip_pairs=COCO.flip_pairs, scales=range(400, 1401), max_size=1400, rotation=0, crop_scale=800
    )
    crop_branch = transforms.transforms[-2].second.transforms
    assert [t.scales for t in crop_branch[::2]] == [[400, 500, 600], list(range(400, 1401))]
    assert (crop_branch[1].min_size, crop_branch[1].max_size) == (384, 600)
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    sides = []
    for _ in range(30):
        image, target = marked_sample(generator, h=45, w=60, people=1)
        out_image, out_target = transforms(image, target)
        short, long = sorted(out_image.shape[-2:])
        assert 400 <= short <= long <= 1400, (short, long)
        assert_keypoints_on_marks(denormalise(out_image), out_target)
        sides.append(short)
    assert min(sides) < 700 and max(sides) > 1000  # drawn from the whole range, not a few values


def test_a_crop_branch_under_four_pixels_is_refused():
    """Its first resize, to half of crop_scale, rounds to an empty image (a crash at the first crop)."""
    with pytest.raises(ValueError, match="crop_scale .* must be at least 4 pixels, got 3"):
        build_transforms(True, flip_pairs=COCO.flip_pairs, scales=[64], max_size=64, crop_scale=3)


def test_flip_swaps_left_and_right():
    generator = torch.Generator().manual_seed(0)
    image, target = marked_sample(generator, w=101)
    _, flipped = RandomHorizontalFlip(COCO.flip_pairs, p=1.0)(image, target)
    for left, right in COCO.flip_pairs:
        for a, b in ((left, right), (right, left)):
            src, dst = target["keypoints"][:, b], flipped["keypoints"][:, a]
            labelled = src[:, 2] > 0
            torch.testing.assert_close(dst[labelled, 0], 101 - src[labelled, 0])
            torch.testing.assert_close(dst[:, 1:], src[:, 1:])
    torch.testing.assert_close(flipped["keypoints"][:, 0, 0], 101 - target["keypoints"][:, 0, 0])  # nose
    x0, y0, x1, y1 = target["boxes"].unbind(-1)  # a box's right edge becomes its left edge
    torch.testing.assert_close(flipped["boxes"], torch.stack([101 - x1, y0, 101 - x0, y1], -1))


def test_keep_inside_takes_column_c_as_c_to_c_plus_1():
    """A keypoint at x = w (or y = h) lies past the last pixel: unlabelled; one just before it stays."""
    h, w = 10, 20
    kpts = torch.tensor(
        [[[w - 1e-3, 5, 2], [w, 5, 2]], [[3, h - 1e-3, 1], [3, h, 2]], [[0, 0, 2], [-1e-3, 0, 2]]]
    )
    target = {"keypoints": kpts, "boxes": torch.zeros(3, 4), "area": torch.ones(3)}
    kept = keep_inside(target, h, w)
    assert kept["keypoints"][..., 2].tolist() == [[2, 0], [1, 0], [2, 0]]
    assert kept["keypoints"][:, 1].abs().sum() == 0  # the unlabelled ones zeroed


def test_flip_twice_is_identity_on_a_real_photo():
    ann_file, image_dir = coco_mini()
    dataset = CocoKeypoints(ann_file, image_dir, transforms=ToTensor(), skip_empty=True)
    image, target = dataset[0]
    flip = RandomHorizontalFlip(COCO.flip_pairs, p=1.0)
    once_image, once = flip(image, target)
    again_image, again = flip(once_image, once)
    assert not torch.equal(once_image, image)
    torch.testing.assert_close(again_image, image)
    # w - (w - x) in fp32 at x ~ 640 is off by an ulp or two
    torch.testing.assert_close(again["keypoints"], target["keypoints"], atol=1e-4, rtol=0)
    torch.testing.assert_close(again["boxes"], target["boxes"], atol=1e-4, rtol=0)


def test_crowdpose_flip_pairs():
    assert CROWDPOSE.flip_pairs[0] == (0, 1) and CROWDPOSE.names[12:] == ("head", "neck")
    keypoints = torch.zeros(1, 14, 3)
    keypoints[0, :, 0] = torch.arange(14.0) + 1
    keypoints[0, :, 2] = 2
    target = {"keypoints": keypoints, "area": torch.ones(1), "size": torch.tensor([5, 20])}
    _, flipped = RandomHorizontalFlip(CROWDPOSE.flip_pairs, p=1.0)(torch.zeros(3, 5, 20), target)
    # left shoulder (0) takes the right shoulder's mirrored place; head and neck keep their indices
    sources = (2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 13, 14)
    assert flipped["keypoints"][0, :, 0].tolist() == [20 - x for x in sources]


def test_layout_checks_a_files_keypoint_order():
    CROWDPOSE.check_order(list(CROWDPOSE.names), "ok.json")
    COCO.check_order(["nose", "eye_l", "eye_r"] + list(COCO.names[3:]), "own-spelling.json")
    COCO.check_order([], "unnamed.json")
    ai_challenger = [
        f"{side}_{part}" for side in ("right", "left") for part in ("shoulder", "elbow", "wrist")
    ]
    with pytest.raises(ValueError, match=r"aic\.json lists keypoint 0 as 'right_shoulder', .* index 1"):
        CROWDPOSE.check_order(ai_challenger + list(CROWDPOSE.names[6:]), "aic.json")


def test_layouts_flip_index_covers_every_keypoint():
    """The mirrored image's keypoint order: sides swapped, unpaired keypoints (nose, head, neck) kept."""
    assert COCO.flip_index == [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    assert CROWDPOSE.flip_index == [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 12, 13]


def test_crop_unlabels_outside_keypoints_and_drops_empty_people():
    generator = torch.Generator().manual_seed(1)
    for _ in range(10):
        image, target = marked_sample(generator, people=5)
        out_image, out = RandomCrop(50, 90)(image, target)
        h, w = out_image.shape[-2:]
        assert 50 <= h <= 90 and 50 <= w <= 90
        assert ((out["keypoints"][..., 2] > 0).any(-1)).all(), "people without keypoints must be removed"
        assert (out["boxes"][:, 0::2] <= w).all() and (out["boxes"][:, 1::2] <= h).all()
        assert (out["boxes"] >= 0).all()
        assert len(out["area"]) == len(out["boxes"]) == len(out["keypoints"]) == len(out["iscrowd"])


def test_crop_keeps_areas_and_drops_people_whose_box_it_empties():
    """As opera's crop: a person whose box is the whole 100 x 100 image keeps its area (its scale in
    OKS); one whose keypoint every 60 x 60 window holds is removed where the window misses its box.
    The image's values are its pixel's column and row, so the crop shows where its window lay."""
    keypoints = torch.zeros(2, 17, 3)
    keypoints[:, 0] = torch.tensor([50.5, 50.5, 2.0])  # the second's keypoint lies outside its own box
    boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 20.0, 20.0]])
    target = {"keypoints": keypoints, "boxes": boxes, "area": torch.tensor([1000.0, 50.0]),
              "iscrowd": torch.zeros(2, dtype=torch.int64), "size": torch.tensor([100, 100])}  # fmt: skip
    rows, cols = torch.meshgrid(torch.arange(100.0), torch.arange(100.0), indexing="ij")
    image = torch.stack([cols, rows, rows])
    torch.manual_seed(0)
    kept = []
    for _ in range(40):
        out_image, out = RandomCrop(60, 60)(image, dict(target))
        left, top = out_image[0, 0, 0].item(), out_image[1, 0, 0].item()
        assert out_image.shape[-2:] == (60, 60)
        assert out["boxes"][0].tolist() == [0.0, 0.0, 60.0, 60.0] and out["area"][0] == 1000.0
        kept.append(len(out["keypoints"]) == 2)
        assert kept[-1] == (left < 20 and top < 20)
        assert len(out["area"]) == len(out["boxes"]) == len(out["iscrowd"]) == len(out["keypoints"])
    assert any(kept) and not all(kept)


@pytest.mark.parametrize("degrees", [90.0, -90.0, 30.0])
def test_rotation_moves_a_keypoint_with_its_pixel(monkeypatch, degrees):
    """One lit pixel with a keypoint on its centre, on a square canvas. At +-90 degrees the pixel grid
    maps onto itself: (x, y) goes to (y, w - x) (counter-clockwise on screen) or (h - y, x), exactly.
    At 30 degrees the lit pixel spreads over its neighbours, whose brightness-weighted centre is the
    keypoint (measured above the mean colour the turned-in corners take)."""
    from jcra.data import transforms

    monkeypatch.setattr(transforms, "_uniform", lambda low, high: degrees)
    h = w = 48
    px, py = 13, 29
    fill = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
    image = fill.expand(3, h, w).clone()  # the mean colour, as the turned-in corners: a flat background
    image[:, py, px] = 255.0
    keypoints = torch.zeros(1, 17, 3)
    keypoints[0, 0] = torch.tensor([px + 0.5, py + 0.5, 2.0])
    out_image, out = RandomAffine(90.0)(image, {"keypoints": keypoints, "size": torch.tensor([h, w])})
    assert out_image.shape[-2:] == (h, w)
    x, y = out["keypoints"][0, 0, :2].tolist()
    gray, lit = (out_image - fill).mean(0), float((255.0 - fill).mean())
    if abs(degrees) == 90:
        expected = (py + 0.5, w - px - 0.5) if degrees > 0 else (h - py - 0.5, px + 0.5)
        assert (x, y) == pytest.approx(expected, abs=1e-4)
        assert gray[int(y), int(x)] == pytest.approx(lit, abs=1e-3) and gray.sum() == pytest.approx(
            lit, abs=1e-2
        )
    else:
        rows, cols = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        centre = (float((gray * cols).sum() / gray.sum()), float((gray * rows).sum() / gray.sum()))
        assert (x, y) == pytest.approx(centre, abs=0.15)


def test_rotation_keeps_the_canvas_fills_the_mean_and_drops_what_turns_out(monkeypatch):
    """PETR's: the image keeps its size, corners turned in take the mean colour, a keypoint turned out
    is unlabelled, a person left with none is removed; boxes are clipped, areas unchanged."""
    from jcra.data import transforms

    monkeypatch.setattr(transforms, "_uniform", lambda low, high: 90.0)
    h, w = 100, 200
    keypoints = torch.zeros(2, 17, 3)
    keypoints[0, 0] = torch.tensor([100.5, 40.5, 2.0])  # near the centre: stays
    keypoints[0, 1] = torch.tensor([190.5, 50.5, 2.0])  # turned to y = -40.5, off the image
    keypoints[1, 0] = torch.tensor([5.5, 50.5, 2.0])  # this person's only keypoint, turned off too
    target = {
        "keypoints": keypoints,
        "boxes": torch.tensor([[90.0, 30.0, 195.0, 60.0], [0.0, 40.0, 10.0, 60.0]]),
        "area": torch.tensor([300.0, 50.0]),
        "iscrowd": torch.zeros(2),
        "size": torch.tensor([h, w]),
    }
    out_image, out = RandomAffine(30.0)(torch.full((3, h, w), 255.0), target)
    assert out_image.shape[-2:] == (h, w) and out["size"].tolist() == [h, w]
    fill = torch.tensor(IMAGENET_MEAN) * 255
    torch.testing.assert_close(out_image[:, 0, 0], fill)  # a corner turned in from outside
    torch.testing.assert_close(out_image[:, h // 2, w // 2], torch.full((3,), 255.0))
    assert out["keypoints"].shape[0] == 1 and out["area"].tolist() == [300.0]
    assert out["keypoints"][0, 0].tolist() == pytest.approx([90.5, 49.5, 2.0], abs=1e-4)  # (cx + dy, cy - dx)
    assert out["keypoints"][0, 1].tolist() == [0.0, 0.0, 0.0]
    assert out["boxes"][0].tolist() == pytest.approx(
        [80.0, 0.0, 110.0, 60.0], abs=1e-4
    )  # y from -45, clipped


@pytest.mark.parametrize(("shear_x", "shear_y"), [(10.0, 0.0), (0.0, -10.0), (2.0, 2.0)])
def test_shear_moves_keypoints_and_boxes_as_opera_does(monkeypatch, shear_x, shear_y):
    """With no rotation, opera's shear sends (x, y) to c + [[1, tan sx], [tan sy, 1]] (p - c); a lit
    pixel ends under its keypoint; a box becomes its sheared corners' bounds."""
    from jcra.data import transforms

    draws = iter([0.0, shear_x, shear_y])  # rotation first, then the shears along x and y
    monkeypatch.setattr(transforms, "_uniform", lambda low, high: next(draws))
    h, w = 60, 80
    px, py = 61, 47
    fill = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
    image = fill.expand(3, h, w).clone()
    image[:, py, px] = 255.0
    keypoints = torch.zeros(1, 17, 3)
    keypoints[0, 0] = torch.tensor([px + 0.5, py + 0.5, 2.0])
    target = {
        "keypoints": keypoints,
        "boxes": torch.tensor([[30.0, 20.0, 50.0, 40.0]]),
        "size": torch.tensor([h, w]),
    }
    out_image, out = RandomAffine(30.0, max_shear=10.0)(image, target)
    tx, ty = math.tan(math.radians(shear_x)), math.tan(math.radians(shear_y))
    dx, dy = px + 0.5 - w / 2, py + 0.5 - h / 2
    expected = (w / 2 + dx + tx * dy, h / 2 + ty * dx + dy)
    assert out["keypoints"][0, 0, :2].tolist() == pytest.approx(expected, abs=1e-4)
    gray = (out_image - fill).mean(0)
    rows, cols = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    centre = (float((gray * cols).sum() / gray.sum()), float((gray * rows).sum() / gray.sum()))
    assert centre == pytest.approx(expected, abs=0.15)
    # the box (30, 20)-(50, 40) is centred on the image: its corners move by tan * (+-10)
    spread_x, spread_y = 10 * abs(tx), 10 * abs(ty)
    assert out["boxes"][0].tolist() == pytest.approx(
        [30 - spread_x, 20 - spread_y, 50 + spread_x, 40 + spread_y], abs=1e-4
    )


def test_shear_draws_nothing_when_off():
    """Rotation alone draws one angle, as before shear existed: a run from before resumes on the same
    augmentations."""
    image, target = (
        torch.zeros(3, 20, 30),
        {"keypoints": torch.zeros(0, 17, 3), "size": torch.tensor([20, 30])},
    )
    for max_shear, draws in ((0.0, 1), (2.0, 3)):
        torch.manual_seed(0)
        RandomAffine(30.0, max_shear=max_shear)(image, dict(target))
        after = torch.rand(())
        torch.manual_seed(0)
        torch.rand(())  # the coin
        for _ in range(draws):
            torch.empty(()).uniform_(-1, 1)
        assert torch.rand(()) == after, max_shear


@pytest.mark.parametrize(
    ("h", "w", "scale", "max_size", "expected"),
    [
        (480, 640, 800, 1333, (800, 1067)),
        (640, 480, 800, 1333, (1067, 800)),
        (100, 1000, 800, 1333, (133, 1330)),
        (1, 3000, 800, 1333, (1, 1333)),
        (3000, 2, 256, 256, (256, 1)),
    ],
)
def test_resized_shape_caps_the_long_side(h, w, scale, max_size, expected):
    assert resized_shape(h, w, scale, max_size) == expected


@pytest.mark.parametrize("shape", [(2, 1100), (1100, 2), (1, 1)])
def test_extreme_shapes_pass_every_transform(shape, monkeypatch):
    """A 2 x 1100 image got a short side of 0 (a crash in interpolate) at the cap of 256, and the crop
    branch's uncapped resize made it 144 x 79200 pixels (a 1 x 3000 one 600 x 1.8 million)."""
    sizes, resize = [], transforms_module.F.interpolate

    def interpolate(image, size, **kwargs):
        sizes.append(size)
        return resize(image, size, **kwargs)

    monkeypatch.setattr(transforms_module.F, "interpolate", interpolate)
    target = {"keypoints": torch.zeros(0, 17, 3), "boxes": torch.zeros(0, 4), "area": torch.zeros(0)}
    for train in (False, True):
        transforms = build_transforms(train, flip_pairs=COCO.flip_pairs, scales=[192, 256], max_size=256)
        for _ in range(1 + 19 * train):
            transforms(torch.zeros(3, *shape, dtype=torch.uint8), dict(target))
    assert min(min(size) for size in sizes) >= 1 and max(max(size) for size in sizes) <= 4 * 256


def test_resize_scales_keypoints_and_areas():
    image, target = marked_sample(torch.Generator().manual_seed(3), h=100, w=200)
    out_image, out = Resize([50], max_size=None)(image, target)
    assert tuple(out_image.shape[-2:]) == (50, 100)
    labelled = target["keypoints"][..., 2] > 0
    torch.testing.assert_close(out["keypoints"][labelled][:, :2], target["keypoints"][labelled][:, :2] / 2)
    torch.testing.assert_close(out["area"], target["area"] / 4)


def test_people_free_images_pass_every_transform():
    transforms = build_transforms(True, flip_pairs=COCO.flip_pairs, scales=[64, 96], max_size=128)
    target = {
        "keypoints": torch.zeros(0, 17, 3),
        "boxes": torch.zeros(0, 4),
        "area": torch.zeros(0),
        "iscrowd": torch.zeros(0, dtype=torch.int64),
        "image_id": 3,
        "orig_size": torch.tensor([70, 90]),
        "size": torch.tensor([70, 90]),
    }
    for _ in range(10):
        image, out = transforms(torch.zeros(3, 70, 90, dtype=torch.uint8), target)
        assert out["keypoints"].shape == (0, 17, 3) and out["size"].tolist() == list(image.shape[-2:])


def test_evaluation_transforms_are_deterministic_and_draw_no_random_numbers():
    transforms = build_transforms(False, flip_pairs=COCO.flip_pairs, scales=[120], max_size=200)
    image, target = marked_sample(torch.Generator().manual_seed(4))
    state = torch.get_rng_state()
    first, _ = transforms(image, target)
    second, out = transforms(image, target)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(first, second)
    assert tuple(first.shape[-2:]) == (120, 173)
    assert_keypoints_on_marks(denormalise(first), out)


def test_photometric_distortion_stays_in_range():
    from jcra.data.transforms import PhotometricDistortion

    image = torch.rand(3, 30, 40) * 255
    for _ in range(20):
        out, _ = PhotometricDistortion()(image, {})
        assert out.min() >= 0 and out.max() <= 255


def _hsv_reference(image, saturation, hue_degrees):
    """Per pixel with the standard library's colorsys: saturation scaled, hue turned (degrees)."""
    out = torch.empty_like(image)
    for row in range(image.shape[1]):
        for col in range(image.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*image[:, row, col].tolist())
            rgb = colorsys.hsv_to_rgb((h + hue_degrees / 360) % 1, s * saturation, v)
            out[:, row, col] = torch.tensor(rgb)
    return out


@pytest.mark.parametrize("contrast_first", [True, False])
def test_photometric_distortion_follows_mmdet(monkeypatch, contrast_first):
    """Every step on, fixed draws in mmdet's ranges and order: brightness +10, contrast x1.2 first or
    last, saturation and hue in HSV (checked against colorsys; a saturation x1.5 pushes some channels
    below 0, clipped), the channels reordered. Every step off: the image unchanged."""
    from jcra.data import transforms

    saturation = 0.8 if contrast_first else 1.5
    draws, ranges = (
        iter([10.0, 1.2, saturation, 120.0] if contrast_first else [10.0, saturation, 120.0, 1.2]),
        [],
    )
    coins = iter([True, contrast_first, True, True, True, True])  # the second: contrast first or last
    monkeypatch.setattr(transforms, "_coin", lambda p=0.5: next(coins))
    monkeypatch.setattr(transforms, "_uniform", lambda low, high: ranges.append((low, high)) or next(draws))
    monkeypatch.setattr(torch, "randperm", lambda n: torch.tensor([2, 0, 1]))
    image = 20 + 100 * torch.rand(3, 6, 5, generator=torch.Generator().manual_seed(0))
    out, _ = transforms.PhotometricDistortion()(image, {})
    hsv_ranges = [(0.5, 1.5), (-18.0, 18.0)]
    assert ranges == [
        (-32.0, 32.0),
        *([(0.5, 1.5), *hsv_ranges] if contrast_first else [*hsv_ranges, (0.5, 1.5)]),
    ]
    if contrast_first:
        expected = _hsv_reference((image + 10.0) * 1.2, saturation, 120.0)
    else:
        expected = _hsv_reference(image + 10.0, saturation, 120.0) * 1.2
    torch.testing.assert_close(out, expected[[2, 0, 1]].clamp(0, 255), rtol=1e-5, atol=1e-3)
    assert (expected < 0).any() != contrast_first  # the clip did something where saturation is 1.5
    monkeypatch.setattr(transforms, "_coin", lambda p=0.5: False)
    assert torch.equal(transforms.PhotometricDistortion()(image, {})[0], image)


def test_photometric_distortion_clips_before_a_late_contrast_with_or_without_hsv(monkeypatch):
    """Brightness pushes a pixel past 255 and contrast x0.5 comes last: the pixel is clipped to 255
    before the contrast whether or not saturation was drawn, so a factor of 1 changes nothing."""
    from jcra.data import transforms

    image = torch.tensor([250.0, 100.0, 30.0]).view(3, 1, 1).expand(3, 2, 2).clone()
    outs = []
    for saturate in (True, False):
        coins = iter([True, False, saturate, False, True, False])  # brightness, contrast last, no swap
        draws = iter([30.0, 1.0, 0.5] if saturate else [30.0, 0.5])
        monkeypatch.setattr(transforms, "_coin", lambda p=0.5, coins=coins: next(coins))
        monkeypatch.setattr(transforms, "_uniform", lambda low, high, draws=draws: next(draws))
        outs.append(transforms.PhotometricDistortion()(image, {})[0])
    expected = torch.tensor([255.0, 130.0, 60.0]).view(3, 1, 1).expand(3, 2, 2) * 0.5
    torch.testing.assert_close(outs[0], expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(outs[1], expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(scales=[], max_size=10), "scales"),
        (dict(scales=[0], max_size=10), "scales"),
        (dict(scales=[64], max_size=32), "max_size"),
    ],
)
def test_bad_transform_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_transforms(True, flip_pairs=COCO.flip_pairs, **kwargs)
