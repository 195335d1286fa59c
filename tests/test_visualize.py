"""jcra.visualize: drawn pixels land where the keypoints and limbs are, input types, validation,
a real COCO photo, and the PNG grid."""

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from jcra.visualize import PALETTE, _clip_segment, draw_keypoints, save_grid
from tests.shared_data import shared_path

# COCO's 19 limbs, 0-based (the annotation file lists them 1-based).
COCO_SKELETON = [
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
]  # fmt: skip

BLACK = (0, 0, 0)
SIZE = (200, 120)  # (w, h)


def _person(points, dx=0.0):
    """A record from [(x, y, v), ...], shifted right by dx pixels."""
    return {"keypoints": [c for x, y, v in points for c in (x + dx, y, v)]}


# Keypoint 2 is unlabelled (v=0); limbs 0-1 (horizontal) and 1-3 (vertical) have both ends visible.
PERSON = [(20.0, 30.0, 2), (60.0, 30.0, 1), (40.0, 80.0, 0), (60.0, 90.0, 2)]
SKELETON = [(0, 1), (1, 3), (0, 2)]


def _px(image: Image.Image, x: float, y: float):
    return image.getpixel((round(x), round(y)))


def test_pixels_of_one_person():
    src = Image.new("RGB", SIZE)
    out = draw_keypoints(src, [_person(PERSON)], SKELETON, radius=3, width=2)
    assert out is not src and out.mode == "RGB" and out.size == SIZE
    for x, y, v in PERSON:
        assert _px(out, x, y) == (PALETTE[0] if v else BLACK), (x, y, v)
    assert _px(out, 40, 30) == PALETTE[0]  # midpoint of limb 0-1
    assert _px(out, 60, 60) == PALETTE[0]  # midpoint of limb 1-3
    assert _px(out, 30, 55) == BLACK  # midpoint of limb 0-2, whose end 2 is unlabelled
    for x, y in [(150, 100), (190, 10), (5, 115), (100, 60)]:
        assert _px(out, x, y) == BLACK, (x, y)
    assert src.getextrema() == ((0, 0), (0, 0), (0, 0))  # the input stays black


def test_limbs_running_far_off_the_image_are_drawn_where_they_cross_it(monkeypatch):
    """Each limb is clipped to the canvas before ImageDraw walks it (an end at 1e9 took seconds)."""
    lines = []
    line = ImageDraw.ImageDraw.line
    monkeypatch.setattr(
        ImageDraw.ImageDraw, "line", lambda self, xy, **kw: [lines.append(xy), line(self, xy, **kw)]
    )
    far = [(20.0, 30.0, 2), (1e9, 30.0, 2), (60.0, -1e9, 2), (-1e9, 1e9, 2)]
    out = draw_keypoints(Image.new("RGB", SIZE), [_person(far)], [(0, 1), (0, 2), (2, 3)], radius=3, width=1)
    assert len(lines) == 2 and all(
        -1 <= x <= SIZE[0] + 1 and -1 <= y <= SIZE[1] + 1 for xy in lines for x, y in xy
    )
    assert _px(out, 199, 30) == PALETTE[0]  # limb 0-1 runs right to the edge
    assert _px(out, 20, 0) == _px(out, 20, 15) == PALETTE[0]  # limb 0-2 runs (almost) straight up
    assert _px(out, 25, 15) == BLACK
    assert _px(out, 150, 100) == BLACK  # limb 2-3 passes far outside the image


def test_clip_segment_to_a_box():
    box = (0, 0, 100, 50)
    assert _clip_segment((10, 10), (90, 40), box) == [(10, 10), (90, 40)]
    assert _clip_segment((10, 10), (1e9, 10), box) == [(10, 10), (100, 10)]
    assert _clip_segment((-10, 25), (200, 25), box) == [(0, 25), (100, 25)]
    assert _clip_segment((50, -50), (50, 150), box) == [(50, 0), (50, 50)]
    assert _clip_segment((-10, -10), (-5, 200), box) is None
    assert _clip_segment((150, 25), (150, 25), box) is None


