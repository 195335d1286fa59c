"""train.checkpoint: atomic writes readable by others, cleanup of killed writes, reads that name what is
wrong, and the generator states a resume restores."""

import dataclasses
import errno
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from jcra.files import remove_partial_writes, write_atomically
from train.checkpoint import (
    RESUME_FIELDS,
    check_resumable,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from train.config import TrainConfig


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_full_disk_is_named_with_the_file_however_the_writer_reports_it(tmp_path):
    """torch.save reports ENOSPC as "RuntimeError: unexpected pos ...", the cause only in its chain."""
    (tmp_path / "checkpoint.pt").write_bytes(b"before")

    def torch_save_on_a_full_disk(f):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:  # torch's message, the OSError only its context
            raise RuntimeError("[enforce fail] unexpected pos 1536 vs 1432")  # noqa: B904

    with pytest.raises(OSError, match=r"cannot write .*checkpoint\.pt: No space left on device") as info:
        write_atomically(tmp_path / "checkpoint.pt", torch_save_on_a_full_disk)
    assert info.value.errno == errno.ENOSPC
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"before"

    def interrupted_while_handling_an_os_error(f):
        try:
            raise OSError(errno.EIO, "Input/output error")
        except OSError:
            raise KeyboardInterrupt  # noqa: B904

    with pytest.raises(KeyboardInterrupt):  # a Ctrl-C must stay one (the run's exit status says so)
        write_atomically(tmp_path / "checkpoint.pt", interrupted_while_handling_an_os_error)


def test_checkpoints_are_as_readable_as_any_new_file(tmp_path):
    """Not mkstemp's 0600: an evaluation job run by another user must read them."""
    mask = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "checkpoint.pt", {"step": 1})
    finally:
        os.umask(mask)
    assert (tmp_path / "checkpoint.pt").stat().st_mode & 0o777 == 0o644


def test_save_creates_missing_folders(tmp_path):
    path = tmp_path / "runs" / "a" / "checkpoint.pt"
    save_checkpoint(path, {"step": 3})
    assert load_checkpoint(path)["step"] == 3


def test_only_this_checkpoints_killed_writes_are_removed(tmp_path):
    ours = [tmp_path / ".checkpoint.pt.abc123.tmp", tmp_path / ".checkpoint.pt.x.tmp"]
    others = [tmp_path / ".other.pt.abc123.tmp", tmp_path / "checkpoint.pt.tmp", tmp_path / "checkpoint.pt"]
    for path in ours + others:
        path.write_bytes(b"x")
    assert remove_partial_writes(tmp_path / "checkpoint.pt") == sorted(ours)
    assert [path.exists() for path in ours + others] == [False, False, True, True, True]


@pytest.mark.parametrize("payload", [[1, 2], torch.zeros(2)], ids=["list", "tensor"])
def test_a_file_that_is_not_a_dict_of_state_is_named(tmp_path, payload):
    path = tmp_path / "weights.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"weights\.pt: holds a .*not a dict"):
        load_checkpoint(path)
    torch.save({"model": {}}, path)
    with pytest.raises(ValueError, match=r"weights\.pt: missing step, epoch"):
        load_checkpoint(path, keys=("model", "step", "epoch"))


@pytest.mark.parametrize("written_before_tensor_states", [False, True], ids=["now", "older"])
def test_generator_states_round_trip_through_a_checkpoint(tmp_path, written_before_tensor_states):
    """Python's, NumPy's and torch's generators continue where the saved state left them, also from a
    checkpoint written when NumPy's state was saved as NumPy's own tuple (a uint32 array)."""
    state = rng_state()
    if written_before_tensor_states:
        state["numpy"] = np.random.get_state()
    save_checkpoint(tmp_path / "checkpoint.pt", {"rng": [state]})
    state = load_checkpoint(tmp_path / "checkpoint.pt")["rng"][0]
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1)  # move every generator elsewhere
    np.random.seed(1)
    torch.manual_seed(1)
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_a_checkpoint_numpy_1_pickled_loads_under_numpy_2(tmp_path):
    """NumPy 1 pickled its array rebuild as numpy.core's, NumPy 2 as numpy._core's: older checkpoints
    from either resume."""
    state = {**rng_state(), "numpy": np.random.get_state()}  # the older format: NumPy's own array
    path = tmp_path / "checkpoint.pt"
    torch.save({"rng": [state]}, path, _use_new_zipfile_serialization=False)  # one plain pickle stream
    # the pickle names globals as "module\nname\n": rename NumPy 2's module to NumPy 1's
    path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    assert b"numpy.core.multiarray\n_reconstruct" in path.read_bytes()
    set_rng_state(load_checkpoint(path)["rng"][0])
    assert np.random.get_state()[1].tolist() == state["numpy"][1].tolist()


