"""File writes that land whole or not at all: a killed run, a full disk or a power loss leaves the
previous file (or none), never a cut one that a later run would read."""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through ``write(file)`` atomically: a temporary file in the same folder, then a
    rename, so a run killed mid-write leaves the previous file intact. A write that fails for the
    file system's reason (a full disk) raises an OSError naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide it from other users (an eval job)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        # torch.save reports a full disk as a RuntimeError; a Ctrl-C stays a KeyboardInterrupt
        cause = _os_error(err) if isinstance(err, Exception) else None
        if cause is not None and cause is not err:
            if cause.errno is None:
                raise OSError(f"cannot write {path}: {cause}") from err
            raise OSError(cause.errno, f"cannot write {path}: {cause.strerror or cause}") from err
        raise
    # the rename itself survives a power loss only once the folder's entry is on disk
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind ``err`` (itself, or one it was raised from or during), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def write_text_atomically(path: str | Path, text: str) -> None:
    """``path`` holds ``text`` (UTF-8) whole or not at all (:func:`write_atomically`)."""
    write_atomically(path, lambda f: f.write(text.encode()))


def _umask() -> int:
    """The process's file-creation mask (reading it means setting it: set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_partial_writes(path: str | Path) -> list[Path]:
    """Delete the temporary files that writes of ``path`` killed before their rename left beside it
    (a SIGKILL skips :func:`write_atomically`'s cleanup); returns them. Call before a run writes."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale
