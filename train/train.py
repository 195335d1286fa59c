"""Training: the loop as plain functions on a plain :class:`TrainConfig`; hydra only in :func:`main`.

``python -m train.train [overrides]`` (hydra app, configs in ``train/conf``); ``torchrun --nproc-per-node N
-m train.train ...`` for DistributedDataParallel.
"""

import dataclasses
import datetime
import inspect
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from kernels.dispatch import to_device
from train.checkpoint import load_checkpoint, remove_partial_writes, rng_state, save_checkpoint, set_rng_state

PRECISIONS = ("fp32", "bf16", "fp16")
EVAL_TIMEOUT = datetime.timedelta(hours=1)
"""How long processes wait for each other (collectives, rank 0's evaluation) before torch gives up."""


@dataclass
class TrainConfig:
    """Everything a run needs, as plain values (the hydra config maps onto it one to one).

    Sizes are pixels; ``batch_size`` is per process and per micro-batch, so the effective batch is
    ``batch_size * grad_accum * world_size``. ``lr_drop_epochs`` are epochs after which the learning rate
    is multiplied by ``lr_gamma``. ``max_steps`` (optimizer steps, for tests and smoke runs) stops early and
    checkpoints. ``eval_every`` epochs (0: only after the last).
    """

    out_dir: str
    train_ann: str
    train_images: str
    val_ann: str
    val_images: str
    model: str = "jcra_tiny"
    model_overrides: dict = field(default_factory=dict)
    keypoint_layout: str = "coco"
    train_scales: list = field(default_factory=lambda: [256])
    val_scale: int = 256
    max_size: int = 256
    rotation: float = 30.0
    epochs: int = 1
    batch_size: int = 2
    grad_accum: int = 1
    lr: float = 2e-4
    lr_backbone_mult: float = 0.1
    lr_offsets_mult: float = 0.1
    weight_decay: float = 1e-4
    clip_grad: float = 0.1
    lr_drop_epochs: list = field(default_factory=list)
    lr_gamma: float = 0.1
    precision: str = "fp32"
    compile: bool = False
    device: str = "auto"
    num_workers: int = 0
    seed: int = 0
    max_steps: int | None = None
    eval_every: int = 0
    checkpoint_every: int = 0
    log_every: int = 10
    resume: bool = False
    matcher_weights: dict = field(default_factory=dict)
    loss_weights: dict = field(default_factory=dict)
    top_k: int = 100

    def validate(self) -> None:
        """Raise ValueError naming the first bad field, and check the dataset files exist."""
        at_least_one = ("epochs", "batch_size", "grad_accum", "val_scale", "max_size", "log_every", "top_k")
        for name in at_least_one:
            _check_int(name, getattr(self, name), 1)
        for name in ("num_workers", "eval_every", "checkpoint_every", "seed"):
            _check_int(name, getattr(self, name), 0)
        if self.max_steps is not None:
            _check_int("max_steps", self.max_steps, 1)
        for name in ("lr", "clip_grad", "lr_gamma"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("weight_decay", "lr_backbone_mult", "lr_offsets_mult", "rotation"):
            value = getattr(self, name)
            if not (_is_number(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("train_scales", "lr_drop_epochs"):
            values = getattr(self, name)
            if not isinstance(values, list | tuple):
                raise ValueError(f"{name} must be a list, got {values!r}")
            for value in values:
                _check_int(f"{name} entry", value, 1)
        if not self.train_scales:
            raise ValueError("train_scales must be a non-empty list of sizes >= 1, got []")
        for name, largest in (("train_scales", max(self.train_scales)), ("val_scale", self.val_scale)):
            if largest > self.max_size:
                raise ValueError(f"{name} ({largest}) must not exceed max_size ({self.max_size})")
        for name in ("model_overrides", "matcher_weights", "loss_weights"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a mapping, got {getattr(self, name)!r}")
        from jcra.criterion import DEFAULT_WEIGHTS
        from jcra.matcher import HungarianMatcher

        matcher_keys = [name for name in inspect.signature(HungarianMatcher).parameters if name != "sigmas"]
        _check_keys("matcher_weights", self.matcher_weights, matcher_keys)
        _check_keys("loss_weights", self.loss_weights, list(DEFAULT_WEIGHTS))
        for name in ("train_ann", "val_ann"):
            if not Path(getattr(self, name)).is_file():
                raise ValueError(f"{name}: annotation file {getattr(self, name)!r} does not exist")
        for name in ("train_images", "val_images"):
            if not Path(getattr(self, name)).is_dir():
                raise ValueError(f"{name}: image folder {getattr(self, name)!r} does not exist")


def _check_keys(name: str, values: dict, known: list[str]) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{name} has unknown keys {unknown}; known: {list(known)}")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_int(name: str, value, low: int) -> None:
    """ValueError naming ``name`` unless ``value`` is an integer >= ``low`` (1.5, "3" and True are not)."""
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


class ResumableSampler(Sampler[int]):
    """A seeded shuffle per epoch, split over processes, that can start part way through an epoch.

    Epoch e's order is ``randperm(size)`` from a generator seeded ``seed + e``, padded by wrapping to a
    multiple of ``world_size``; process r takes every ``world_size``-th index from r. ``set_epoch(e,
    start)`` skips this process's first ``start`` indices (those a resumed run already trained on).
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.per_rank = math.ceil(size / world_size)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        order = order.repeat(math.ceil(self.per_rank * self.world_size / self.size))
        order = order[: self.per_rank * self.world_size][self.rank :: self.world_size]
        return iter(order[self.start :].tolist())

    def __len__(self) -> int:
        """Indices per process per epoch (the full count, independent of ``start``)."""
        return self.per_rank


# ---------------------------------------------------------------------------------------------- setup


def resolve_device(name: str) -> torch.device:
    """``auto`` is the local CUDA device when there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun (or a test's spawn) described in the environment: (rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1
    if device.type == "cuda":
        # collectives (all_gather_object) and new CUDA state use the current device: cuda:0 on every
        # rank unless set, and NCCL refuses two ranks on one GPU
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # rank 0 evaluates the whole val split while the others wait at a barrier: a COCO evaluation of
        # a large model can outlast the default 10 minutes
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=EVAL_TIMEOUT)
    return dist.get_rank(), dist.get_world_size()


def keypoint_layout(name: str):
    """The named layout (sigmas, flip pairs, skeleton) from ``jcra.data``."""
    from jcra.data import keypoint_layouts

    return keypoint_layouts.get_layout(name)


def build_model_from(model: str, overrides: dict) -> nn.Module:
    """A model from its name and plain overrides (what checkpoints store)."""
    from jcra import build_model

    return build_model(model, **dict(overrides))


def build_criterion(cfg: TrainConfig, layout) -> nn.Module:
    """Matcher and losses with the layout's OKS sigmas."""
    from jcra.criterion import SetCriterion
    from jcra.matcher import HungarianMatcher

    sigmas = torch.as_tensor(layout.sigmas, dtype=torch.float32)
    matcher = HungarianMatcher(sigmas, **dict(cfg.matcher_weights))
    return SetCriterion(len(sigmas), sigmas, matcher, weights=dict(cfg.loss_weights) or None)


def build_dataset(ann_file: str, image_dir: str, train: bool, cfg: TrainConfig, layout):
    """The COCO-format dataset with the training or evaluation transforms; ValueError naming the file
    when its people have another number of keypoints than ``layout``."""
    from jcra.data import CocoKeypoints, build_transforms

    scales = list(cfg.train_scales) if train else [cfg.val_scale]
    transforms = build_transforms(
        train, flip_pairs=layout.flip_pairs, scales=scales, max_size=cfg.max_size, rotation=cfg.rotation
    )
    dataset = CocoKeypoints(ann_file, image_dir, transforms=transforms, skip_empty=train)
    if dataset.num_keypoints != len(layout.sigmas):
        raise ValueError(
            f"{ann_file} has {dataset.num_keypoints} keypoints a person, but keypoint_layout "
            f"{layout.name!r} has {len(layout.sigmas)}"
        )
    return dataset


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Three AdamW groups: backbone and sampling offsets at reduced learning rates (Deformable DETR's)."""
    groups: dict[str, list] = {"backbone": [], "offsets": [], "rest": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (
            "backbone"
            if name.startswith("backbone.")
            else "offsets"
            if "sampling_offsets" in name
            else "rest"
        )
        groups[key].append(param)
    mult = {"backbone": cfg.lr_backbone_mult, "offsets": cfg.lr_offsets_mult, "rest": 1.0}
    return [{"params": p, "lr": cfg.lr * mult[k], "name": k} for k, p in groups.items() if p]


RESUME_FIELDS = ("model", "model_overrides", "keypoint_layout", "train_ann", "train_images", "train_scales",
                 "max_size", "rotation", "batch_size", "grad_accum", "seed", "lr", "lr_backbone_mult",
                 "lr_offsets_mult", "weight_decay", "clip_grad", "lr_drop_epochs", "lr_gamma")  # fmt: skip
"""Settings a resumed run must share with its checkpoint: under others, the sampler's position and the
restored parameters, optimizer and schedule would silently mean something else. (``epochs``,
``max_steps``, ``precision``, evaluation, logging and workers may change.)"""

CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng", "step", "epoch", "batch_in_epoch")
"""What a training checkpoint holds for a resume (:func:`train` writes more)."""


def check_resumable(state: dict, cfg: TrainConfig, world: int, path: Path) -> None:
    """ValueError naming every setting in :data:`RESUME_FIELDS` that differs from the checkpoint's, or
    a different number of processes (each resumes its own sampler position and RNG)."""
    saved = state.get("train_config", {})
    changed = [
        f"{name} {saved[name]!r} -> {getattr(cfg, name)!r}"
        for name in RESUME_FIELDS
        if name in saved and _comparable(name, saved[name]) != _comparable(name, getattr(cfg, name))
    ]
    if changed:
        raise ValueError(
            f"resume: {path} was written with other settings ({'; '.join(changed)}); restore them or "
            "train into a new out_dir"
        )
    if len(state["rng"]) != world:
        raise ValueError(f"resume: {path} was written by {len(state['rng'])} processes, this run has {world}")


def _comparable(name: str, value):
    """Paths resolved, sequences as lists, numbers as floats: equal settings compare equal."""
    if name in ("train_ann", "train_images"):
        return Path(value).resolve()
    return json.loads(json.dumps(value), parse_int=float)


# ---------------------------------------------------------------------------------------------- logging


def _logged_step(line: str) -> float:
    """The step of a metrics line; infinity for a line cut short by a killed run (never kept)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class MetricsLog:
    """Metrics to a JSON-lines file, and to TensorBoard when ``torch.utils.tensorboard`` imports."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int = 0):
        """resume_step: the step a resumed run continues from; earlier lines stay, and those after it
        (logged by the interrupted run after its last checkpoint, and about to be redone) go. 0 starts
        the file afresh."""
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        if enabled and self.path.is_file():
            lines = self.path.read_text().splitlines(keepends=True) if resume_step else []
            self.path.write_text("".join(line for line in lines if _logged_step(line) <= resume_step))
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.writer = None

    def log(self, step: int, kind: str, values: dict) -> None:
        from jcra.evaluation import strict_json

        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "kind": kind, **strict_json(values)}) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, int | float):
                    self.writer.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ---------------------------------------------------------------------------------------------- evaluate


@torch.no_grad()
def predict_loader(model: nn.Module, loader, device: torch.device, top_k: int = 100, precision="fp32"):
    """COCO result records for every image of ``loader`` (batches from ``jcra.data.collate``, of a
    :class:`jcra.data.CocoKeypoints`, whose person category the records name)."""
    from jcra.postprocess import PostProcess

    postprocess = PostProcess(top_k, loader.dataset.category_id)
    was_training = model.training
    model.eval()
    results = []
    for images, padding_mask, targets in loader:
        with autocast(device, precision):
            outputs = model(images.to(device), padding_mask.to(device))
        orig_sizes = torch.stack([torch.as_tensor(t["orig_size"]) for t in targets])
        results += postprocess(outputs, orig_sizes, [t["image_id"] for t in targets])
    model.train(was_training)
    return results


def evaluate(model: nn.Module, loader, ann_file: str, device: torch.device, top_k=100, precision="fp32"):
    """COCO keypoint AP of ``model`` on ``loader``'s images against ``ann_file``: (metrics, results)."""
    from jcra.evaluation import evaluate_keypoints

    results = predict_loader(model, loader, device, top_k, precision)
    return evaluate_keypoints(results, ann_file), results


def autocast(device: torch.device, precision: str):
    """Mixed precision context: bf16 or fp16 autocast, or a disabled one for fp32."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")


# ---------------------------------------------------------------------------------------------- train


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) per ``cfg``; returns ``{"step", "epoch", "metrics", "checkpoint"}``.

    Checkpoints ``<out_dir>/checkpoint.pt`` after each epoch, every ``checkpoint_every`` steps and at
    ``max_steps``. With ``resume`` (and the file present; otherwise it starts afresh) it continues from
    that file at the same step: parameters, optimizer, scheduler, scaler, RNG, the sampler's epoch
    and position and the last evaluation are restored (bitwise on CPU with ``num_workers=0``); without
    ``resume`` an out_dir that holds a checkpoint is refused rather than overwritten. The last model
    is always evaluated. A non-finite loss, or gradient norm (but under fp16, whose scaler skips the
    step), raises FloatingPointError before the update, leaving the last checkpoint as it was.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    rank, world = init_distributed(device)
    out_dir = Path(cfg.out_dir)
    ckpt_path = out_dir / "checkpoint.pt"
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_writes(ckpt_path)
    torch.manual_seed(cfg.seed + rank)

    layout = keypoint_layout(cfg.keypoint_layout)
    overrides = {"num_keypoints": len(layout.sigmas), **dict(cfg.model_overrides)}
    model = build_model_from(cfg.model, overrides).to(device)
    criterion = build_criterion(cfg, layout).to(device)
    train_set = build_dataset(cfg.train_ann, cfg.train_images, True, cfg, layout)
    val_set = build_dataset(cfg.val_ann, cfg.val_images, False, cfg, layout)
    if len(train_set) == 0:
        raise ValueError(f"train_ann: {cfg.train_ann} has no image with a labelled, non-crowd person")
    sampler = ResumableSampler(len(train_set), seed=cfg.seed, rank=rank, world_size=world)
    loader = data_loader(train_set, cfg, sampler=sampler)
    val_loader = data_loader(val_set, cfg)
    steps_per_epoch = len(sampler) // cfg.batch_size // cfg.grad_accum
    if steps_per_epoch < 1:
        raise ValueError(
            f"batch_size * grad_accum ({cfg.batch_size * cfg.grad_accum}) exceeds the "
            f"{len(sampler)} training images per process"
        )

    # fused: one kernel over all parameters, not a loop per tensor (the tiny model has ~200 tensors)
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused
    )
    milestones = [int(e) * steps_per_epoch for e in cfg.lr_drop_epochs]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=cfg.lr_gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    step, epoch, batch_in_epoch = 0, 0, 0
    metrics: dict = {}
    metrics_step = None  # the step the metrics are of
    if ckpt_path.is_file() and not cfg.resume:
        raise ValueError(
            f"out_dir: {out_dir} already holds a run ({ckpt_path}); pass train.resume=true to continue it, "
            "or choose another out_dir (training afresh would overwrite its checkpoint and log)"
        )
    if cfg.resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, keys=CHECKPOINT_KEYS)
        check_resumable(state, cfg, world, ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when written without fp16 (a disabled scaler), which may change
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][rank])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        metrics, metrics_step = state.get("metrics", {}), state.get("metrics_step")

    if cfg.compile:  # encoder and decoder, sizes symbolic: no recompile per random training scale
        model.compile_model(transformer_only=True, dynamic=True)
    forward_model = model
    if world > 1:
        forward_model = nn.parallel.DistributedDataParallel(
            forward_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    log = MetricsLog(out_dir, enabled=rank == 0, resume_step=step)
    total_steps = steps_per_epoch * cfg.epochs if cfg.max_steps is None else cfg.max_steps

    def checkpoint() -> None:
        rngs = gather_objects(rng_state(), world)
        if rank == 0:
            save_checkpoint(
                ckpt_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": rngs,
                    "step": step,
                    "epoch": epoch,
                    "batch_in_epoch": batch_in_epoch,
                    "model_config": {"name": cfg.model, "overrides": overrides},
                    "data_config": {
                        "keypoint_layout": cfg.keypoint_layout,
                        "val_scale": cfg.val_scale,
                        "max_size": cfg.max_size,
                    },
                    "train_config": dataclasses.asdict(cfg),
                    "metrics": metrics,
                    "metrics_step": metrics_step,
                },
            )

    progress = progress_bar(total_steps, step, enabled=rank == 0)
    model.train()
    while epoch < cfg.epochs and step < total_steps:
        sampler.set_epoch(epoch, start=batch_in_epoch * cfg.batch_size)
        seed_workers(loader, cfg.seed, rank, epoch)
        batches = iter(loader)
        while batch_in_epoch + cfg.grad_accum <= steps_per_epoch * cfg.grad_accum and step < total_steps:
            tic = time.perf_counter()
            losses = accumulate(forward_model, criterion, batches, cfg, device, scaler)
            loss = reduce_mean(losses["loss"], world)
            if not math.isfinite(loss):
                raise non_finite("loss", loss, step + 1, epoch, ckpt_path)
            scaler.unscale_(optimizer)
            grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad))
            if not math.isfinite(grad_norm) and not scaler.is_enabled():  # fp16's scaler skips the step
                raise non_finite("gradient norm", grad_norm, step + 1, epoch, ckpt_path)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[-1]["lr"]  # this step's: the scheduler now moves to the next
            scheduler.step()
            step += 1
            batch_in_epoch += cfg.grad_accum
            speed = cfg.batch_size * cfg.grad_accum * world / (time.perf_counter() - tic)
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}", img_s=f"{speed:.1f}")
            if step % cfg.log_every == 0 or step == total_steps:
                values = {k: float(v) for k, v in losses.items() if not k.endswith(tuple("0123456789"))}
                log.log(step, "train", {**values, "loss": loss, "grad_norm": grad_norm, "images_per_s": speed,
                                        "lr": lr, "epoch": epoch})  # fmt: skip
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                checkpoint()
        if batch_in_epoch + cfg.grad_accum > steps_per_epoch * cfg.grad_accum:
            epoch, batch_in_epoch = epoch + 1, 0
            last = epoch == cfg.epochs or step >= total_steps
            if (cfg.eval_every and epoch % cfg.eval_every == 0) or last:
                metrics, metrics_step = (
                    run_evaluation(model, val_loader, cfg, device, rank, world, out_dir),
                    step,
                )
                log.log(step, "val", metrics)
        checkpoint()
    progress.close()
    if metrics_step != step:  # the last model not evaluated yet (max_steps mid-epoch)
        metrics, metrics_step = run_evaluation(model, val_loader, cfg, device, rank, world, out_dir), step
        log.log(step, "val", metrics)
        checkpoint()
    log.close()
    return {"step": step, "epoch": epoch, "metrics": metrics, "checkpoint": str(ckpt_path)}


def accumulate(model, criterion, batches, cfg: TrainConfig, device, scaler) -> dict:
    """Forward and backward ``grad_accum`` micro-batches; returns their mean losses (detached)."""
    totals: dict = {}
    for i in range(cfg.grad_accum):
        images, padding_mask, targets = next(batches)
        sync = i == cfg.grad_accum - 1 or not hasattr(model, "no_sync")
        context = torch.enable_grad() if sync else model.no_sync()
        with context:
            with autocast(device, cfg.precision):
                outputs = model(to_device(images, device), to_device(padding_mask, device))
            # host targets: the criterion pads them and moves them in one copy
            losses = criterion(outputs, targets)
            scaler.scale(losses["loss"] / cfg.grad_accum).backward()
        for k, v in losses.items():
            totals[k] = totals.get(k, 0.0) + v.detach().float() / cfg.grad_accum
    return totals


def non_finite(what: str, value: float, step: int, epoch: int, ckpt_path: Path) -> FloatingPointError:
    """The error that stops a run before an update with a non-finite loss or gradient."""
    kept = (
        f"the last good checkpoint {ckpt_path} is intact"
        if ckpt_path.is_file()
        else "no checkpoint was written yet"
    )
    return FloatingPointError(
        f"non-finite {what} {value} at step {step} (epoch {epoch}); stopped before the update, {kept}. "
        "Try a lower lr or precision=fp32."
    )


def run_evaluation(model, val_loader, cfg: TrainConfig, device, rank: int, world: int, out_dir: Path) -> dict:
    """Evaluate on rank 0 over the whole val split (others wait); writes ``val_results.json``."""
    metrics: dict = {}
    if rank == 0:
        metrics, results = evaluate(model, val_loader, cfg.val_ann, device, cfg.top_k, cfg.precision)
        (out_dir / "val_results.json").write_text(json.dumps(results))
        print("[jcra] eval: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
    if world > 1:
        dist.barrier()
    return metrics


def data_loader(dataset, cfg: TrainConfig, sampler=None) -> DataLoader:
    """Training loader (``sampler`` given: full batches in the sampler's order) or evaluation loader.

    The loader owns a seeded generator, so creating an iterator never draws from the global RNG (that
    would make a resumed run's random stream differ from an uninterrupted one).
    """
    from jcra.data import collate

    generator = torch.Generator().manual_seed(cfg.seed)
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        shuffle=False,
        drop_last=sampler is not None,
        collate_fn=collate,
        num_workers=cfg.num_workers,
        pin_memory=torch.cuda.is_available(),  # pinned batches reach the GPU without a host sync
        generator=generator,
        persistent_workers=False,
    )


def seed_workers(loader: DataLoader, seed: int, rank: int, epoch: int) -> None:
    """Seed the generator each iterator of ``loader`` draws its workers' seeds from, for this process
    and epoch: processes augment differently, and an epoch's augmentations are the same whether or
    not the run was resumed before it (with ``num_workers=0`` transforms draw from the restored global
    RNG instead)."""
    loader.generator.manual_seed(int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0]))


def reduce_mean(value: torch.Tensor, world: int) -> float:
    """The mean of a scalar over processes, as a Python float (one host sync per step)."""
    value = value.detach().float().clone()
    if world > 1:
        dist.all_reduce(value)
        value /= world
    return float(value)


def gather_objects(obj, world: int) -> list:
    """Every process's ``obj`` (a one-element list without distributed)."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def progress_bar(total: int, initial: int, enabled: bool):
    """A tqdm bar (disabled on ranks other than 0)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------- hydra


def config_from(node) -> TrainConfig:
    """A :class:`TrainConfig` from the composed hydra config's ``train`` node (unknown keys raise)."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(node, resolve=True)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; valid: {sorted(known)}")
    return TrainConfig(**values)


def main() -> None:
    """The hydra entry point: compose ``train/conf/config.yaml`` with the command line, then train."""
    import hydra

    @hydra.main(version_base=None, config_path="conf", config_name="config")
    def run(cfg) -> None:
        result = train(config_from(cfg.train))
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"[jcra] checkpoint: {result['checkpoint']}")
        if dist.is_initialized():
            dist.destroy_process_group()

    run()


if __name__ == "__main__":
    main()