def test_min_visibility_and_score_text():
    # Results: the third value is a confidence; only those above min_visibility are drawn.
    result = {**_person([(20.0, 60.0, 0.9), (60.0, 60.0, 0.2)]), "score": 0.87}
    out = np.asarray(draw_keypoints(Image.new("RGB", SIZE), [result], [(0, 1)], min_visibility=0.5))
    assert tuple(out[60, 20]) == PALETTE[0]
    assert tuple(out[60, 60]) == BLACK
    assert tuple(out[60, 40]) == BLACK  # the limb needs both ends
    # The score is written above the top-most drawn keypoint (y=60) and nowhere below the person.
    above, below = out[:55].any(axis=2), out[66:].any(axis=2)
    assert above.any() and not below.any()


def test_two_people_get_different_colours():
    people = [_person(PERSON), _person(PERSON, dx=100.0)]
    out = draw_keypoints(Image.new("RGB", SIZE), people, SKELETON, radius=3)
    first, second = _px(out, 20, 30), _px(out, 120, 30)
    assert BLACK not in (first, second) and first != second
    # Deterministic: the same call draws the same pixels.
    assert out.tobytes() == draw_keypoints(Image.new("RGB", SIZE), people, SKELETON, radius=3).tobytes()


def test_numpy_and_tensor_inputs():
    array = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    tensor = torch.zeros(3, SIZE[1], SIZE[0], dtype=torch.uint8)
    expected = draw_keypoints(Image.new("RGB", SIZE), [_person(PERSON)], SKELETON).tobytes()
    for image in (array, tensor):
        out = draw_keypoints(image, [_person(PERSON)], SKELETON)
        assert isinstance(out, Image.Image) and out.size == SIZE
        assert out.tobytes() == expected
    assert not array.any() and not tensor.any()


@pytest.mark.parametrize(
    "image",
    [
        "photo.jpg",
        np.zeros((8, 8, 3), np.float32),
        np.zeros((8, 8), np.uint8),
        torch.zeros(8, 8, 3, dtype=torch.uint8),
        torch.zeros(3, 8, 8),
    ],
    ids=["str", "numpy-float", "numpy-2d", "tensor-hwc", "tensor-float"],
)
def test_bad_image_type(image):
    with pytest.raises(TypeError, match="image"):
        draw_keypoints(image, [], [])


def test_bad_records_and_skeleton():
    image = Image.new("RGB", SIZE)
    records = [_person(PERSON), {"keypoints": [1.0, 2.0, 2.0, 3.0]}]
    with pytest.raises(ValueError, match=r"records\[1\]"):
        draw_keypoints(image, records, SKELETON)
    for pair in [(0, 4), (-1, 0)]:
        with pytest.raises(ValueError, match="skeleton"):
            draw_keypoints(image, [_person(PERSON)], [pair])
    with pytest.raises(ValueError, match=r"records\[0\]\['score'\]"):
        draw_keypoints(image, [{**_person(PERSON), "score": None}], SKELETON)
    with pytest.raises(ValueError, match=r"records\[1\] has no 'keypoints'"):
        draw_keypoints(image, [_person(PERSON), {"score": 0.5}], SKELETON)


def test_real_coco_photo():
    root = shared_path("coco-mini")
    with open(root / "annotations" / "person_keypoints_train2017.json") as f:
        dataset = json.load(f)
    labelled = {a["image_id"] for a in dataset["annotations"] if a["num_keypoints"] > 0}
    info = next(i for i in dataset["images"] if i["id"] in labelled)
    records = [a for a in dataset["annotations"] if a["image_id"] == info["id"]]
    src = Image.open(root / "train2017" / info["file_name"]).convert("RGB")
    before = src.tobytes()
    out = draw_keypoints(src, records, COCO_SKELETON)
    assert out.size == src.size == (info["width"], info["height"])
    assert src.tobytes() == before
    changed = (np.asarray(out) != np.asarray(src)).any(axis=2).sum()
    assert changed > 100, changed


