"""The plain run configuration the training loop takes, checked field by field; hydra maps onto it."""

import inspect
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

PRECISIONS = ("fp32", "bf16", "fp16")
SCALE_MODES = ("list", "range")
MIN_CROP_SCALE = 4  # the crop branch resizes to half of it: a pixel at least


@dataclass
class TrainConfig:
    """Everything a run needs, as plain values (the hydra config maps onto it one to one).

    Sizes are pixels. Training resizes the short side to one of ``train_scales`` (``train_scale_mode:
    list``) or to a whole number drawn uniformly from ``[train_scales[0], train_scales[1]]`` (``range``,
    PETR's 400-1400), the long side capped at ``train_max_size`` (default ``max_size``); evaluation to
    ``val_scale`` capped at ``max_size``. ``crop_scale`` (default the largest train scale) sizes the
    crop branch (:func:`jcra.data.build_transforms`). ``batch_size`` is per process and per
    micro-batch, so the effective batch is ``batch_size * grad_accum * world_size``. ``lr_drop_epochs``
    are epochs after which the learning rate is multiplied by ``lr_gamma`` (each once; those at or
    past ``epochs`` warn, as the run ends first). ``max_steps`` (optimizer
    steps, for tests and smoke runs) stops early and checkpoints. ``eval_every`` epochs (0: only after
    the last). ``compile`` compiles the encoder and decoder with symbolic sizes; with ``compile_whole``,
    the whole forward (:meth:`jcra.JCRA.compile_model`).
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
    train_scale_mode: str = "list"
    train_max_size: int | None = None
    crop_scale: int | None = None
    val_scale: int = 256
    max_size: int = 256
    rotation: float = 30.0
    shear: float = 0.0
    train_negatives: bool = True
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
    compile_whole: bool = False
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
    oks_mode: str = "log"
    encoder_oks: bool = False
    heatmap_target: str = "box"
    top_k: int = 100

    def validate(self) -> None:
        """Raise ValueError naming the first bad field, and check the dataset files exist."""
        if not (isinstance(self.out_dir, str | os.PathLike) and str(self.out_dir).strip()):
            raise ValueError(f"out_dir must be a folder path, got {self.out_dir!r}")
        for name in ("compile", "compile_whole", "resume", "encoder_oks", "train_negatives"):
            if not isinstance(getattr(self, name), bool):  # "no" would be true
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.compile_whole and not self.compile:
            raise ValueError("compile_whole needs compile: true (it says what to compile), got false")
        at_least_one = ("epochs", "batch_size", "grad_accum", "val_scale", "max_size", "log_every", "top_k")
        for name in at_least_one:
            _check_int(name, getattr(self, name), 1)
        for name in ("num_workers", "eval_every", "checkpoint_every", "seed"):
            _check_int(name, getattr(self, name), 0)
        for name, low in (("max_steps", 1), ("train_max_size", 1), ("crop_scale", MIN_CROP_SCALE)):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), low)
        for name in ("lr", "clip_grad", "lr_gamma"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("weight_decay", "lr_backbone_mult", "lr_offsets_mult", "rotation"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (_is_number(self.shear) and 0 <= self.shear < 90):
            raise ValueError(f"shear must be a number of degrees in [0, 90), got {self.shear!r}")
        from jcra.criterion import HEATMAP_TARGETS
        from jcra.oks_loss import OKS_MODES

        for name, choices in (
            ("oks_mode", OKS_MODES),
            ("heatmap_target", HEATMAP_TARGETS),
            ("precision", PRECISIONS),
            ("train_scale_mode", SCALE_MODES),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in ("train_scales", "lr_drop_epochs"):
            values = getattr(self, name)
            if not isinstance(values, list | tuple):
                raise ValueError(f"{name} must be a list, got {values!r}")
            for value in values:
                _check_int(f"{name} entry", value, 1)
        if not self.train_scales:
            raise ValueError("train_scales must be a non-empty list of sizes >= 1, got []")
        if len(set(self.lr_drop_epochs)) != len(self.lr_drop_epochs):  # MultiStepLR would drop twice
            raise ValueError(f"lr_drop_epochs must not repeat an epoch, got {self.lr_drop_epochs!r}")
        if self.train_scale_mode == "range" and not (
            len(self.train_scales) == 2 and self.train_scales[0] <= self.train_scales[1]
        ):
            raise ValueError(
                "train_scales must be [smallest, largest] with train_scale_mode range, got "
                f"{self.train_scales!r}"
            )
        train_cap = "train_max_size" if self.train_max_size is not None else "max_size"
        caps = (
            ("train_scales", max(self.train_scales), train_cap, getattr(self, train_cap)),
            ("val_scale", self.val_scale, "max_size", self.max_size),
        )
        for name, largest, cap_name, cap in caps:
            if largest > cap:
                raise ValueError(f"{name} ({largest}) must not exceed {cap_name} ({cap})")
        for name in ("model_overrides", "matcher_weights", "loss_weights"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a mapping, got {getattr(self, name)!r}")
        from jcra.criterion import DEFAULT_WEIGHTS
        from jcra.data.keypoint_layouts import get_layout
        from jcra.matcher import HungarianMatcher

        layout = get_layout(self.keypoint_layout)
        if self.model_overrides.get("num_keypoints", layout.num_keypoints) != layout.num_keypoints:
            raise ValueError(
                f"model_overrides.num_keypoints ({self.model_overrides['num_keypoints']!r}) must be "
                f"keypoint_layout {layout.name!r}'s {layout.num_keypoints}; leave it out, the layout sets it"
            )

        matcher_keys = [name for name in inspect.signature(HungarianMatcher).parameters if name != "sigmas"]
        _check_keys("matcher_weights", self.matcher_weights, matcher_keys)
        _check_keys("loss_weights", self.loss_weights, list(DEFAULT_WEIGHTS))
        for name in ("train_ann", "val_ann"):
            if not Path(getattr(self, name)).is_file():
                raise ValueError(f"{name}: annotation file {getattr(self, name)!r} does not exist")
        for name in ("train_images", "val_images"):
            if not Path(getattr(self, name)).is_dir():
                raise ValueError(f"{name}: image folder {getattr(self, name)!r} does not exist")

    def training_scales(self) -> list[int] | range:
        """The short sides training draws from, each equally likely."""
        if self.train_scale_mode == "range":
            return range(self.train_scales[0], self.train_scales[1] + 1)
        return list(self.train_scales)


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


def config_from(node) -> TrainConfig:
    """A :class:`TrainConfig` from the composed hydra config's ``train`` node (unknown keys raise)."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(node, resolve=True)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; valid: {sorted(known)}")
    return TrainConfig(**values)
