"""bench.gpu_session: every section names files and tests that exist, and a session runs on the CPU.

A renamed test or suite would otherwise surface only on a lent GPU, in its few minutes.
"""

import ast
from pathlib import Path

import pytest

from bench import gpu_session
from tests.shared_data import shared_path

ROOT = Path(__file__).resolve().parents[1]


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_every_section_names_existing_paths_and_tests(tmp_path):
    table = gpu_session.sections(tmp_path)
    assert {
        "tests",
        "matcher",
        "train_step",
        "crowd",
        "profile",
        "train_profile",
        "train_run",
        "matcher_profile",
    } <= set(table)
    for name, (command, limit) in table.items():
        assert limit > 0, name
        if command[0] == "-m" and command[1] != "pytest":
            module = ROOT / (command[1].replace(".", "/") + ".py")
            assert module.exists(), f"section {name}: no module {command[1]}"
            continue
        if command[:2] != ["-m", "pytest"]:
            continue
        for arg in command[2:]:
            if arg.startswith(("tests/", "bench/")):
                path, _, test = arg.partition("::")
                assert (ROOT / path).exists(), f"section {name}: {path} does not exist"
                if test:
                    assert test in _test_names(ROOT / path), f"section {name}: no {test} in {path}"


def test_train_run_points_at_the_shared_coco_mini():
    overrides = dict(item.split("=", 1) for item in gpu_session.train_run_overrides())
    assert overrides["experiment"] == "coco_r50"
    assert overrides["train.model_overrides.pretrained"] == "false"  # no network on the GPU machine
    assert overrides["train.train_ann"].endswith("coco-mini/annotations/person_keypoints_train2017.json")
    assert (
        overrides["train.out_dir"]
        != dict(item.split("=", 1) for item in gpu_session.train_run_overrides())["train.out_dir"]
    )  # a new folder each call: a second call on a warm machine is not refused for the first's run


def test_train_run_has_data_for_its_steps():
    """Its epochs hold at least max_steps steps of the images that have a labelled person."""
    from jcra.data import CocoKeypoints

    overrides = dict(item.split("=", 1) for item in gpu_session.train_run_overrides())
    train_ann = shared_path("coco-mini", "annotations", "person_keypoints_train2017.json")
    images = CocoKeypoints(train_ann, overrides["train.train_images"], skip_empty=True, check_images=False)
    steps_per_epoch = len(images) // int(overrides["train.batch_size"])
    assert int(overrides["train.epochs"]) * steps_per_epoch >= int(overrides["train.max_steps"])


def test_session_runs_sections_and_reports_each(tmp_path, capsys):
    assert gpu_session.main(["--out", str(tmp_path), "--budget", "60", "--sections", "env"]) == 0
    assert "env" in capsys.readouterr().out
    assert "===== env: ok" in (tmp_path / "log.txt").read_text()


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        gpu_session.main(["--out", str(tmp_path), "--sections", "nope"])