def test_save_grid(tmp_path):
    red, green, blue = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
    sizes = ((100, 50), (30, 60), (64, 64))
    images = [Image.new("RGB", size, colour) for size, colour in zip(sizes, (red, green, blue), strict=True)]
    path = save_grid(images, tmp_path / "sub" / "grid.png", columns=2, cell=32)
    with Image.open(path) as grid:
        assert grid.format == "PNG" and grid.size == (64, 64)
        # The 100x50 red image becomes 32x16, centred vertically in the first cell.
        assert grid.getpixel((16, 16)) == red and grid.getpixel((16, 2)) == BLACK
        # row-major: the second to the first row's right, the third below the first; the last cell empty
        assert grid.getpixel((48, 16)) == green and grid.getpixel((16, 48)) == blue
        assert grid.getpixel((48, 48)) == BLACK
    with Image.open(save_grid(images, tmp_path / "row.png", cell=32)) as row:
        assert row.size == (96, 32)  # fewer images than columns: one row as wide as the images
    with pytest.raises(ValueError, match="images"):
        save_grid([], tmp_path / "empty.png")


def test_save_grid_failing_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    path = save_grid([Image.new("RGB", (8, 8), (0, 0, 255))], tmp_path / "grid.png", cell=8)
    before = path.read_bytes()

    def cut_short(image, f, *args, **kwargs):
        f.write(b"\x89PNG half")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", cut_short)
    with pytest.raises(OSError, match="No space"):
        save_grid([Image.new("RGB", (8, 8))], path, cell=8)
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]


def test_the_score_sits_above_the_top_keypoint_and_inside_the_image():
    """Above the top-most of two keypoints, not the lower one; at a corner it is moved in, whole."""
    person = {**_person([(100.0, 40.0, 2), (100.0, 90.0, 2)]), "score": 0.87}
    out = np.asarray(draw_keypoints(Image.new("RGB", SIZE), [person], [], radius=1)).any(axis=2)
    assert out[:38].any() and not out[43:88].any()

    def lit(x, y):
        record = {**_person([(x, y, 2)]), "score": 0.87}
        return int(
            np.asarray(draw_keypoints(Image.new("RGB", SIZE), [record], [], radius=1)).any(axis=2).sum()
        )

    # the text's pixels, but for the few of a clipped 3 x 3 disc, at the top-right corner as in the middle
    assert abs(lit(SIZE[0] - 1, 1) - lit(100, 60)) <= 9


def test_the_palette_cycles_after_twelve_people():
    people = [_person([(10.0 + 15 * n, 60.0, 2)]) for n in range(len(PALETTE) + 1)]
    out = draw_keypoints(Image.new("RGB", SIZE), people, [], radius=2)
    assert _px(out, 10 + 15 * len(PALETTE), 60) == PALETTE[0] and _px(out, 10, 60) == PALETTE[0]


def test_non_finite_keypoints_are_skipped():
    """A diverged model's NaN or inf keypoint is neither drawn nor where the score goes."""
    person = _person([(60.0, float("nan"), 2), (20.0, 50.0, 2), (float("inf"), 30.0, 2)])
    out = draw_keypoints(Image.new("RGB", SIZE), [{**person, "score": 0.5}], [(1, 0), (1, 2)], radius=3)
    lit = np.asarray(out).any(axis=2)
    assert _px(out, 20, 50) == PALETTE[0]
    assert not lit[:, 40:].any()  # the disc and the score above it, nothing near x = 60 or past it


def test_bad_sizes_are_refused_and_a_sliver_is_tiled(tmp_path):
    with pytest.raises(ValueError, match="radius"):
        draw_keypoints(Image.new("RGB", SIZE), [], [], radius=0)
    with pytest.raises(ValueError, match="columns"):
        save_grid([Image.new("RGB", SIZE)], tmp_path / "grid.png", columns=0)
    with pytest.raises(ValueError, match="columns and cell must be integers >= 1, got columns=1.5"):
        save_grid([Image.new("RGB", SIZE)], tmp_path / "grid.png", columns=1.5)
    with Image.open(
        save_grid([Image.new("RGB", (1000, 1), (255, 0, 0))], tmp_path / "s.png", cell=32)
    ) as grid:
        assert grid.size == (32, 32) and grid.getpixel((16, 15)) == (255, 0, 0)  # a 32 x 1 row


def test_sixteen_bit_grayscale_is_drawn_on_scaled_not_white():
    ramp = np.linspace(0, 65535, SIZE[0] * SIZE[1]).astype(np.uint16).reshape(SIZE[1], SIZE[0])
    out = np.asarray(draw_keypoints(Image.fromarray(ramp), [], []))
    assert out.shape == (SIZE[1], SIZE[0], 3) and out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert abs(int(out[SIZE[1] // 2, 0, 0]) - 128) <= 2
