"""bench.gpu_session: every section names files and tests that exist, a section's ``-k`` picks the tests
it means, and a session runs on the CPU.

A renamed test or suite would otherwise surface only on a lent GPU, in its few minutes.
"""

import ast
import signal
import subprocess
import sys
import time
from collections import defaultdict
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
        "guards",
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
    # the learning-rate drop falls inside the run (the recipe's epoch 80 would only warn)
    assert 0 < int(overrides["train.lr_drop_epochs"].strip("[]")) < int(overrides["train.epochs"])


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


def test_suites_write_a_json_each_and_the_msda_sections_select_theirs(tmp_path):
    table = gpu_session.sections(tmp_path)
    jsons = {}
    for name, (command, _) in table.items():
        jsons[name] = [arg for arg in command if arg.startswith("--benchmark-json=")]
    assert all(
        paths == [f"--benchmark-json={tmp_path / name}.json"] for name, paths in jsons.items() if paths
    )
    assert {"msda", "msda_more", "oks", "matcher", "crowd", "crowd_b1", "train_step"} <= {
        name for name, paths in jsons.items() if paths
    }
    for name, select in (("msda", gpu_session.MSDA_HEADLINE), ("msda_more", gpu_session.MSDA_MORE)):
        command = table[name][0]
        assert command[command.index("-k") + 1] == select


# pytest run as on a GPU: the suites parametrise by torch.cuda.is_available() (batch 8 and 50 people
# exist only there), so collection pretends it is; nothing is run
COLLECT_AS_ON_A_GPU = (
    "import sys, pytest, torch; torch.cuda.is_available = lambda: True; "
    "sys.exit(pytest.main([*sys.argv[1:], '--collect-only']))"
)
SELECTED = ("msda", "msda_more", "matcher", "crowd", "crowd_b1", "freezing")
"""The sections that pick tests with ``-k``, each checked below."""


