"""Where a JCRA training step's time goes: phase by phase for each provider, then torch.profiler's
top ops.

    python -m bench.profile_train_step --providers reference fused+compile-transformer --json phases.json

The step of ``bench/test_bench_train_step.py`` (same model, batch, targets and optimizer), stamped as
each phase ends (CUDA events on a GPU, the host clock on a CPU): forward, matching (both matcher
calls: decoder stages and encoder proposals), losses (the rest of the criterion), backward, optimizer.
The providers run one after the other in this process, so their phases compare side by side: which
phase the fused kernels and compilation shorten, and which one holds the rest. Prints the median
milliseconds of each phase and of the whole step; ``--json`` writes them as benchmark rows that
``bench.report`` tabulates and draws (``stages.png``). Then, per provider, the profiler's device total
per step and the ops with the most device and host time.
"""

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from bench.profiling import Stamp, benchmark_json, print_profile
from bench.report import TOTAL
from bench.test_bench_train_step import BATCH, IMAGE, MODEL, PROVIDERS, forget_earlier_providers, make_step

PHASES = ("forward", "matching", "losses", "backward", "optimizer")


class PhaseClock:
    """Stamps each phase's end; ``medians()`` gives the median ms per phase over the recorded steps
    (a phase met twice in a step, as matching is, counts its summed time)."""

    def __init__(self):
        self.recording = False
        self.steps: list[list[tuple[str, Stamp]]] = []

    def start_step(self) -> None:
        self.steps.append([(TOTAL, Stamp())])

    def __call__(self, phase: str) -> None:
        if self.recording:
            self.steps[-1].append((phase, Stamp()))

    def medians(self) -> dict[str, float]:
        per_phase: dict[str, list[float]] = defaultdict(list)
        for stamps in self.steps:
            ms: dict[str, float] = defaultdict(float)
            for (_, before), (phase, after) in zip(stamps, stamps[1:], strict=False):
                ms[phase] += before.ms_until(after)
            ms[TOTAL] = stamps[0][1].ms_until(stamps[-1][1])
            for phase, value in ms.items():
                per_phase[phase].append(value)
        return {phase: statistics.median(per_phase[phase]) for phase in (*PHASES, TOTAL)}


def phase_times(provider: str, steps: int):
    """(median ms per phase over ``steps`` steps after two of warm-up and compilation, the step)."""
    clock = PhaseClock()
    forget_earlier_providers()
    step = make_step(provider, mark=clock)
    for _ in range(2):
        step()
    clock.recording = True
    for _ in range(steps):
        clock.start_step()
        step()
    clock.recording = False
    return clock.medians(), step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--providers", nargs="+", choices=list(PROVIDERS), default=["reference", "fused+compile-transformer"]
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=25, help="ops listed per table")
    parser.add_argument("--json", type=Path, help="write the phase medians here")
    args = parser.parse_args(argv)
    rows = []
    for provider in args.providers:
        times, step = phase_times(provider, args.steps)
        print(f"train step, {provider}, {MODEL} batch {BATCH} {IMAGE}, median ms of {args.steps} steps:")
        for phase, ms in times.items():
            print(f"  {phase:>12}: {ms:8.2f}")
        info = {"model": MODEL, "batch": BATCH, "image": IMAGE, "source": "bench.profile_train_step"}
        rows += benchmark_json(times, f"train step {provider}, batch {BATCH}", **info)["benchmarks"]
        if args.json:  # after each provider, so a run stopped at its time limit keeps what it timed
            args.json.write_text(json.dumps({"machine_info": {}, "benchmarks": rows}, indent=1))
        print_profile(step, args.steps, args.rows, times[TOTAL])


if __name__ == "__main__":
    main()
