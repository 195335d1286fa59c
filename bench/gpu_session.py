"""Run the GPU checks and benchmark suites of one device session, each section within a time limit.

    python -m bench.gpu_session --out DIR --budget 300 --sections env tests msda oks assignment

A lent GPU comes for minutes, so one call runs everything: each section is a subprocess with its own
limit, never past what is left of ``--budget``; a section that fails or runs out of time is logged and
the next one runs. Benchmark suites write pytest-benchmark JSON to ``DIR/<section>.json``; all output
goes to ``DIR/log.txt``; the last lines printed are a table of sections, status and seconds. Then,
on any machine: ``python -m bench.report DIR/*.json --out bench/results/<run-name>``.

The lent machines have no network, no ``../shared`` and lack some of our dependencies (pycocotools,
hydra-core, omegaconf, antlr4-python3-runtime; torch-linear-assignment for the peer provider).
``make gpu-carry`` puts their py3.12 wheels in the git-ignored ``.whl/`` and the shared data the
suites read in ``.gpu_shared/``; carry both and start the call with::

    pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
    test -e ../shared || { mkdir ../shared && cp -r .gpu_shared/data ../shared/; }

Ratios are only taken within one section (one process, one GPU): a kernel against its baseline in
``msda``, ``oks`` and ``assignment``, JCRA against the bottom-up baselines in ``crowd`` (the bottom-up
suite and the end-to-end suite run back to back in one process).
"""

import argparse
import contextlib
import functools
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

# Each torch.compile of the reference costs ~20 s of inductor codegen, and pytest-benchmark writes its
# JSON only at the end, so the ms_deform_attn suite runs as two sections of the groups the targets
# name: the encoder at batch 2 (bf16 forward and forward+backward, fp32 forward+backward) first, then
# bf16 forward+backward at the other shapes.
MSDA_HEADLINE = "encoder-b2 and (bf16 or forward+backward)"
MSDA_MORE = "bf16 and forward+backward and not encoder-b2"

# The model and inference tests that need CUDA (the rest of tests/model and tests/train runs on the
# CPU machine)
MODEL_CUDA_TESTS = [
    "tests/model/test_model.py::test_training_step_on_cuda_never_synchronises_with_the_host",
    "tests/model/test_model.py::test_cuda_graph_forward_matches_eager",
    "tests/train/test_inference.py::test_a_compiled_estimator_on_a_gpu_finds_eagers_people",
    "tests/model/test_model.py::test_cuda_graph_training_steps_match_eager",
]


def train_run_overrides() -> list[str]:
    """A short GPU training run of the COCO R-50 recipe (bf16, fused kernels, PETR's multi-scale 400-1400) on
    ``../shared/data/coco-mini`` (80 images, evaluated on the same), random weights in the ImageNet
    layout (no network there). Eager, since the ``train_step`` section times the compiled step. 40
    steps: 36 of the images hold a person, 18 steps an epoch at batch 2, so 3 epochs (the third 4
    steps long), the learning rate dropped for the last. The checkpoint goes to a new folder under
    /tmp (a run refuses an out_dir that holds one), not back with the results."""
    mini = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"
    ann, images = mini / "annotations" / "person_keypoints_train2017.json", mini / "train2017"
    return [
        "experiment=coco_r50",
        "train.model_overrides.pretrained=false",
        "+train.model_overrides.frozen_backbone=true",
        *(f"train.{split}_ann={ann}" for split in ("train", "val")),
        *(f"train.{split}_images={images}" for split in ("train", "val")),
        "train.epochs=3",
        "train.lr_drop_epochs=[2]",  # the recipe's drop at epoch 80 of 100, scaled: the run takes it
        "train.max_steps=40",
        "train.batch_size=2",
        "train.num_workers=8",
        "train.log_every=10",
        f"train.out_dir=/tmp/jcra_train_run_{time.time_ns()}",
    ]


ENV = (
    "import torch, triton, scipy, platform; "
    "print('gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None); "
    "print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, "
    "'scipy', scipy.__version__, 'python', platform.python_version())"
)


