"""The synthetic default dataset: deterministic, COCO-valid, plausible people, occlusion labels."""

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from jcra.data import CocoKeypoints
from jcra.data.synthetic import draw_figure, generate, person_colours, pose_joints, random_figure


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict:
    return generate(tmp_path_factory.mktemp("synthetic"), num_train=24, num_val=6, seed=3, image_size=128)


def test_same_seed_same_files(synthetic, tmp_path):
    again = generate(tmp_path, num_train=24, num_val=6, seed=3, image_size=128)
    for split in ("train", "val"):
        assert Path(again[f"{split}_ann"]).read_text() == Path(synthetic[f"{split}_ann"]).read_text()
        for image in sorted(Path(synthetic[f"{split}_images"]).iterdir()):
            assert (Path(again[f"{split}_images"]) / image.name).read_bytes() == image.read_bytes()
    other = generate(tmp_path / "other", num_train=24, num_val=0, seed=4, image_size=128)
    assert Path(other["train_ann"]).read_text() != Path(synthetic["train_ann"]).read_text()


def test_annotations_are_valid_coco_people(synthetic):
    data = json.loads(Path(synthetic["train_ann"]).read_text())
    assert len(data["images"]) == 24 and data["categories"][0]["keypoints"][0] == "nose"
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    per_image = np.bincount([a["image_id"] for a in data["annotations"]], minlength=25)[1:]
    assert per_image.max() <= 10 and per_image.mean() >= 1.5
    visibilities = []
    for ann in data["annotations"]:
        kpts = np.asarray(ann["keypoints"]).reshape(17, 3)
        w, h = sizes[ann["image_id"]]
        labelled = kpts[:, 2] > 0
        assert ann["num_keypoints"] == labelled.sum() > 0
        assert ((kpts[labelled, 0] >= 0) & (kpts[labelled, 0] < w)).all()
        assert ((kpts[labelled, 1] >= 0) & (kpts[labelled, 1] < h)).all()
        assert (kpts[~labelled] == 0).all()
        x, y, bw, bh = ann["bbox"]
        assert 0 < ann["area"] <= bw * bh and x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
        visibilities += kpts[:, 2].tolist()
    counts = np.bincount(np.asarray(visibilities, int), minlength=3)
    assert counts[1] > 0, "some keypoints should be occluded by nearer people (v=1)"
    assert counts[2] > counts[1]


def test_loads_as_a_dataset(synthetic):
    """Every label lies inside its image as the dataset reads it (no label is dropped, no warning)."""
    for split in ("train", "val"):
        dataset = CocoKeypoints(synthetic[f"{split}_ann"], synthetic[f"{split}_images"])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            items = [dataset[i] for i in range(len(dataset))]
        image, target = items[0]
        assert image.shape[0] == 3 and max(image.shape[1:]) == 128
        assert target["keypoints"].shape[1:] == (17, 3)


def test_drawn_nose_is_centred_on_its_label():
    """The nose's dot is centred on the nose's label (both in pixel indices), up to the pixel grid: the
    mean offset of 300 dots is near 0 (PIL's flooring of shape corners put it half a pixel off)."""
    rng = np.random.default_rng(0)
    offsets = []
    for _ in range(300):
        figure = random_figure(rng, 256, 256, 1)
        joints = figure["joints"].copy()
        joints[1:3] = -100.0  # the eyes' dots, of the nose's colour, off the canvas
        image = Image.new("RGB", (256, 256), (255, 255, 255))
        draw_figure(ImageDraw.Draw(image), joints, figure["height"], person_colours(rng))
        label = np.round(joints[0], 2)
        components, _ = ndimage.label((np.asarray(image) == (30, 20, 20)).all(-1))
        x, y = np.round(label).astype(int)
        if not (0 <= x < 256 and 0 <= y < 256) or components[y, x] == 0:
            continue
        ys, xs = np.nonzero(components == components[y, x])
        offsets.append((xs.mean() - label[0], ys.mean() - label[1]))
    assert len(offsets) > 200
    assert np.abs(np.mean(offsets, axis=0)).max() < 0.1


def test_poses_have_human_proportions():
    rng = np.random.default_rng(0)
    for _ in range(50):
        j = pose_joints(rng)
        shoulders, hips = (j[5] + j[6]) / 2, (j[11] + j[12]) / 2
        assert shoulders[1] < hips[1], "upright: shoulders above hips (y points down)"
        assert j[0][1] < shoulders[1], "the nose is above the shoulders"
        assert j[5][0] > j[6][0] and j[11][0] > j[12][0], "facing the camera: the left side is on the right"
        upper_arm, thigh = np.linalg.norm(j[7] - j[5]), np.linalg.norm(j[13] - j[11])
        assert 0.1 < upper_arm < 0.25 and 0.15 < thigh < 0.3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [(dict(num_train=-1), "num_train"), (dict(image_size=16), "image_size")],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(tmp_path, **kwargs)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--num-train", "-1"], "num_train"), (["--image-size", "16"], "image_size"), ([], "Not a directory")],
)
def test_command_line_errors_exit_with_the_message(tmp_path, monkeypatch, capsys, args, message):
    """A usage error, not a traceback; OUT an existing file included."""
    from jcra.data.synthetic import main

    (tmp_path / "file").touch()
    monkeypatch.setattr(sys, "argv", ["synthetic", str(tmp_path / "file"), *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
