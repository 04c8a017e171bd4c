"""Atomic file writes: a crash or a kill mid-write leaves the previous good file, never half a file.

Every report, checkpoint, cache entry and prediction file in llmser goes through these helpers:
write to a temporary file in the same folder, flush and fsync it, then ``os.replace`` it over the
target (atomic on POSIX and Windows for files on one filesystem).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; it replaces ``path`` only if the block succeeds."""
    if not any(flag in mode for flag in "wx"):
        raise ValueError(f"atomic_open writes whole files; mode must contain 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    binary = "b" in mode
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode.replace("x", "w"), encoding=None if binary else encoding,
                       newline=None if binary else newline) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL and not isinstance(exc, DiskFullError):
            raise _disk_full(exc, f"disk full while writing in {path.parent}: free space there and rerun") from None
        raise


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """The disk (or quota) filled while writing; the message names the folder and how to go on."""


@contextlib.contextmanager
def disk_full_says(folder: str | Path, then: str = "rerun with --resume") -> Iterator[None]:
    """Turn a full disk inside the block into one message naming ``folder`` (it was an OSError traceback)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        raise _disk_full(exc, f"disk full: free space in {folder} and {then}") from None


def _disk_full(exc: OSError, message: str) -> DiskFullError:
    error = DiskFullError(message)
    error.errno = exc.errno
    return error


@contextlib.contextmanager
def partial_dir(tmp: str | Path, owner: str | Path) -> Iterator[Path]:
    """``tmp``, a folder written before it is renamed into place: removed if the writing fails, so nothing
    half-written is left for a reader or a resume; a full disk is said as such, naming ``owner``."""
    tmp = Path(tmp)
    try:
        with disk_full_says(owner):
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def missing(path: str | Path, want: str = "file") -> str:
    """How a path that is not the ``want`` ("file" or "folder") a command needs is described in an error:
    "is a folder, not a file", "is a file, not a folder", or "does not exist"."""
    path = Path(path)
    if want == "file" and path.is_dir():
        return "is a folder, not a file"
    if want == "folder" and path.exists() and not path.is_dir():
        return "is a file, not a folder"
    return "does not exist"


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def replace_dir(completed: str | Path, target: str | Path) -> Path:
    """Move a fully written folder ``completed`` to ``target``, replacing any folder there.

    Folders cannot be swapped atomically, so the old ``target`` is first renamed to a backup
    (``.<name>.old``) and deleted only after the new one is in place: a kill at any point leaves a
    complete folder at ``target`` or at the backup, and ``recover_dir(target)`` puts the backup back.
    Deleting ``target`` first (then renaming) would leave nothing if killed in between.
    """
    completed, target = Path(completed), Path(target)
    backup = _backup_of(target)
    if target.exists():
        if backup.exists():
            shutil.rmtree(backup)  # a stale backup from an earlier kill; target is the good copy
        target.rename(backup)
    completed.rename(target)
    shutil.rmtree(backup, ignore_errors=True)
    return target


def recover_dir(target: str | Path) -> Path | None:
    """Undo a kill inside ``replace_dir``: restore ``target`` from its backup when only the backup exists."""
    target = Path(target)
    backup = _backup_of(target)
    if not target.exists() and backup.is_dir():
        try:
            backup.rename(target)
        except OSError:
            if not target.exists():  # another process restored it first: fine
                raise
    return target if target.exists() else None


def _backup_of(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and paths show up in metric dicts; make them plain JSON.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