@pytest.fixture(scope="module")
def selections(tmp_path_factory) -> dict[str, dict[str, set[str]]]:
    """{section: {test function: its parameter ids}} that each selecting section's ``-k`` collects, all
    sections collected at once in subprocesses (the venv's Python)."""
    table = gpu_session.sections(tmp_path_factory.mktemp("session"))
    assert all(table[name][0][:2] == ["-m", "pytest"] for name in SELECTED)
    runs = {
        name: subprocess.Popen(
            [sys.executable, "-c", COLLECT_AS_ON_A_GPU, *table[name][0][2:]],  # after "-m pytest"
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in SELECTED
    }
    collected = {}
    for name, run in runs.items():
        out = run.communicate(timeout=120)[0]
        assert run.returncode == 0, f"section {name} does not collect:\n{out}"
        tests = defaultdict(set)
        for line in out.splitlines():
            if "::" in line:
                function, _, params = line.split("::")[1].partition("[")
                tests[function].add(params.rstrip("]"))
        collected[name] = dict(tests)
    return collected


def test_every_selecting_section_is_checked(tmp_path):
    table = gpu_session.sections(tmp_path)
    assert {name for name, (command, _) in table.items() if "-k" in command} == set(SELECTED)


def test_crowd_b1_selects_batch_one_and_every_postprocessing(selections):
    """Every network and end-to-end test at batch 1 and none at 8, and the post-processing at every
    crowd size (its tests have no batch), for each method."""
    tests = selections["crowd_b1"]
    assert set(tests) == {"test_bench_postprocess", "test_bench_network", "test_end_to_end"}
    methods = {"associative_embedding", "dekr", "associative_embedding+flip", "dekr+flip"}
    assert tests["test_bench_network"] == {f"{method}-b1" for method in methods}
    assert tests["test_end_to_end"] == {"jcra-b1", "jcra-reference-b1"}
    assert {params.rsplit("-", 1)[0] for params in tests["test_bench_postprocess"]} == methods
    assert {params.rsplit("-", 1)[1] for params in tests["test_bench_postprocess"]} >= {"1", "50"}


def test_crowd_runs_everything_but_the_freezing_experiment(selections):
    """Every method's network at batch 1 and 8 and JCRA with its reference; freezing has its own section."""
    tests = selections["crowd"]
    assert set(tests) == {"test_bench_postprocess", "test_bench_network", "test_end_to_end"}
    assert tests["test_end_to_end"] == {f"{p}-b{b}" for p in ("jcra", "jcra-reference") for b in (1, 8)}
    assert len(tests["test_bench_network"]) == 8


def test_freezing_times_jcra_with_and_without_it(selections):
    assert selections["freezing"] == {
        "test_end_to_end": {f"{p}-b{b}" for p in ("jcra", "jcra+freezing") for b in (1, 8)}
    }


def test_msda_sections_select_their_groups_once(selections):
    """msda: the encoder at batch 2 in bf16 (forward, forward+backward) and fp32 forward+backward, for
    each provider; msda_more: bf16 forward+backward at every other shape; no test in both."""
    headline = selections["msda"]["test_ms_deform_attn"]
    more = selections["msda_more"]["test_ms_deform_attn"]
    assert set(selections["msda"]) == set(selections["msda_more"]) == {"test_ms_deform_attn"}
    providers = {"triton", "reference", "reference+compile"}
    kinds = {"forward-bf16", "forward+backward-bf16", "forward+backward-fp32"}
    assert headline == {f"{p}-encoder-b2-{kind}" for p in providers for kind in kinds}
    assert more and not headline & more
    assert all(p.endswith("-forward+backward-bf16") and "-encoder-b2-" not in p for p in more)
    assert {p.split("-", 1)[1].removesuffix("-forward+backward-bf16") for p in more} >= {
        "clustered-b2",
        "encoder-b8",
        "decoder-q300",
        "decoder-q1800",
    }


def test_matcher_section_selects_the_matchers_only(selections):
    tests = selections["matcher"]
    assert set(tests) == {"test_bench_matcher", "test_bench_matcher_host_time"}
    assert {params.split("-")[0] for params in tests["test_bench_matcher"]} == {
        "padded",
        "batched",
        "per_image",
    }


def _stub_sections(monkeypatch, table: dict) -> None:
    monkeypatch.setattr(gpu_session, "sections", lambda out: table)


def test_a_failing_section_is_reported_and_fails_the_session(tmp_path, monkeypatch, capsys):
    _stub_sections(
        monkeypatch, {"ok": (["-c", "pass"], 60), "fails": (["-c", "import sys; sys.exit(3)"], 60)}
    )
    assert gpu_session.main(["--out", str(tmp_path), "--sections", "ok", "fails"]) == 1
    log = (tmp_path / "log.txt").read_text()
    assert "===== ok: ok" in log and "===== fails: exit 3" in log
    assert "exit 3" in capsys.readouterr().out


def test_a_second_call_adds_to_the_log(tmp_path, monkeypatch):
    """Two device calls into one folder: the first call's log stays."""
    _stub_sections(monkeypatch, {"ok": (["-c", "pass"], 60)})
    for _ in range(2):
        assert gpu_session.main(["--out", str(tmp_path), "--sections", "ok"]) == 0
    assert (tmp_path / "log.txt").read_text().count("===== ok: ok") == 2


def test_a_section_left_under_ten_seconds_is_skipped(tmp_path, monkeypatch, capsys):
    """Too little time to start a suite, let alone time it: skipped, and the session reports it."""
    _stub_sections(monkeypatch, {"ok": (["-c", "pass"], 60)})
    assert gpu_session.main(["--out", str(tmp_path), "--budget", "14", "--sections", "ok"]) == 1
    assert "skipped: budget spent" in capsys.readouterr().out


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_budget_ends_a_section_with_its_children_and_skips_the_rest(tmp_path, monkeypatch, capsys):
    """A section is cut at the session's budget (not at its own longer limit), its whole process group
    goes (compile workers included), and sections with no time left are reported skipped."""
    pid_file = tmp_path / "child.pid"
    child = "import time; time.sleep(120)"
    sleeper = (
        f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {child!r}]); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(120)"
    )
    _stub_sections(monkeypatch, {"sleeps": (["-c", sleeper], 60), "ok": (["-c", "pass"], 60)})
    start = time.monotonic()
    assert gpu_session.main(["--out", str(tmp_path), "--budget", "16", "--sections", "sleeps", "ok"]) == 1
    assert time.monotonic() - start < 20
    out = capsys.readouterr().out
    assert "timed out" in out and "skipped: budget spent" in out
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)


