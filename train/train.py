"""Training: the loop as plain functions on a plain :class:`TrainConfig`; hydra only in :func:`main`.

``python -m train.train [overrides]`` (hydra app, configs in ``train/conf``); ``torchrun --nproc-per-node N
-m train.train ...`` for DistributedDataParallel. The configuration lives in :mod:`train.config`, the
processes and their data order in :mod:`train.distributed`, checkpoints and what a resume must match in
:mod:`train.checkpoint`, the metrics log in :mod:`train.metrics_log`.
"""

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from jcra.files import remove_partial_writes, write_text_atomically
from kernels.dispatch import to_device
from train.checkpoint import (
    CHECKPOINT_KEYS,
    check_resumable,
    load_checkpoint,
    model_overrides,
    out_dir_lock,
    plain,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from train.config import TrainConfig, config_from
from train.distributed import (
    ResumableSampler,
    SeededSamples,
    check_processes_agree,
    gather_objects,
    init_distributed,
    reduce_means,
    resolve_device,
)
from train.metrics_log import MetricsLog
from train.stop import StopRequest, exit_status, ignore_stop_signals

# ---------------------------------------------------------------------------------------------- build


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
    weights = dict(cfg.loss_weights) or None
    return SetCriterion(
        len(sigmas),
        sigmas,
        matcher,
        weights=weights,
        oks_mode=cfg.oks_mode,
        encoder_oks=cfg.encoder_oks,
        heatmap_target=cfg.heatmap_target,
    )


def build_dataset(ann_file: str, image_dir: str, train: bool, cfg: TrainConfig, layout):
    """The COCO-format dataset with the training or evaluation transforms; ValueError naming the file
    when its people have another number of keypoints than ``layout``, or (evaluation) when COCO
    evaluation would refuse it."""
    from jcra.data import CocoKeypoints, build_transforms
    from jcra.evaluation import load_ground_truth

    if not train:
        load_ground_truth(ann_file)  # checked now, not after a whole training run

    if train:
        scales, max_size = cfg.training_scales(), cfg.train_max_size or cfg.max_size
    else:
        scales, max_size = [cfg.val_scale], cfg.max_size
    transforms = build_transforms(
        train,
        flip_pairs=layout.flip_pairs,
        scales=scales,
        max_size=max_size,
        rotation=cfg.rotation,
        shear=cfg.shear,
        crop_scale=cfg.crop_scale,
    )
    dataset = CocoKeypoints(
        ann_file, image_dir, transforms=transforms, skip_empty=train, negatives=train and cfg.train_negatives
    )
    if dataset.num_keypoints != len(layout.sigmas):
        raise ValueError(
            f"{ann_file} has {dataset.num_keypoints} keypoints a person, but keypoint_layout "
            f"{layout.name!r} has {len(layout.sigmas)}"
        )
    layout.check_order(dataset.keypoint_names, ann_file)
    return dataset


def build_optimizer(
    model: nn.Module,
    lr: float = TrainConfig.lr,
    lr_backbone_mult: float = TrainConfig.lr_backbone_mult,
    lr_offsets_mult: float = TrainConfig.lr_offsets_mult,
    weight_decay: float = TrainConfig.weight_decay,
) -> torch.optim.AdamW:
    """AdamW in three groups, the backbone and the sampling offsets at reduced learning rates
    (Deformable DETR's, PETR's); the defaults are the COCO recipe's. Fused on CPU and CUDA: one kernel
    over all parameters, not a loop per tensor (the tiny model has ~200 tensors)."""
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
    mult = {"backbone": lr_backbone_mult, "offsets": lr_offsets_mult, "rest": 1.0}
    params = [{"params": p, "lr": lr * mult[k], "name": k} for k, p in groups.items() if p]
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


# ---------------------------------------------------------------------------------------------- evaluate


@torch.no_grad()
def predict_loader(
    model: nn.Module, loader, device: torch.device, top_k: int = 100, precision="fp32", should_stop=None
):
    """COCO result records for every image of ``loader`` (batches from ``jcra.data.collate``, of a
    :class:`jcra.data.CocoKeypoints`, whose person category the records name); None once
    ``should_stop()`` (checked before each batch) says to stop."""
    from tqdm import tqdm

    from jcra.postprocess import PostProcess

    postprocess = PostProcess(top_k, loader.dataset.category_id)
    was_training = model.training
    model.eval()
    results = []
    for images, padding_mask, targets in tqdm(
        loader, "evaluating", unit="batch", leave=False, dynamic_ncols=True
    ):
        if should_stop is not None and should_stop():
            results = None
            break
        with autocast(device, precision):
            outputs = model(images.to(device), padding_mask.to(device))
        orig_sizes = torch.stack([torch.as_tensor(t["orig_size"]) for t in targets])
        results += postprocess(outputs, orig_sizes, [t["image_id"] for t in targets])
    model.train(was_training)
    return results


def evaluate(
    model: nn.Module,
    loader,
    ann_file: str,
    device: torch.device,
    top_k=100,
    precision="fp32",
    results_path=None,
    should_stop=None,
) -> dict | None:
    """COCO keypoint AP of ``model`` on ``loader``'s images against ``ann_file``; the records are
    written to ``results_path`` (if given) before they are scored, so an error in scoring keeps them.
    None, with nothing written, when ``should_stop()`` stops it (see :func:`predict_loader`)."""
    from jcra.evaluation import evaluate_keypoints

    results = predict_loader(model, loader, device, top_k, precision, should_stop)
    if results is None:
        return None
    if results_path is not None:
        write_text_atomically(results_path, json.dumps(results))
    return evaluate_keypoints(results, ann_file)


def autocast(device: torch.device, precision: str):
    """Mixed precision context: bf16 or fp16 autocast; for fp32 none of its own (a disabled one would
    also turn off an autocast the caller runs it under)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])


# ---------------------------------------------------------------------------------------------- train


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) per ``cfg``; returns ``{"step", "epoch", "metrics", "checkpoint", "stopped"}``.

    Checkpoints ``<out_dir>/checkpoint.pt`` after each epoch (before and after its evaluation), every
    ``checkpoint_every`` steps and at ``max_steps``. With ``resume`` (and the file present; otherwise it
    starts afresh) it continues from that file at the same step: parameters, optimizer, scheduler,
    scaler, RNG, the sampler's epoch and position and the last evaluation are restored (bitwise on CPU,
    with any ``num_workers``), and an evaluation the kill interrupted runs first; without ``resume`` an
    out_dir that holds a checkpoint is refused rather than overwritten. The last model is always
    evaluated. SIGINT or SIGTERM stops it after the step in flight, with a checkpoint, or abandons the
    evaluation in flight, which the resumed run redoes (``stopped`` names the signal, else None); a
    Ctrl-C after it stops it at once (see :class:`train.stop.StopRequest`). A non-finite loss, or
    gradient norm (but under fp16, whose scaler skips the step), raises FloatingPointError before the
    update, leaving the last checkpoint as it was.
    """
    cfg.validate()
    cfg = TrainConfig(**plain(dataclasses.asdict(cfg)))  # what the checkpoint records, as it reads back
    device = resolve_device(cfg.device)
    rank, world = init_distributed(device)
    late = [epoch for epoch in cfg.lr_drop_epochs if epoch >= cfg.epochs]
    if late and rank == 0:  # epochs may grow on a resume: a warning, not an error, once a run
        warnings.warn(
            f"lr_drop_epochs {late} are not before epochs={cfg.epochs}: the run ends before they drop the "
            "learning rate",
            stacklevel=2,
        )
    out_dir = Path(cfg.out_dir)
    with StopRequest() as stop:
        if rank != 0:
            return _train(cfg, device, rank, world, out_dir, stop)
        checked_out_dir(cfg.out_dir)  # hydra's resolver checks it too; a direct call is checked here
        out_dir.mkdir(parents=True, exist_ok=True)
        with out_dir_lock(out_dir):  # one run at a time writes there
            return _train(cfg, device, rank, world, out_dir, stop)


def _train(
    cfg: TrainConfig, device: torch.device, rank: int, world: int, out_dir: Path, stop: StopRequest
) -> dict:
    """:func:`train` once the processes are up and, on rank 0, ``out_dir`` is made and locked; ``stop``
    says whether a signal asked it to stop."""
    ckpt_path = out_dir / "checkpoint.pt"
    if rank == 0:
        remove_partial_writes(ckpt_path)
    # refused or checked before the model and data are built, which takes minutes on COCO
    if ckpt_path.is_file() and not cfg.resume:
        raise ValueError(
            f"out_dir: {out_dir} already holds a run ({ckpt_path}); pass train.resume=true to continue it, "
            "or choose another out_dir (training afresh would overwrite its checkpoint and log)"
        )
    state = None
    if cfg.resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, keys=CHECKPOINT_KEYS)
        check_resumable(state, cfg, world, ckpt_path)
    elif cfg.resume and rank == 0:  # a mistyped out_dir would otherwise start over unannounced
        print(f"[jcra] train.resume=true: no checkpoint in {out_dir}, starting a new run", flush=True)
    torch.manual_seed(cfg.seed + rank)

    layout = keypoint_layout(cfg.keypoint_layout)
    overrides = {"num_keypoints": len(layout.sigmas), **dict(cfg.model_overrides)}
    if state is not None and "model_config" in state:  # a resumed model as it trained (a later default
        overrides = {**model_overrides(state), **overrides}  # would otherwise change it unannounced)
    model = build_model_from(cfg.model, overrides).to(device)
    overrides["extent_scale"] = model.decoder.extent_scale  # recorded: checkpoints pin it
    criterion = build_criterion(cfg, layout).to(device)
    train_set = build_dataset(cfg.train_ann, cfg.train_images, True, cfg, layout)
    val_set = build_dataset(cfg.val_ann, cfg.val_images, False, cfg, layout)
    if not any(len(train_set.targets[image_id][0]) for image_id in train_set.ids):
        raise ValueError(f"train_ann: {cfg.train_ann} has no image with a labelled, non-crowd person")
    if state is not None and state.get("train_set_size", len(train_set)) != len(train_set):
        raise ValueError(  # the same path, another file: the schedule and data order would shift
            f"resume: {ckpt_path} trained on {state['train_set_size']} images of train_ann {cfg.train_ann}, "
            f"which now gives {len(train_set)}; restore that file or train into a new out_dir"
        )
    sampler = ResumableSampler(len(train_set), seed=cfg.seed, rank=rank, world_size=world)
    loader = data_loader(SeededSamples(train_set), cfg, sampler=sampler)
    val_loader = data_loader(val_set, cfg)
    steps_per_epoch = len(sampler) // cfg.batch_size // cfg.grad_accum
    if steps_per_epoch < 1:
        raise ValueError(
            f"batch_size * grad_accum ({cfg.batch_size * cfg.grad_accum}) exceeds the "
            f"{len(sampler)} training images per process"
        )

    optimizer = build_optimizer(model, cfg.lr, cfg.lr_backbone_mult, cfg.lr_offsets_mult, cfg.weight_decay)
    milestones = [int(e) * steps_per_epoch for e in cfg.lr_drop_epochs]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=cfg.lr_gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    step, epoch, batch_in_epoch = 0, 0, 0
    metrics: dict = {}
    metrics_step = None  # the step the metrics are of
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when written without fp16 (a disabled scaler), which may change
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][rank])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        metrics, metrics_step = state.get("metrics", {}), state.get("metrics_step")
    # A process that did not find rank 0's checkpoint (an out_dir on each node's own disk) would train
    # from another step, and the others would wait for it in a collective for ever.
    check_processes_agree(
        {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch},
        world,
        f"the point the run starts from (out_dir {out_dir} must be one folder every process sees)",
    )

    if cfg.compile:  # sizes symbolic: no recompile per random training scale
        model.compile_model(transformer_only=not cfg.compile_whole, dynamic=True)
    forward_model = model
    if world > 1:
        forward_model = nn.parallel.DistributedDataParallel(
            forward_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    log = MetricsLog(out_dir, enabled=rank == 0, resume_step=step, resume_evaluated=metrics_step == step)
    total_steps = steps_per_epoch * cfg.epochs if cfg.max_steps is None else cfg.max_steps
    if state is not None and rank == 0 and (step >= total_steps or epoch >= cfg.epochs):
        print(
            f"[jcra] {ckpt_path} is at step {step}, epoch {epoch}: the run asked for (epochs {cfg.epochs}, "
            f"max_steps {cfg.max_steps}) ends there or before, nothing to train",
            flush=True,
        )

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
                    "train_set_size": len(train_set),
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

    def any_process(**flags: bool) -> dict[str, bool]:
        """Each flag: whether it holds in any process (a collective: every process calls it)."""
        means = reduce_means({k: torch.tensor(v, device=device) for k, v in flags.items()}, world)
        return {k: v > 0 for k, v in means.items()}

    def evaluate_and_checkpoint() -> bool:
        """Evaluates the model (whose training state is saved already) and checkpoints the metrics;
        returns whether to stop. A signal that reached rank 0 during the evaluation abandons it, to be
        redone by the resumed run."""
        nonlocal metrics, metrics_step
        evaluated = run_evaluation(model, val_loader, cfg, device, rank, out_dir, stop)
        agreed = any_process(stop=stop.requested(), abandoned=evaluated is None)
        if not agreed["abandoned"]:
            metrics, metrics_step = evaluated, step
            log.log(step, "val", metrics)
            checkpoint()
        return agreed["stop"]

    def evaluation_due() -> bool:
        """At an epoch's end: the eval_every-th epoch's, or the run's last."""
        return (
            bool(cfg.eval_every and epoch % cfg.eval_every == 0) or epoch == cfg.epochs or step >= total_steps
        )

    def epoch_goes_on() -> bool:
        return batch_in_epoch + cfg.grad_accum <= steps_per_epoch * cfg.grad_accum and step < total_steps

    # a signal while the model and data were built (minutes on COCO): no step, nothing new to write
    stopping = any_process(stop=stop.requested())["stop"]
    if not stopping and batch_in_epoch == 0 and epoch > 0 and metrics_step != step and evaluation_due():
        stopping = evaluate_and_checkpoint()  # stopped in the evaluation ending the epoch it resumes after
    progress = progress_bar(total_steps, step, enabled=rank == 0)
    model.train()
    while not stopping and epoch < cfg.epochs and step < total_steps:
        sampler.set_epoch(epoch, start=batch_in_epoch * cfg.batch_size)
        batches = iter(loader)
        while epoch_goes_on():
            tic = time.perf_counter()
            micro = [next(batches) for _ in range(cfg.grad_accum)]
            data_s = time.perf_counter() - tic  # waiting for the loader: a step's share it cannot overlap
            # the padded sizes of this process's step: in train_run's two H200 logs, steps at a size
            # met before ran about twice as fast as steps at a new one (medians 12.9-13.7 against
            # 5.7-6.1 images/s; bench/train_run_sizes.py), likely eager PyTorch's per-shape setup
            sizes = [tuple(images.shape[-2:]) for images, _, _ in micro]
            megapixels = sum(images[:, 0].numel() for images, _, _ in micro) / 1e6
            losses = accumulate(forward_model, criterion, micro, cfg, device, scaler)
            # the logged terms (not each decoder layer's) averaged over processes, as the gradients
            # are, with whether a process was asked to stop: all stop after the same step
            asked = torch.tensor(stop.requested(), device=device)
            terms = reduce_means({**logged(losses), "stop": asked}, world)
            stopping = terms.pop("stop") > 0
            loss = terms["loss"]
            if not math.isfinite(loss):
                raise non_finite("loss", loss, step + 1, epoch, ckpt_path, cfg.precision)
            scaler.unscale_(optimizer)
            grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad))
            if not math.isfinite(grad_norm) and not scaler.is_enabled():  # fp16's scaler skips the step
                raise non_finite("gradient norm", grad_norm, step + 1, epoch, ckpt_path, cfg.precision)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[-1]["lr"]  # this step's: the scheduler now moves to the next
            scheduler.step()
            step += 1
            batch_in_epoch += cfg.grad_accum
            speed = cfg.batch_size * cfg.grad_accum * world / (time.perf_counter() - tic)
            progress.update(1)
            hw = "+".join(f"{h}x{w}" for h, w in sizes)
            progress.set_postfix(loss=f"{loss:.4f}", img_s=f"{speed:.1f}", hw=hw, data_s=f"{data_s:.2f}")
            if step % cfg.log_every == 0 or step == total_steps:
                log.log(step, "train", {**terms, "grad_norm": grad_norm, "images_per_s": speed,
                                        "padded_hw": sizes, "megapixels": megapixels, "data_s": data_s,
                                        "lr": lr, "epoch": epoch})  # fmt: skip
            if stopping or not epoch_goes_on():
                break  # the checkpoint below saves this step, once
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                checkpoint()
        if batch_in_epoch + cfg.grad_accum > steps_per_epoch * cfg.grad_accum:
            epoch, batch_in_epoch = epoch + 1, 0
        checkpoint()  # before the epoch's evaluation, which may be long: a kill there loses no training
        if not stopping and batch_in_epoch == 0 and evaluation_due():  # else the resumed run does it
            stopping = evaluate_and_checkpoint()
    progress.close()
    if metrics_step != step and not stopping:  # the last model not evaluated yet (max_steps mid-epoch)
        stopping = evaluate_and_checkpoint()
    log.close()
    # a process the signal did not reach names the one schedulers send
    stopped = (stop.name or "SIGTERM") if stopping else None
    return {
        "step": step,
        "epoch": epoch,
        "metrics": metrics,
        "checkpoint": str(ckpt_path),
        "stopped": stopped,
    }


