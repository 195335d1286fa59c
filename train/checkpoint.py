"""Atomic checkpoints holding everything a killed run needs to continue at the same step, and the
settings a resumed run must share with its checkpoint."""

import contextlib
import fcntl
import json
import os
import random
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from jcra.files import write_atomically
from train.config import TrainConfig


def rng_state() -> dict:
    """The Python, NumPy and torch (CPU and CUDA) generator states, as Python values and tensors only
    (what ``torch.load(weights_only=True)`` reads)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (or, in older checkpoints, NumPy's own state tuple)."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_HELD_LOCKS: set[int] = set()
"""Descriptors of the locks :func:`out_dir_lock` holds, which a forked child (a data loader worker)
closes: otherwise its copy would keep the lock after the run ended, while it notices that."""


def _close_held_locks() -> None:
    while _HELD_LOCKS:
        os.close(_HELD_LOCKS.pop())


os.register_at_fork(after_in_child=_close_held_locks)


@contextlib.contextmanager
def out_dir_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir/.lock`` while a run writes there: a second run raises a RuntimeError rather than
    write beside it (a resumed run started while the killed one's processes still train, as the
    workers of a SIGKILLed torchrun do). An flock: the system releases it when its process ends,
    however it ends."""
    fd = os.open(out_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace") or "a process"
            raise RuntimeError(
                f"out_dir: {out_dir} is in use by another run ({holder}); stop it first (a killed torchrun "
                "can leave its workers training) or choose another out_dir"
            ) from None
        except OSError as err:  # a file system without locks (some network mounts): run, and say so
            message = f"out_dir: {out_dir} cannot be locked ({err}); nothing stops a second run there"
            warnings.warn(message, stacklevel=3)  # the line that takes the lock (past contextlib)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        _HELD_LOCKS.add(fd)
        yield
    finally:
        _HELD_LOCKS.discard(fd)
        os.close(fd)  # closing the last descriptor releases the lock


def plain(value):
    """``value`` with paths as strings and NumPy numbers as Python ones, through dicts, lists and
    tuples: a configuration as ``torch.load(weights_only=True)`` reads it back (a ``Path`` or a
    ``numpy.float64`` setting, which the configuration accepts, is a global it refuses)."""
    if isinstance(value, dict):
        return {plain(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain(item) for item in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (:func:`jcra.files.write_atomically`)."""
    write_atomically(path, lambda f: torch.save(state, f))


def _older_rng_globals() -> list:
    """What checkpoints written before :func:`rng_state` held tensors pickled of NumPy's generator
    state (a uint32 array): NumPy's array rebuilding, which ``weights_only`` loading must be allowed."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    rebuild = multiarray._reconstruct
    # under both of its names: NumPy 1 pickled numpy.core's, NumPy 2 pickles numpy._core's
    names = [(rebuild, f"numpy.{core}.multiarray._reconstruct") for core in ("core", "_core")]
    return [*names, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def existing_checkpoint(path: str | Path) -> Path:
    """``path`` if it is a file, else a ValueError naming it (checked before anything is written)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint path {str(path)!r} does not exist")
    return path


def _reason(err: Exception) -> str:
    """What went wrong, without torch's advice (on a weights-only refusal) to load the file with
    ``weights_only=False`` or to allow what it holds: either would run whatever code the file holds, and
    checkpoints of ours never need it."""
    text = str(err)
    advice = getattr(torch.serialization, "UNSAFE_MESSAGE", "In PyTorch 2.6, we changed the default")
    refused = text.startswith("Weights only load failed") or advice in text
    if not refused:
        return text
    text = text.replace(advice, "").split("Check the documentation of torch.load")[0]
    marker = "WeightsUnpickler error:"
    text = text.split(marker, 1)[1] if marker in text else text.replace("Weights only load failed.", "")
    text = text.split(" Please use")[0]  # how to allow a global
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    told = " ".join(line for line in lines if not line.startswith("Please file"))
    return f"not a file train.train writes: {told or 'weights-only loading refused it'}"


def load_checkpoint(path: str | Path, map_location="cpu", keys: tuple[str, ...] = ()) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; ValueError naming ``path`` if it is missing,
    unreadable, or not a dict holding every one of ``keys``."""
    path = existing_checkpoint(path)
    try:
        # weights_only: tensors and plain Python values only, so a shared checkpoint runs no code
        with torch.serialization.safe_globals(_older_rng_globals()):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated or foreign file fails anywhere in the unpickler, with any type
        raise ValueError(f"checkpoint {path}: cannot be read ({type(err).__name__}: {_reason(err)})") from err
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path}: holds a {type(state).__name__}, not a dict of training state")
    missing = [key for key in keys if key not in state]
    if missing:
        raise ValueError(f"checkpoint {path}: missing {', '.join(missing)} (not written by train.train?)")
    return state


RESUME_FIELDS = ("model", "model_overrides", "keypoint_layout", "train_ann", "train_images", "train_scales",
                 "train_scale_mode", "train_max_size", "crop_scale", "max_size", "rotation", "shear",
                 "train_negatives", "batch_size", "grad_accum", "seed", "lr", "lr_backbone_mult",
                 "lr_offsets_mult", "weight_decay", "clip_grad", "lr_drop_epochs", "lr_gamma",
                 "matcher_weights", "loss_weights", "oks_mode", "encoder_oks", "heatmap_target")  # fmt: skip
"""Settings a resumed run must share with its checkpoint: under others, the sampler's position and the
restored parameters, optimizer and schedule would silently mean something else. (``epochs``,
``max_steps``, ``precision``, compiling, evaluation, logging and workers may change.)"""

SAVED_BEFORE = {
    "oks_mode": "linear",
    "encoder_oks": True,
    "heatmap_target": "fixed",
    "train_scale_mode": "list",
    "train_max_size": None,
    "crop_scale": None,
    "shear": 0.0,
    "train_negatives": False,
}
"""The settings of checkpoints written before these fields existed (their losses had them fixed)."""

EXTENT_SCALE_BEFORE = 0.25
"""The decoder's offset scale of checkpoints that do not record one (written before it took PETR's 0.5)."""


def model_overrides(state: dict) -> dict:
    """The ``build_model`` overrides a checkpoint's weights were trained with: its recorded ones, with
    the settings later versions changed pinned to what it was written under."""
    return {"extent_scale": EXTENT_SCALE_BEFORE, **state["model_config"]["overrides"]}


CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng", "step", "epoch", "batch_in_epoch")
"""What a training checkpoint holds for a resume (:func:`train` writes more)."""


def check_resumable(state: dict, cfg: TrainConfig, world: int, path: Path) -> None:
    """ValueError naming every setting in :data:`RESUME_FIELDS` that differs from the checkpoint's, or
    a different number of processes (each resumes its own sampler position and RNG)."""
    saved = {**SAVED_BEFORE, **state.get("train_config", {})} if state.get("train_config") else {}
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
    """Paths resolved, sequences as lists (numbers compare by value, 30 == 30.0): equal settings compare
    equal."""
    if name in ("train_ann", "train_images"):
        return Path(value).resolve()
    return json.loads(json.dumps(value))