def test_crowd_sections_time_jcra_before_the_baselines(tmp_path):
    """A crowd section stopped at its limit keeps what it timed: without JCRA's rows no ratio exists."""
    table = gpu_session.sections(tmp_path)
    for name in ("crowd", "crowd_b1"):
        files = [arg for arg in table[name][0] if arg.startswith("bench/")]
        assert files == ["bench/test_bench_end_to_end.py", "bench/test_bench_bottom_up.py"], name


def test_select_narrows_a_benchmark_section(tmp_path, monkeypatch):
    assert gpu_session.narrowed(["-m", "pytest", "a.py"], "b1") == ["-m", "pytest", "a.py", "-k", "b1"]
    assert gpu_session.narrowed(["-m", "pytest", "-k", "x or y", "a.py"], "not flip") == [
        "-m", "pytest", "-k", "(x or y) and (not flip)", "a.py"
    ]  # fmt: skip
    for bad in ("env=b1", "crowd", "crowd=", "nope=b1", "crowd=b1"):  # crowd is not among --sections
        with pytest.raises(SystemExit):
            gpu_session.main(["--out", str(tmp_path), "--sections", "env", "--select", bad])
    json_file = tmp_path / "suite.json"
    _stub_sections(
        monkeypatch, {"suite": (["-c", "import sys; print(sys.argv)", f"--benchmark-json={json_file}"], 60)}
    )
    handler = signal.getsignal(signal.SIGTERM)
    assert gpu_session.main(["--out", str(tmp_path), "--sections", "suite", "--select", "suite=b1"]) == 0
    assert signal.getsignal(signal.SIGTERM) is handler  # the section's handler goes with the section
    assert "'--benchmark-json=" in (tmp_path / "log.txt").read_text()
    assert "'-k', 'b1'" in (tmp_path / "log.txt").read_text()


def test_a_rerun_sets_the_earlier_json_aside(tmp_path, monkeypatch):
    """pytest-benchmark empties its JSON file as it starts: a rerun that then fails lost the first run's."""
    json_file = tmp_path / "suite.json"
    json_file.write_text('{"benchmarks": []}')
    _stub_sections(monkeypatch, {"suite": (["-c", "pass", f"--benchmark-json={json_file}"], 60)})
    assert gpu_session.main(["--out", str(tmp_path), "--sections", "suite"]) == 0
    assert (tmp_path / "suite.json.prev").read_text() == '{"benchmarks": []}'


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_a_killed_session_takes_its_running_section_with_it(tmp_path, signal_name):
    """The device call's time limit may kill this script: the section it runs (a session of its own,
    which a kill of the script's group misses) must not go on holding the GPU."""
    pid_file = tmp_path / "section.pid"
    section = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    script = (
        "import sys; from bench import gpu_session; "
        f"gpu_session.sections = lambda out: {{'sleeps': (['-c', {section!r}], 60)}}; "
        f"sys.exit(gpu_session.main(['--out', {str(tmp_path)!r}, '--sections', 'sleeps']))"
    )
    session = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    section_pid = int(pid_file.read_text())
    session.send_signal(getattr(signal, signal_name))
    session.wait(timeout=10)
    deadline = time.monotonic() + 5
    while _alive(section_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(section_pid)
