"""Whether a training run's images/s follows its batches' sizes: ``gpu_session``'s ``train_run``
batches replayed on the CPU beside the images/s that runs' logs show for each step.

    python -m bench.train_run_sizes bench/results/2026-11-28-h200-*/log-call2.txt

The data order and every augmentation are seeded (:class:`train.distributed.ResumableSampler`), so
the replay gives the batches the GPU trained on, without a GPU (the model only on the meta device, for
its level sizes). Prints, per step, the padded size, its megapixels, how many Triton compiles the
step's kernel launches would bring with the kernels of this tree (:func:`new_compiles`) and each log's
images/s; then, per log, the correlation of images/s with the megapixels, and the median images/s of
the steps whose padded size the run meets for the first time against the steps at a size it met
before (eager PyTorch sets work up per shape, once), and of the steps with a new Triton compile
against the others. Since 2a7910a a run's own log shows each step's size; this replay reads logs from
before.
"""

import argparse
import itertools
import os
import re
import statistics
from pathlib import Path

import torch

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


def replayed_batches(cfg, steps: int) -> list[tuple[tuple[int, ...], list[dict]]]:
    """(images' shape (B, 3, H, W) as padded, targets) of the first ``steps`` batches that
    ``train.train.train(cfg)`` trains on (one batch a step: ``cfg.grad_accum`` must be 1)."""
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
    batches, epoch = [], 0
    while len(batches) < steps:
        sampler.set_epoch(epoch, start=0)
        for images, _, targets in itertools.islice(loader, min(steps_per_epoch, steps - len(batches))):
            batches.append((tuple(images.shape), targets))
        epoch += 1
    return batches


def replayed_sizes(cfg, steps: int) -> list[tuple[int, int, int]]:
    """(batch, H, W) of the first ``steps`` batches that ``train.train.train(cfg)`` trains on, as
    padded."""
    return _sizes(replayed_batches(cfg, steps))


def _sizes(batches: list[tuple[tuple[int, ...], list[dict]]]) -> list[tuple[int, int, int]]:
    return [(b, h, w) for (b, _, h, w), _ in batches]


def new_compiles(cfg, batches: list[tuple[tuple[int, ...], list[dict]]]) -> list[int]:
    """Per batch, the Triton specialisations its training step launches that no earlier step did: on
    a GPU, the step's JIT compiles. Needs ``TRITON_INTERPRET=1`` before ``kernels`` is imported.

    Replays, without running them (:func:`bench.triton_specialisations.recorded_launches`), the
    launches whose arguments follow the batch: deformable attention forward and backward, a query a
    token in the encoder and ``num_queries`` in the decoder, at the level sizes the model's backbone and
    neck give (on the meta device); and the matcher's cost and assignment for the decoder layers and
    for the proposals (one a token). The attention's inputs are fp32 whatever the run's precision: a
    run's dtypes are fixed, so they change which kernels its first step compiles, not how many.
    """
    from bench.triton_specialisations import recorded_launches
    from jcra.model import build_model
    from jcra.targets import pad_targets
    from kernels.dispatch import INTERPRET
    from kernels.ms_deform_attn import ms_deform_attn
    from train.train import build_criterion, keypoint_layout

    if not INTERPRET:
        raise RuntimeError("new_compiles counts launches under Triton's interpreter: set TRITON_INTERPRET=1")
    with torch.device("meta"):
        model = build_model(cfg.model, **{**cfg.model_overrides, "pretrained": False})
    matcher = build_criterion(cfg, keypoint_layout(cfg.keypoint_layout)).matcher
    matcher.solver = "triton"  # as on a GPU
    q, k, stages = model.num_queries, model.num_keypoints, len(model.decoder.layers)
    seen: set[tuple[str, str]] = set()
    counts = []
    for shape, targets in batches:
        b = shape[0]
        levels = _level_sizes(model, shape)
        tokens = sum(rows * cols for rows, cols in levels)
        padded = pad_targets(targets, k, "cpu").normalised()
        with recorded_launches(execute=False) as launches:
            for attn, queries in (
                (model.encoder.layers[0].attn, tokens),
                (model.decoder.layers[0].cross_attn, q),
            ):
                heads, points = attn.num_heads, attn.num_points
                value = torch.empty(b, tokens, heads, attn.embed_dim // heads, requires_grad=True)
                loc = torch.empty(b, queries, heads, len(levels), points, 2, requires_grad=True)
                weights = torch.empty(b, queries, heads, len(levels), points, requires_grad=True)
                ms_deform_attn(value, levels, None, loc, weights).sum().backward()
            for s, queries in ((stages, q), (1, tokens)):
                matcher.match(torch.zeros(s, b, queries), torch.zeros(s, b, queries, k, 2), padded)
        counts.append(len(set(launches) - seen))
        seen.update(launches)
    return counts


def _level_sizes(model, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """(H, W) of each level the model attends over for padded images of ``shape``, from its (meta)
    backbone and neck."""
    images = torch.empty(shape, device="meta")
    _, *feats = model.backbone(images, None)
    maps = model.neck(feats, model._valid_sizes(images, None))[0]
    return [tuple(m.shape[-2:]) for m in maps]


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
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before kernels is imported: new_compiles counts
    speeds = {log.parent.name: logged_speeds(log.read_text()) for log in args.logs}
    steps = min(len(s) for s in speeds.values())
    if steps == 0:
        raise SystemExit(f"no train_run progress bar in {[str(log) for log in args.logs]}")
    cfg = train_run_config(args.num_workers)
    batches = replayed_batches(cfg, steps)
    sizes = _sizes(batches)
    compiled = new_compiles(cfg, batches)
    megapixels = [b * h * w / 1e6 for b, h, w in sizes]
    print("step  padded size    Mpx  compiles  " + "  ".join(f"{run[:24]:>24}" for run in speeds))
    for i, ((_, h, w), mpx) in enumerate(zip(sizes, megapixels, strict=True)):
        row = "  ".join(f"{s[i]:>18.1f} img/s" for s in speeds.values())
        print(f"{i + 1:4d}  {h:5d}x{w:<5d}  {mpx:5.2f}  {compiled[i]:8d}  {row}")
    new = first_met(sizes)
    later = range(1, steps)  # the first step also starts CUDA and warms everything up
    for run, s in speeds.items():
        r = statistics.correlation([s[i] for i in later], [megapixels[i] for i in later])
        print(
            f"{run}: steps 2-{steps}: images/s against megapixels r = {r:.2f}; "
            + _split(s, later, new, "at a size met for the first time", "at a size met before")
            + "; "
            + _split(s, later, [n > 0 for n in compiled], "with a new Triton compile", "without")
        )


def _split(speeds: list[float], steps, flags: list[bool], flagged: str, others: str) -> str:
    """Median images/s of the ``steps`` flagged and of the others."""
    parts = []
    for label, want in ((flagged, True), (others, False)):
        chosen = [speeds[i] for i in steps if flags[i] == want]
        median = f"median {statistics.median(chosen):.1f}" if chosen else "none"
        parts.append(f"{len(chosen)} steps {label}, {median}")
    return "; ".join(parts)


if __name__ == "__main__":
    main()
