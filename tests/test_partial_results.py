"""bench.partial_results: a benchmark run killed before it ends keeps the timings it took."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import load_groups

ROOT = Path(__file__).resolve().parents[1]
SUITE = """
import os, signal, time

def test_first(benchmark):
    benchmark.group = "g"
    benchmark.extra_info["provider"] = "first"
    benchmark.pedantic(time.sleep, args=(0.001,), rounds=3)

def test_second(benchmark):
    benchmark.group = "g"
    benchmark.extra_info["provider"] = "second"
    benchmark.pedantic(time.sleep, args=(0.001,), rounds=3)

def test_third(benchmark):
    if os.environ.get("KILL_THIRD"):
        os.kill(os.getpid(), signal.SIGKILL)  # what a section's time limit does
    benchmark.group = "g"
    benchmark.extra_info["provider"] = "third"
    benchmark.pedantic(time.sleep, args=(0.001,), rounds=3)
"""


def _run(tmp_path: Path, kill: bool) -> subprocess.CompletedProcess:
    (tmp_path / "bench_suite.py").write_text(SUITE)
    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"KILL_THIRD": "1"} if kill else {})}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "bench.partial_results", "-p", "no:cacheprovider",
               str(tmp_path / "bench_suite.py"), f"--benchmark-json={tmp_path / 'out.json'}"]  # fmt: skip
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_killed_run_keeps_the_finished_benchmarks(tmp_path, capsys):
    result = _run(tmp_path, kill=True)
    assert result.returncode != 0
    partial = json.loads((tmp_path / "out.partial.json").read_text())
    assert [b["extra_info"]["provider"] for b in partial["benchmarks"]] == ["first", "second"]
    assert all(b["stats"]["rounds"] == 3 for b in partial["benchmarks"])
    out = tmp_path / "out.json"
    # pytest-benchmark 5.2 leaves a killed run's JSON empty; 5.3 writes none
    assert not out.exists() or out.read_text() == ""
    out.write_text("")
    _, groups = load_groups([out, tmp_path / "out.partial.json"])
    assert [row["provider"] for row in groups["g"]] == ["first", "second"]
    assert "empty or not JSON" in capsys.readouterr().out


def test_finished_run_leaves_only_its_json(tmp_path):
    result = _run(tmp_path, kill=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "out.partial.json").exists()
    _, groups = load_groups([tmp_path / "out.json"])
    assert sorted(row["provider"] for row in groups["g"]) == ["first", "second", "third"]


@pytest.mark.parametrize("section", ["train_step", "crowd"])
def test_gpu_session_suites_load_the_plugin(section, tmp_path):
    from bench.gpu_session import sections

    command, _ = sections(tmp_path)[section]
    assert command[command.index("-p") + 1] == "bench.partial_results"
