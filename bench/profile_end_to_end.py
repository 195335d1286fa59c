"""Where JCRA's end-to-end inference time goes: torch.profiler over a few batches, top ops printed.

    python -m bench.profile_end_to_end --provider jcra-reference --batch 1 --steps 5

Same model, inputs and post-processing as ``bench/test_bench_end_to_end.py``. Prints the wall time
per batch without the profiler, the device time the profiler saw per batch (busy time well under
wall time means the GPU waits on the host: launch overhead or syncs), and the ops with the most
device and host time.
"""

import argparse
import time

from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.test_bench_end_to_end import CUDA, IMAGE, inference


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--provider", choices=["jcra", "jcra-reference"], default="jcra-reference")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=25, help="ops listed per table")
    args = parser.parse_args(argv)
    infer = inference(args.provider, args.batch)
    for _ in range(3):  # compile and warm up
        infer()
    start = time.perf_counter()
    for _ in range(args.steps):
        infer()  # ends in a host copy: synchronised
    wall_ms = (time.perf_counter() - start) * 1e3 / args.steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            infer()
    events = prof.key_averages()
    # Kernels' time is owned by the host ops that launched them (as in the profiler's own total).
    device_ms = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CPU)
    device_ms /= 1e3 * args.steps
    print(f"{args.provider} batch {args.batch} {IMAGE}: {wall_ms:.1f} ms wall a batch, ")
    print(f"{device_ms:.1f} ms of device kernels a batch ({device_ms / wall_ms:.0%} busy)")
    if CUDA:
        print(events.table(sort_by="self_device_time_total", row_limit=args.rows))
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
