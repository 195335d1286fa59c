"""Where the whole matcher's time goes: wall time against device time, then torch.profiler's top ops.

    python -m bench.profile_matcher --gs 5 20 --calls 20

The matcher providers ``padded`` (what the training step runs) and ``batched`` (the per-image
interface) of ``bench/test_bench_oks.py`` (seven stages of B = 8 images, Q = 300, host
targets as the data pipeline gives them, cost kernel and Triton solver on a GPU). For each G: the
median wall time of a synchronised call, then the profiler's device-kernel total per call against it
(a total well under the wall time means the GPU waits on the host: Python, launches, copies) and the
ops with the most device and host time. Issue 7 wants the call under 1 ms.
"""

import argparse
import itertools
import statistics
import time

from bench.profiling import keep_gpu_busy, print_profile
from bench.test_bench_oks import (
    DEVICE,
    MATCHER_PROVIDERS,
    STAGES,
    B,
    Q,
    _matcher_inputs,
    _sync,
    matcher_provider,
)
from kernels.oks import COCO_SIGMAS


def wall_ms(run, calls: int) -> float:
    """Median milliseconds of ``calls`` synchronised calls of ``run``, after two warm-up calls."""
    times = []
    keep_gpu_busy()
    for i in range(calls + 2):
        start = time.perf_counter()
        run()
        _sync()
        if i >= 2:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gs", type=int, nargs="+", default=[5, 20], help="people per image")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--rows", type=int, default=15, help="ops listed per table")
    batched = list(MATCHER_PROVIDERS[:2])  # per_image is scipy image by image: no device profile to read
    parser.add_argument("--providers", nargs="+", default=batched, choices=batched)
    args = parser.parse_args(argv)
    for provider, g in itertools.product(args.providers, args.gs):
        matcher, inputs = matcher_provider(provider, COCO_SIGMAS.to(DEVICE)), _matcher_inputs(g)

        def run(matcher=matcher, inputs=inputs):
            return matcher(*inputs)

        ms = wall_ms(run, args.calls)
        print(
            f"matcher ({provider}) S={STAGES} B={B} Q={Q} G={g} on {DEVICE}: "
            f"{ms:.3f} ms wall (median of {args.calls})"
        )
        print_profile(run, args.calls, args.rows, ms)


if __name__ == "__main__":
    main()
