"""Where JCRA's end-to-end inference time goes: per-stage times, then torch.profiler's top ops.

    python -m bench.profile_end_to_end --provider jcra --batch 1 --steps 10 --json stages.json

Same model, inputs and post-processing as ``bench/test_bench_end_to_end.py``, except that the ``jcra``
provider compiles its stage modules (backbone, neck, encoder, decoder) each on its own rather than the
whole forward as one graph, so that hooks outside them can time each: CUDA events on a GPU, the host
clock on a CPU (synchronous there). Prints the median milliseconds of every stage, of the glue between
them ("other": token flattening, proposals and top-k, the keypoint heads' local maps), of the
post-processing and of the whole; ``--json`` writes them as a pytest-benchmark-shaped file that
``bench.report`` tabulates and plots (``stages.png``). Then the profiler's device total per batch
(well under the wall time means the GPU waits on the host: launch overhead or syncs) and the ops with
the most device and host time.

``--whole`` profiles the inference the crowd suite times instead (the forward compiled whole and, on a
GPU, replayed as a CUDA graph): no stage times, which hooks cannot take inside one graph, only its
device total against its wall time and its top ops.
"""

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from bench.profiling import CUDA, Stamp, benchmark_json, print_profile
from bench.report import TOTAL
from bench.test_bench_end_to_end import IMAGE, MODEL, STAGES, build, inference


def stage_times(model: torch.nn.Module, infer, steps: int) -> dict[str, float]:
    """Median ms over ``steps`` calls of ``infer`` of each stage module, "other", "post-processing"
    and "end to end" (hooks stamp the entry and exit of each stage and of the model)."""
    spans: dict[str, list[list[Stamp]]] = defaultdict(list)
    handles = []
    for name in (*STAGES, "model"):
        module = model if name == "model" else getattr(model, name)
        handles.append(
            module.register_forward_pre_hook(lambda m, a, name=name: spans[name].append([Stamp()]))
        )
        handles.append(
            module.register_forward_hook(lambda m, a, o, name=name: spans[name][-1].append(Stamp()))
        )
    for _ in range(steps):
        start = Stamp()
        infer()
        spans[TOTAL].append([start, Stamp()])
    for handle in handles:
        handle.remove()
    if CUDA:
        torch.cuda.synchronize()
    ms = {name: [a.ms_until(b) for a, b in pairs] for name, pairs in spans.items()}
    ms["other"] = [total - sum(ms[s][i] for s in STAGES) for i, total in enumerate(ms["model"])]
    ms["post-processing"] = [e2e - m for e2e, m in zip(ms[TOTAL], ms["model"], strict=True)]
    del ms["model"]
    return {name: statistics.median(values) for name, values in ms.items()}


def wall_ms(infer, steps: int) -> float:
    """Median ms of ``steps`` calls of ``infer`` (each ends in a host copy, so synchronised)."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        infer()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--provider", choices=["jcra", "jcra-reference"], default="jcra")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=25, help="ops listed per table")
    parser.add_argument("--json", type=Path, help="write the stage medians here")
    parser.add_argument("--whole", action="store_true", help="profile the inference the crowd suite times")
    args = parser.parse_args(argv)
    if args.whole:
        if args.json:
            parser.error("--json takes stage times, which --whole does not")
        infer = inference(args.provider, args.batch)
        for _ in range(3):  # compile, record the CUDA graph, warm up
            infer()
        print(f"{args.provider} batch {args.batch} {IMAGE}, the forward compiled whole:")
        print_profile(infer, args.steps, args.rows, wall_ms(infer, args.steps))
        return
    model = build(args.provider, compile_stages_apart=True)
    infer = inference(args.provider, args.batch, model)
    for _ in range(3):  # compile and warm up
        infer()
    times = stage_times(model, infer, args.steps)
    print(f"{args.provider} batch {args.batch} {IMAGE}, median ms of {args.steps} batches:")
    for stage, ms in times.items():
        print(f"  {stage:>16}: {ms:8.2f}")
    if args.json:
        info = {"model": MODEL, "batch": args.batch, "image": IMAGE, "source": "bench.profile_end_to_end"}
        group = f"{args.provider}, batch {args.batch}"
        args.json.write_text(json.dumps(benchmark_json(times, group, **info), indent=1))
    print_profile(infer, args.steps, args.rows, times[TOTAL])


if __name__ == "__main__":
    main()
