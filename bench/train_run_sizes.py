"""Whether a training run's images/s follows its batches' sizes: ``gpu_session``'s ``train_run``
batches replayed on the CPU beside the images/s that runs' logs show for each step.

    python -m bench.train_run_sizes bench/results/2026-11-28-h200-*/log-call2.txt

The data order and every augmentation are seeded (:class:`train.distributed.ResumableSampler`), so
the replay gives the batches the GPU trained on, without a GPU or a model. Prints, per step, the
padded size, its megapixels and each log's images/s; then, per log, the correlation of images/s with
the megapixels, and the median images/s of the steps whose padded size the run meets for the first
time against the steps at a size it met before (eager PyTorch sets work up per shape, once). Since
2a7910a a run's own log shows each step's size; this replay reads logs from before.
"""

import argparse
import itertools
import re
import statistics
from pathlib import Path

from bench.gpu_session import train_run_overrides

STEP_POSTFIX = re.compile(r"(\d+)/(\d+) \[[^\]]*?img_s=([\d.]+)")


def logged_speeds(log: str) -> list[float]:
    """Each step's images/s as the progress bar showed it: the last postfix drawn at step n (the bar
    first redraws at n with step n - 1's postfix, then shows step n's)."""
    speeds: dict[int, float] = {}
    for step, _, speed in STEP_POSTFIX.findall(log):
        speeds[int(step)] = float(speed)
    return [speeds[step] for step in sorted(speeds)]


def train_run_config(num_workers: int):
    """The :class:`train.config.TrainConfig` that ``train_run`` trains with, its loader's processes
    ``num_workers`` (which do not change the batches)."""
    from hydra import compose, initialize_config_dir

    from train.config import config_from

    overrides = [o for o in train_run_overrides() if not o.startswith("train.num_workers=")]
    conf = Path(__file__).resolve().parents[1] / "train" / "conf"
    with initialize_config_dir(str(conf), version_base=None):
        composed = compose("config", overrides=[*overrides, f"train.num_workers={num_workers}"])
    return config_from(composed.train)


def replayed_sizes(cfg, steps: int) -> list[tuple[int, int, int]]:
    """(batch, H, W) of the first ``steps`` batches that ``train.train.train(cfg)`` trains on, as
    padded (one batch a step: ``cfg.grad_accum`` must be 1)."""
    from train.distributed import ResumableSampler, SeededSamples
    from train.train import build_dataset, data_loader, keypoint_layout

    if cfg.grad_accum != 1:
        raise ValueError(f"grad_accum must be 1 to replay a step as one batch, got {cfg.grad_accum}")
    train_set = build_dataset(
        cfg.train_ann, cfg.train_images, True, cfg, keypoint_layout(cfg.keypoint_layout)
    )
    sampler = ResumableSampler(len(train_set), seed=cfg.seed)
    loader = data_loader(SeededSamples(train_set), cfg, sampler=sampler)
    steps_per_epoch = len(sampler) // cfg.batch_size
    sizes, epoch = [], 0
    while len(sizes) < steps:
        sampler.set_epoch(epoch, start=0)
        for images, _, _ in itertools.islice(loader, min(steps_per_epoch, steps - len(sizes))):
            sizes.append((images.shape[0], *images.shape[-2:]))
        epoch += 1
    return sizes


def first_met(sizes: list[tuple[int, int, int]]) -> list[bool]:
    """Whether each step's padded (H, W) is one the run has not met before."""
    seen: set[tuple[int, int]] = set()
    new = []
    for _, h, w in sizes:
        new.append((h, w) not in seen)
        seen.add((h, w))
    return new


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("logs", nargs="+", type=Path, help="gpu_session logs holding a train_run section")
    parser.add_argument("--num-workers", type=int, default=2, help="loader processes of the replay")
    args = parser.parse_args(argv)
    speeds = {log.parent.name: logged_speeds(log.read_text()) for log in args.logs}
    steps = min(len(s) for s in speeds.values())
    if steps == 0:
        raise SystemExit(f"no train_run progress bar in {[str(log) for log in args.logs]}")
    sizes = replayed_sizes(train_run_config(args.num_workers), steps)
    megapixels = [b * h * w / 1e6 for b, h, w in sizes]
    print("step  padded size    Mpx  " + "  ".join(f"{run[:24]:>24}" for run in speeds))
    for i, ((_, h, w), mpx) in enumerate(zip(sizes, megapixels, strict=True)):
        row = "  ".join(f"{s[i]:>18.1f} img/s" for s in speeds.values())
        print(f"{i + 1:4d}  {h:5d}x{w:<5d}  {mpx:5.2f}  {row}")
    new = first_met(sizes)
    later = range(1, steps)  # the first step also starts CUDA and warms everything up
    for run, s in speeds.items():
        r = statistics.correlation([s[i] for i in later], [megapixels[i] for i in later])
        first = [s[i] for i in later if new[i]]
        again = [s[i] for i in later if not new[i]]
        print(
            f"{run}: steps 2-{steps}: images/s against megapixels r = {r:.2f}; "
            f"{len(first)} steps at a size met for the first time, median {statistics.median(first):.1f} "
            f"images/s; {len(again)} at a size met before, median {statistics.median(again):.1f}"
        )


if __name__ == "__main__":
    main()
