"""The ``jcra`` command: predict on a folder (results JSON and drawings), evaluate, bad input."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from jcra.cli import main
from tests.train.conftest import tiny_config
from train.checkpoint import load_checkpoint
from train.train import train


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    """A checkpoint of 2 training steps of the tiny model."""
    out = tmp_path_factory.mktemp("run")
    return train(tiny_config(data, out, max_steps=2))["checkpoint"]


@pytest.fixture
def bad_files(data, checkpoint, tmp_path) -> Path:
    """``tmp_path`` with ``truncated/`` (a good image, then a truncated one), ``clash/`` (``photo.png`` and
    ``photo.png.png``, its drawing's name), a plain state dict, a JSON file and a truncated checkpoint."""
    image = sorted(Path(data["val_images"]).iterdir())[0]
    for folder, names in {"truncated": ["a.jpg"], "clash": ["photo.png", "photo.png.png"]}.items():
        (tmp_path / folder).mkdir()
        for name in names:
            shutil.copy(image, tmp_path / folder / name)
    (tmp_path / "truncated" / "b.jpg").write_bytes(image.read_bytes()[:-200])
    torch.save(load_checkpoint(checkpoint)["model"], tmp_path / "state_dict.pt")
    (tmp_path / "not_checkpoint.pt").write_text('{"step": 1}')
    (tmp_path / "truncated.pt").write_bytes(Path(checkpoint).read_bytes()[:5000])
    coco = json.loads(Path(data["val_ann"]).read_text())  # the same people with CrowdPose's 14 keypoints
    for category in coco["categories"]:
        category["keypoints"] = category["keypoints"][:14]
    for annotation in coco["annotations"]:
        annotation["keypoints"] = annotation["keypoints"][:42]
    (tmp_path / "k14.json").write_text(json.dumps(coco))
    return tmp_path


def test_predict_folder_writes_results_and_drawings(data, checkpoint, tmp_path, capsys):
    assert main(["predict", checkpoint, data["val_images"], "--out", str(tmp_path), "--device", "cpu"]) == 0
    records = json.loads((tmp_path / "results.json").read_text())
    images = sorted(Path(data["val_images"]).iterdir())
    assert {r["image_id"] for r in records} == set(range(len(images)))
    assert all(len(r["keypoints"]) == 17 * 3 and 0 <= r["score"] <= 1 for r in records)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(p.name + ".png" for p in images)
    assert "results.json" in capsys.readouterr().out


def test_predict_into_input_folder_keeps_inputs_and_same_stems_apart(data, checkpoint, tmp_path):
    image = sorted(Path(data["val_images"]).iterdir())[0]
    inputs = {name: tmp_path / name for name in ("photo.jpg", "photo.png")}
    for path in inputs.values():
        shutil.copy(image, path)
    assert main(["predict", checkpoint, str(tmp_path), "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert all(path.read_bytes() == image.read_bytes() for path in inputs.values())
    assert sorted(p.name for p in tmp_path.glob("*.*.png")) == ["photo.jpg.png", "photo.png.png"]


def test_evaluate_command_prints_ap(data, checkpoint, tmp_path, capsys):
    args = ["evaluate", checkpoint, "--ann-file", data["val_ann"], "--image-dir", data["val_images"]]
    assert main([*args, "--out", str(tmp_path), "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0.0 <= metrics["AP"] <= 1.0
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "{ckpt}", "/nonexistent.png", "--out", "{out}"], "IMAGES"),
        (["predict", "{ckpt}", "{images}", "--out", "{out}", "--score-threshold", "2"], "score_threshold"),
        (["predict", "/nonexistent.pt", "{images}", "--out", "{out}"], "checkpoint"),
        (["evaluate", "{ckpt}", "--ann-file", "/nonexistent.json", "--image-dir", "{images}"], "ann_file"),
        (["predict", "{ckpt}", "{out}/clash", "--out", "{out}/clash"], r"--out.*clash/photo\.png\.png"),
        (["predict", "{ckpt}", "{out}/truncated", "--out", "{out}"], r"truncated/b\.jpg"),
        (["predict", "{ckpt}", "{images}", "--out", "{out}", "--device", "gpu"], "--device"),
        (["predict", "{ckpt}", "{images}", "--out", "{out}", "--device", "cuda:99"], "--device"),
        (
            ["evaluate", "{ckpt}", "--ann-file", "{ann}", "--image-dir", "{images}", "--device", "gpu"],
            "--device",
        ),
        (["predict", "{out}/state_dict.pt", "{images}", "--out", "{out}"], r"state_dict\.pt.*model_config"),
        (["predict", "{out}/not_checkpoint.pt", "{images}", "--out", "{out}"], r"not_checkpoint\.pt"),
        (["predict", "{out}/truncated.pt", "{images}", "--out", "{out}"], r"truncated\.pt"),
        (
            ["evaluate", "{ckpt}", "--ann-file", "{out}/k14.json", "--image-dir", "{images}"],
            r"k14\.json.*14 keypoints.*'coco'",
        ),
    ],
)
def test_bad_input_exits_with_message(data, checkpoint, bad_files, capsys, args, message):
    fill = {"ckpt": checkpoint, "out": str(bad_files), "images": data["val_images"], "ann": data["val_ann"]}
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(**fill) for a in args])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (bad_files / "results.json").exists()