def sections(out: Path) -> dict[str, tuple[list[str], int]]:
    """name: (command after the Python executable, default limit in seconds)."""
    xdist = ["-n", "8"] if importlib.util.find_spec("xdist") else []

    def suite(*files: str, name: str, select: str | None = None) -> list[str]:
        extra = ["-k", select] if select else []
        # partial_results: a section stopped at its limit keeps the timings it took
        return [
            "-m",
            "pytest",
            "-q",
            "-p",
            "bench.partial_results",
            *files,
            *extra,
            f"--benchmark-json={out / name}.json",
        ]

    msda = "bench/test_bench_ms_deform_attn.py"
    # JCRA first: a section stopped at its limit keeps JCRA's rows, without which no crowd ratio exists
    crowd = ("bench/test_bench_end_to_end.py", "bench/test_bench_bottom_up.py")

    return {
        "env": (["-c", ENV], 60),
        "tests": (
            [
                "-m",
                "pytest",
                "-q",
                *xdist,
                "tests/kernels",
                "tests/test_matcher.py",
                "tests/test_targets.py",
                *MODEL_CUDA_TESTS,
            ],
            240,  # 72 s in 49d74a0's run, before the compiled estimator's and the training CUDA graphs
        ),
        "msda": (suite(msda, name="msda", select=MSDA_HEADLINE), 150),
        "msda_more": (suite(msda, name="msda_more", select=MSDA_MORE), 150),
        "oks": (suite("bench/test_bench_oks.py", name="oks"), 120),
        "matcher": (suite("bench/test_bench_oks.py", name="matcher", select="matcher"), 90),
        "assignment": (suite("bench/test_bench_linear_assignment.py", name="assignment"), 90),
        # Dynamo's host time a call, with and without its module guards (two traces of JCRA-R50)
        "guards": (suite("bench/test_bench_guards.py", name="guards"), 90),
        "crowd": (
            suite(*crowd, name="crowd", select="not freezing"),
            480,  # ten whole-network compiles: JCRA, the baselines and their flip tests, batch 1 and 8
        ),
        # batch 1 alone, for a short session: five compiles, the methods still side by side
        "crowd_b1": (suite(*crowd, name="crowd_b1", select="(postprocess or b1) and not freezing"), 300),
        # JCRA compiled with and without Inductor's freezing, side by side (four compiles)
        "freezing": (suite(crowd[0], name="freezing", select="jcra and not reference"), 300),
        # five providers, four compiled: 278 s for the first three in 49d74a0's run, the fourth another
        # whole-forward compile, the fifth one with symbolic sizes (never timed: select it in a call of
        # its own, --select train_step=dynamic, or after the others); the reference and the
        # transformer compile alone: 150 s (f8d2247)
        "train_step": (suite("bench/test_bench_train_step.py", name="train_step"), 560),
        "train_run": (["-m", "train.train", *train_run_overrides()], 150),
        "profile": (
            ["-m", "bench.profile_end_to_end", "--provider", "jcra", "--json", str(out / "stages.json")],
            180,
        ),
        # the inference the crowd suite times (one CUDA graph): its device total against its wall time
        "profile_whole": (["-m", "bench.profile_end_to_end", "--provider", "jcra", "--whole"], 120),
        # the reference and the trainer's compile (transformer) phase by phase, then their top kernels
        "train_profile": (["-m", "bench.profile_train_step", "--json", str(out / "train_phases.json")], 240),
        # the whole matcher's wall time against its device time, and its top ops
        "matcher_profile": (["-m", "bench.profile_matcher"], 60),
    }


def narrowed(command: list[str], expr: str) -> list[str]:
    """A pytest ``command`` with ``-k expr`` and-ed with the ``-k`` it has (pytest keeps only the last)."""
    if "-k" not in command:
        return [*command, "-k", expr]
    at = command.index("-k") + 1
    return [*command[:at], f"({command[at]}) and ({expr})", *command[at + 1 :]]


def _set_aside(command: list[str]) -> None:
    """pytest-benchmark truncates its ``--benchmark-json`` file when it starts: an earlier run's file
    of the same section is renamed ``<name>.json.prev`` first, so a rerun that fails keeps it."""
    for arg in command:
        if arg.startswith("--benchmark-json="):
            path = Path(arg.partition("=")[2])
            if path.is_file() and path.stat().st_size:
                path.replace(path.with_name(path.name + ".prev"))


def _die_with_parent() -> None:
    """In a section's process before it runs: the kernel kills it when this script dies (a SIGKILL at
    the device call's limit would otherwise leave it holding the GPU, timing into the next call)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _end_section_and_exit(pid: int, *_) -> None:
    with contextlib.suppress(ProcessLookupError):  # the section may just have ended
        os.killpg(pid, signal.SIGKILL)
    sys.exit(143)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for log.txt and the JSON files")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for all sections together")
    parser.add_argument("--sections", nargs="+", default=["env", "tests", "assignment", "oks", "msda"])
    parser.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="SECTION=EXPR",
        help="narrow a benchmark section with a pytest -k expression (and-ed with its own), e.g. "
        "crowd='b1 and not flip'; repeatable",
    )
    args = parser.parse_args(argv)
    table = sections(args.out)
    unknown = [name for name in args.sections if name not in table]
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {list(table)}")
    for choice in args.select:
        name, _, expr = choice.partition("=")
        if name not in args.sections or "--benchmark-json" not in " ".join(table[name][0]) or not expr:
            parser.error(f"--select {choice!r}: expected SECTION=EXPR for a benchmark section of --sections")
        table[name] = (narrowed(table[name][0], expr), table[name][1])
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    results = []
    with open(args.out / "log.txt", "a") as log:
        for name in args.sections:
            command, limit = table[name]
            limit = min(limit, deadline - time.monotonic() - 5)
            if limit < 10:
                results.append((name, "skipped: budget spent", 0.0))
                continue
            log.write(f"\n===== {name}: {' '.join(command)} (limit {limit:.0f} s)\n")
            log.flush()
            start = time.monotonic()
            _set_aside(command)
            # A session of its own, so a timeout also ends the section's children (compile workers).
            proc = subprocess.Popen(
                [sys.executable, *command],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
            # a SIGTERM to this script (a time limit) ends the section's whole session, then this script
            # (handlers can only be set from the main thread; elsewhere PDEATHSIG alone covers it)
            main_thread = threading.current_thread() is threading.main_thread()
            if main_thread:
                before = signal.signal(signal.SIGTERM, functools.partial(_end_section_and_exit, proc.pid))
            try:
                rc = proc.wait(timeout=limit)
                status = "ok" if rc == 0 else f"exit {rc}"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                status = "timed out"
            finally:
                if main_thread:  # None: a handler set outside Python, which only the default can stand for
                    signal.signal(signal.SIGTERM, signal.SIG_DFL if before is None else before)
            results.append((name, status, time.monotonic() - start))
            log.write(f"===== {name}: {status} after {results[-1][2]:.0f} s\n")
            log.flush()
    for name, status, seconds in results:
        print(f"{name:12s} {status:24s} {seconds:6.0f} s")
    return 0 if all(status == "ok" for _, status, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