def logged(losses: dict) -> dict:
    """The loss terms a step logs: the total and its parts, not each decoder layer's."""
    return {k: v for k, v in losses.items() if not k.endswith(tuple("0123456789"))}


def accumulate(model, criterion, micro: list, cfg: TrainConfig, device, scaler) -> dict:
    """Forward and backward the ``grad_accum`` micro-batches ``micro`` (as the loop fetched them);
    returns the losses of the batch they make (detached). Each micro-batch's losses are divided by the
    whole batch's people, coordinates and heatmap peaks (``criterion.count``), so the gradient is the
    one batch ``grad_accum`` times as large would give, as DDP's processes together give theirs."""
    counts = sum(criterion.count(targets) for *_, targets in micro) if cfg.grad_accum > 1 else None
    totals: dict = {}
    for i, (images, padding_mask, targets) in enumerate(micro):
        sync = i == cfg.grad_accum - 1 or not hasattr(model, "no_sync")
        context = torch.enable_grad() if sync else model.no_sync()
        with context:
            with autocast(device, cfg.precision):
                outputs = model(to_device(images, device), to_device(padding_mask, device))
            # host targets: the criterion pads them and moves them in one copy
            losses = criterion(outputs, targets, counts)
            scaler.scale(losses["loss"]).backward()
        for k, v in losses.items():
            totals[k] = totals.get(k, 0.0) + v.detach().float()
    return totals


