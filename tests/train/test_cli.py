"""The ``jcra`` command: predict on a folder (results JSON and drawings), evaluate, bad input."""

import json
from pathlib import Path

import pytest

from jcra.cli import main
from tests.train.conftest import tiny_config
from train.train import train


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    """A checkpoint of 2 training steps of the tiny model."""
    out = tmp_path_factory.mktemp("run")
    return train(tiny_config(data, out, max_steps=2))["checkpoint"]


def test_predict_folder_writes_results_and_drawings(data, checkpoint, tmp_path, capsys):
    assert main(["predict", checkpoint, data["val_images"], "--out", str(tmp_path), "--device", "cpu"]) == 0
    records = json.loads((tmp_path / "results.json").read_text())
    images = sorted(Path(data["val_images"]).iterdir())
    assert {r["image_id"] for r in records} == set(range(len(images)))
    assert all(len(r["keypoints"]) == 17 * 3 and 0 <= r["score"] <= 1 for r in records)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(p.stem + ".png" for p in images)
    assert "results.json" in capsys.readouterr().out


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
    ],
)
def test_bad_input_exits_with_message(data, checkpoint, tmp_path, capsys, args, message):
    fill = {"ckpt": checkpoint, "out": str(tmp_path), "images": data["val_images"]}
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(**fill) for a in args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