def test_a_write_is_on_disk_before_its_rename_and_the_rename_after_it(tmp_path, monkeypatch):
    """The whole file is flushed and synced before it replaces the old one, from a temporary file beside
    it (a rename across file systems fails), and the folder is synced after: a power loss leaves the
    old file or the new one."""
    import stat

    path, synced, fsync = tmp_path / "out.bin", [], os.fsync

    def recording_fsync(fd):
        mode, size = os.fstat(fd).st_mode, os.fstat(fd).st_size
        synced.append(("folder" if stat.S_ISDIR(mode) else size, path.read_bytes()))
        fsync(fd)

    def write(f):
        assert sum(p.name.startswith(".out.bin.") for p in tmp_path.iterdir()) == 1
        f.write(b"x" * 1000)

    path.write_bytes(b"old")
    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_atomically(path, write)
    assert synced == [(1000, b"old"), ("folder", b"x" * 1000)]


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["JCRA_TEST_MARKER"]),))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, monkeypatch):
    """Checkpoints are shared (``jcra predict`` on somebody's model): reading one must not execute
    the pickled calls a crafted file holds."""
    marker = tmp_path / "ran"
    monkeypatch.setenv("JCRA_TEST_MARKER", str(marker))
    torch.save({"model": _RunsCode()}, tmp_path / "crafted.pt")
    with pytest.raises(ValueError, match=r"crafted\.pt: cannot be read .*not a file train.train") as err:
        load_checkpoint(tmp_path / "crafted.pt")
    assert not marker.exists()
    assert "GLOBAL" in str(err.value)  # what it would have called
    # and no advice to load it with weights_only=False, which would run that code
    assert "weights_only" not in str(err.value) and "Weights only" not in str(err.value)
    (tmp_path / "text.pt").write_text("x\n")  # not a pickle at all: the same kind of message
    with pytest.raises(ValueError, match=r"text\.pt: cannot be read") as err:
        load_checkpoint(tmp_path / "text.pt")
    assert "weights_only" not in str(err.value)
    # an exported TorchScript model: torch's reason kept, its advice dropped
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pt")
    with pytest.raises(ValueError, match=r"scripted\.pt: cannot be read .*not a file train.train") as err:
        load_checkpoint(tmp_path / "scripted.pt")
    assert "with TorchScript archives" in str(err.value) and "arbitrary code" not in str(err.value)


def test_torchs_refusal_of_a_global_that_needs_its_module_keeps_the_reason_not_the_advice():
    """torch's wording when a file names a global it loads only once that module is imported (a
    DTensor's; whether it is imported depends on what ran before, so the message is built here)."""
    from train.checkpoint import _reason

    reason = "``torch.distributed.tensor`` must be imported to load DTensors"
    advice = torch.serialization.UNSAFE_MESSAGE
    text = f"Weights only load failed. {reason}\n {advice}\nCheck the documentation of torch.load"
    assert _reason(pickle.UnpicklingError(text)) == f"not a file train.train writes: {reason}"


FREE_TO_CHANGE = {"out_dir", "resume", "epochs", "max_steps", "precision", "compile", "compile_whole",
                  "device", "num_workers", "val_ann", "val_images", "val_scale", "top_k", "eval_every",
                  "log_every", "checkpoint_every"}  # fmt: skip
"""What a resumed run may set anew (its length, speed, evaluation and logging): every other setting
changes what the checkpoint's step, sampler position and optimizer state mean."""


def _resume_config() -> TrainConfig:
    return TrainConfig(out_dir="run", train_ann="a.json", train_images="images", val_ann="v.json",
                       val_images="v", lr_drop_epochs=[3], model_overrides={"dropout": 0.0})  # fmt: skip


def _changed(value):
    """Another value of the setting's kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "2"
    if isinstance(value, list):
        return [*value, 7]
    if isinstance(value, dict):
        return {**value, "other": 1}
    return 7  # None


def test_every_setting_is_checked_on_resume_or_free_to_change():
    checked, free = set(RESUME_FIELDS), FREE_TO_CHANGE
    assert checked | free == {f.name for f in dataclasses.fields(TrainConfig)} and not checked & free


@pytest.mark.parametrize("name", RESUME_FIELDS)
def test_a_resume_with_a_checked_setting_changed_is_refused_naming_it(name):
    cfg = _resume_config()
    state = {"train_config": dataclasses.asdict(cfg), "rng": [None]}
    check_resumable(state, cfg, 1, Path("ckpt.pt"))
    changed = dataclasses.replace(cfg, **{name: _changed(getattr(cfg, name))})
    with pytest.raises(ValueError, match=rf"ckpt\.pt was written with other settings \({name} "):
        check_resumable(state, changed, 1, Path("ckpt.pt"))


def test_a_resume_compares_numbers_by_value_and_counts_processes():
    """A hydra override gives 30 where the file held 30.0; a checkpoint holds one RNG state a process."""
    cfg = _resume_config()
    saved = {**dataclasses.asdict(cfg), "rotation": 30, "train_scales": [256.0], "lr_drop_epochs": [3.0]}
    check_resumable({"train_config": saved, "rng": [None]}, cfg, 1, Path("ckpt.pt"))
    with pytest.raises(ValueError, match=r"ckpt\.pt was written by 2 processes, this run has 1"):
        check_resumable({"train_config": saved, "rng": [None, None]}, cfg, 1, Path("ckpt.pt"))