def non_finite(
    what: str, value: float, step: int, epoch: int, ckpt_path: Path, precision: str = "fp32"
) -> FloatingPointError:
    """The error that stops a run before an update with a non-finite loss or gradient."""
    kept = (
        f"the last good checkpoint {ckpt_path} is intact"
        if ckpt_path.is_file()
        else "no checkpoint was written yet"
    )
    return FloatingPointError(
        f"non-finite {what} {value} at step {step} (epoch {epoch}); stopped before the update, {kept}. "
        + ("Try a lower lr." if precision == "fp32" else "Try a lower lr or precision=fp32.")
    )


def run_evaluation(
    model, val_loader, cfg: TrainConfig, device, rank: int, out_dir: Path, stop: StopRequest
) -> dict | None:
    """Evaluate on rank 0 over the whole val split (the others return ``{}`` at once); writes
    ``val_results.json``. None when a stop signal reached rank 0 during it."""
    if rank != 0:
        return {}
    results_path = out_dir / "val_results.json"
    remove_partial_writes(results_path)
    metrics = evaluate(
        model, val_loader, cfg.val_ann, device, cfg.top_k, cfg.precision, results_path, stop.requested
    )
    if metrics is not None:
        print("[jcra] eval: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
    return metrics


def data_loader(dataset, cfg: TrainConfig, sampler=None, on_canvas: bool = False) -> DataLoader:
    """Training loader (``sampler`` given: full batches in the sampler's order) or evaluation loader;
    ``on_canvas``: batches padded to :func:`jcra.data.canvas` of ``cfg``'s val_scale and max_size, for a
    model compiled at a few sizes.

    The loader owns a seeded generator, so creating an iterator never draws from the global RNG (that
    would make a resumed run's random stream differ from an uninterrupted one).
    """
    from jcra.data import collate, collate_on_canvas

    generator = torch.Generator().manual_seed(cfg.seed)
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        shuffle=False,
        drop_last=sampler is not None,
        collate_fn=partial(collate_on_canvas, sides=(cfg.val_scale, cfg.max_size)) if on_canvas else collate,
        num_workers=cfg.num_workers,
        worker_init_fn=ignore_stop_signals,
        pin_memory=torch.cuda.is_available(),  # pinned batches reach the GPU without a host sync
        generator=generator,
        persistent_workers=False,
    )


