"""The embedded demo end to end at toy size: data, training, evaluation, drawings, printed paths."""

import json

import pytest

import train.demo as demo
from tests.train.conftest import IMAGE_SIZE


def toy_demo(tmp_path, monkeypatch) -> list[str]:
    """The demo at toy size (4 train, 2 val images of 64 pixels, one step): its overrides."""
    pytest.importorskip("jcra.data.synthetic")
    monkeypatch.setattr(demo, "DATA_DIR", tmp_path / "data")
    monkeypatch.setattr(demo, "SYNTHETIC", dict(num_train=4, num_val=2, seed=0, image_size=IMAGE_SIZE))
    sizes = [
        f"train.train_scales=[{IMAGE_SIZE}]",
        f"train.val_scale={IMAGE_SIZE}",
        f"train.max_size={IMAGE_SIZE}",
    ]
    return [f"train.out_dir={tmp_path / 'run'}", "train.device=cpu", "train.max_steps=1", *sizes]


def test_demo_runs_and_prints_outputs(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    result = demo.run(toy_demo(tmp_path, monkeypatch))
    assert result["step"] == 1 and "AP" in result["metrics"]
    out = capsys.readouterr().out
    for name in ("checkpoint.pt", "metrics.jsonl", "val_results.json", "drawings"):
        assert str(run_dir / name) in out
    assert len(list((run_dir / "drawings").glob("*.png"))) == 2
    assert json.loads((run_dir / "drawings" / "results.json").read_text())
    paths = json.loads((tmp_path / "data" / "paths.json").read_text())
    # a second call reuses the index instead of regenerating
    monkeypatch.setattr("jcra.data.synthetic.generate", lambda *a, **k: pytest.fail("generated again"))
    assert demo.ensure_data(tmp_path / "data") == paths


def test_demo_again_continues_its_run(tmp_path, monkeypatch):
    """A second `make demo` resumes the finished run (nothing more to train) rather than refusing it."""
    overrides = toy_demo(tmp_path, monkeypatch)
    first = demo.run(overrides)
    again = demo.run(overrides)
    assert again["step"] == first["step"] == 1 and again["metrics"] == first["metrics"]


def test_data_paths_on_the_command_line_replace_the_synthetic_ones(tmp_path, monkeypatch):
    import train.train as loop

    monkeypatch.setattr(demo, "ensure_data", lambda data_dir, **synthetic: {"val_ann": "synthetic.json"})
    seen = {}

    def stop(cfg):
        seen["val_ann"] = cfg.val_ann
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", stop)
    with pytest.raises(KeyboardInterrupt):
        demo.run(["train.val_ann=mine.json"])
    assert seen["val_ann"] == "mine.json"
