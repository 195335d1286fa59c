"""What the profiling scripts share: timestamps on the device's timeline, stage medians as benchmark
rows, and torch.profiler's tables.

``bench.profile_end_to_end`` (inference, stage by stage) and ``bench.profile_train_step`` (a training
step, phase by phase) use them; ``bench.report`` draws their rows as ``stages.png``.
"""

import time

import torch
import triton
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.report import STAGE_GROUP

CUDA = torch.cuda.is_available()

# the crowd suites' timed rounds on a GPU: enough for a median past the first rounds' drift (10 rounds
# of JCRA at batch 1 fell from 6.9 to 6.2 ms, f8d2247), and little time beside a section's compiles
CROWD_GPU_ROUNDS = 50

# the people each method keeps an image: JCRA's top-k and the bottom-up decoders' cap, one fixed setting
# as a deployment would set it, never a crowd's true size (the decoders' published COCO cap, 30, would
# cut the crowd of 50)
PEOPLE_KEPT = 100


def device_name() -> str:
    """What benchmark rows record as their ``device``: the GPU's name, or ``"cpu"``, by which
    ``bench.report`` tells a CPU run (the processor's name could pass for a GPU's; the CPU's model is
    in pytest-benchmark's ``machine_info``)."""
    return torch.cuda.get_device_name() if CUDA else "cpu"


def static_compile(fn):
    """``torch.compile(fn, dynamic=False)`` with Dynamo's caches cleared first: every compile of one
    function shares its cache, and past the recompile limit (8 graphs) a suite's later shapes would
    silently time eager code under the compiled provider's name; without ``dynamic=False`` a second
    shape recompiles with symbolic sizes."""
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


def keep_gpu_busy(seconds: float = 0.05) -> None:
    """Run bf16 matmuls on the GPU for ``seconds`` (nothing on a CPU), so a timing that follows
    starts at full clocks. A GPU left idle, as it is while a host-bound provider (scipy per image)
    runs, lowers its clocks, and a sub-millisecond suite, a few ms of work in all, could time the
    climb back (Triton's ``do_bench`` warms up for 25 ms for the same reason)."""
    if not CUDA:
        return
    a = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(8):
            a @ a
        torch.cuda.synchronize()


class Stamp:
    """A point on the device's timeline: a recorded CUDA event, or the host clock on a CPU."""

    def __init__(self):
        if CUDA:
            self.event = torch.cuda.Event(enable_timing=True)
            self.event.record()
        else:
            self.seconds = time.perf_counter()

    def ms_until(self, later: "Stamp") -> float:
        return self.event.elapsed_time(later.event) if CUDA else (later.seconds - self.seconds) * 1e3


def benchmark_json(times: dict[str, float], group: str, **info) -> dict:
    """Stage medians (ms) as pytest-benchmark rows of one group, a row per stage, for ``bench.report``.

    ``group`` follows :data:`STAGE_GROUP`; ``info`` (model, batch, image, source...) goes into every
    row's ``extra_info`` with the device and versions.
    """
    info = {**info, "device": device_name(), "torch": torch.__version__, "triton": triton.__version__}
    return {
        "machine_info": {},
        "benchmarks": [
            {
                "group": f"{STAGE_GROUP}, {group}",
                "name": f"stage[{stage}]",
                "stats": {"median": ms / 1e3},
                "extra_info": {**info, "provider": stage},
            }
            for stage, ms in times.items()
        ],
    }


def print_profile(run, steps: int, rows: int, wall_ms: float) -> None:
    """Profile ``steps`` calls of ``run`` and print the device total per call against ``wall_ms`` (a
    device total well under the wall time means the GPU waits on the host: launch overhead or syncs),
    then the ops with the most device time (on CUDA) and host time."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run()
    events = prof.key_averages()
    if CUDA:
        # Kernels' time is owned by the host ops that launched them (as in the profiler's own total).
        device_ms = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CPU)
        device_ms /= 1e3 * steps
        print(f"{device_ms:.1f} ms of device kernels a call, {wall_ms:.1f} ms wall (unprofiled median)")
        print(events.table(sort_by="self_device_time_total", row_limit=rows))
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows))