def progress_bar(total: int, initial: int, enabled: bool):
    """A tqdm bar (disabled on ranks other than 0)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------- hydra


def checked_out_dir(out_dir) -> str:
    """``out_dir`` if it names a folder that is or can be made (hydra makes it first, for its records; an
    empty one put them under ``/hydra``)."""
    if not (isinstance(out_dir, str) and out_dir.strip()):
        raise ValueError(f"train.out_dir must be a folder path, got {out_dir!r}")
    path = Path(out_dir)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "a file" if not existing.is_dir() else "a folder that cannot be written"
        raise ValueError(f"train.out_dir: {out_dir} cannot be made a folder: {existing} is {what}")
    return out_dir


def _out_dir_or_exit(out_dir) -> str:
    """:func:`checked_out_dir` for hydra's run folder, resolved before the app runs: there an exception
    prints some 100 lines of hydra's and omegaconf's stack above the message, so it exits with the message
    alone (SystemExit passes both, which catch only ``Exception``)."""
    try:
        return checked_out_dir(out_dir)
    except ValueError as err:
        raise SystemExit(f"Error: {err}") from None


def main() -> None:
    """The hydra entry point: compose ``train/conf/config.yaml`` with the command line, then train."""
    import hydra
    from omegaconf import OmegaConf

    # config.yaml's run folder goes through it: hydra makes that folder before train() checks the config
    OmegaConf.register_new_resolver("folder", _out_dir_or_exit, replace=True)

    @hydra.main(version_base=None, config_path="conf", config_name="config")
    def run(cfg) -> None:
        result = train(config_from(cfg.train))
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"[jcra] checkpoint: {result['checkpoint']}")
            if result["stopped"]:
                print(
                    f"[jcra] stopped by {result['stopped']} at step {result['step']}; "
                    "train.resume=true continues the run"
                )
        if dist.is_initialized():
            dist.destroy_process_group()
        if result["stopped"]:
            raise SystemExit(exit_status(result["stopped"]))

    run()


if __name__ == "__main__":
    main()
