"""Output files checked before the work, locked while written, and matched to their inputs on resume.

A run that predicts for an hour and then finds its ``--out`` is a folder, on a read-only or full disk,
or being written by a second process, has lost the hour (or, worse, a file silently holds the rows of
two runs). Every command that writes results calls these before it starts:

    check_output_file(out, expected_bytes=200 * len(files))   # writable, not a folder, space left
    with OutputLock(out):                                     # a second writer is refused, naming the first
        fingerprint = run_fingerprint(system=..., inputs=..., options=...)
        check_resume(out, fingerprint)                        # an existing file came from the same run
        ...
        write_fingerprint(out, fingerprint)

- **Lock**: ``.<name>.lock`` beside the output, created with ``O_CREAT | O_EXCL`` (atomic on local
  and NFSv3+ filesystems), holding the owner's pid, host and command. A lock whose pid is dead on
  this host is stale (a crash or kill) and is taken over; one from another host is reported with
  the way to remove it by hand.
- **Fingerprint**: ``.<name>.fingerprint.json`` beside the output: hashes of the system, the inputs
  and the options. Resuming a file written for another system or other inputs would mix two runs'
  rows in one file, so it is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class OutputError(ValueError):
    """An output location llmser cannot or must not write now; the message names it and what to do."""


#: Kept free beyond the estimate: logs, temporary copies made by atomic writes.
_SPACE_MARGIN = 16 * 1024 * 1024


def check_output_file(path: str | Path, expected_bytes: int = 0, what: str = "--out") -> Path:
    """Refuse an output file that cannot be written, before any work: a folder, an unwritable place,
    or too little free space for ``expected_bytes`` (twice: atomic writes keep the old copy until
    the new one is complete)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name inside it (e.g. {path / 'predictions.csv'})")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path} exists and is read-only; make it writable or choose another file")
    _check_folder_writable(path.parent, what, expected_bytes * 2)
    return path


def check_output_dir(path: str | Path, expected_bytes: int = 0, what: str = "--out") -> Path:
    """Refuse an output folder that is a file, cannot be created or written, or has too little space."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder; remove it or choose another folder")
    _check_folder_writable(path, what, expected_bytes)
    return path


def _check_folder_writable(folder: Path, what: str, expected_bytes: int) -> None:
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputError(f"{what}: cannot create {folder}: {existing} is a file, not a folder")
    try:  # os.access says yes on a read-only mount for root; a real write answers truly
        handle, probe = tempfile.mkstemp(prefix=".llmser-write-check.", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{what}: cannot write in {existing} ({exc.strerror or exc}); choose a writable "
                          "location") from None
    free = shutil.disk_usage(existing).free
    if expected_bytes and free < expected_bytes + _SPACE_MARGIN:
        raise OutputError(f"{what}: {existing} has {_size(free)} free, and this run needs about "
                          f"{_size(expected_bytes + _SPACE_MARGIN)}; free some space or choose another disk")


def _nearest_existing(folder: Path) -> Path:
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# ---------------------------------------------------------------------- the lock


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


class OutputLock:
    """Exclusive right to write ``path`` for the lifetime of a ``with`` block (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = lock_path(self.path)
        self._held = False

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "command": " ".join(sys.argv)[:500]}
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_owner(self.lock)
                if _is_stale(holder):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.lock)
                    continue
                raise OutputError(self._held_message(holder)) from None
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(owner, handle)
            self._held = True
            return
        raise OutputError(self._held_message(_read_owner(self.lock)))

    def release(self) -> None:
        if self._held:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock)
            self._held = False

    def _held_message(self, holder: dict[str, Any] | None) -> str:
        who = (f"process {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')}: "
               f"{holder.get('command') or '?'})") if holder else "another process"
        return (f"{self.path} is being written by {who}; wait for it to finish or choose another output. If that "
                f"process is gone (e.g. on another machine), delete {self.lock}")


def _read_owner(lock: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_stale(holder: dict[str, Any] | None) -> bool:
    """A lock whose process is dead on this host (a lock from another host is never assumed stale)."""
    if not holder or holder.get("host") != socket.gethostname():
        return False
    try:
        pid = int(holder["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


# ---------------------------------------------------------------------- what an output was made from


def fingerprint_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.fingerprint.json")


def folder_digest(folder: str | Path) -> str:
    """A hash of a folder's files by relative path, size and modification time (cheap for big weights)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for item in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = item.stat()
        digest.update(f"{item.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def files_digest(files: Iterable[str | Path]) -> str:
    """A hash of input files by name and size (their order does not matter)."""
    digest = hashlib.sha256()
    for item in sorted(str(Path(f).name) + "\0" + str(_file_size(f)) for f in files):
        digest.update(item.encode() + b"\n")
    return digest.hexdigest()


def _file_size(path: str | Path) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return -1


def run_fingerprint(**parts: Any) -> dict[str, str]:
    """``{part: sha256 of its JSON}``: e.g. ``run_fingerprint(system=..., inputs=..., options=...)``."""
    return {name: value if isinstance(value, str) and len(value) == 64 else
            hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
            for name, value in parts.items()}


def check_resume(path: str | Path, fingerprint: dict[str, str]) -> None:
    """Refuse to resume ``path`` unless it was written for the same ``fingerprint`` (see the docstring)."""
    path = Path(path)
    if not path.is_file():
        return
    side = fingerprint_path(path)
    try:
        recorded = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OutputError(f"{path} exists but llmser did not record what it was made from ({side} is missing), "
                          "so resuming could mix two runs' rows; delete it or choose another output") from None
    except (OSError, ValueError):
        raise OutputError(f"{side} is damaged; delete {path} and {side}, or choose another output") from None
    differ = [k for k in fingerprint if recorded.get(k) != fingerprint[k]]
    if differ:
        raise OutputError(f"{path} was written by another run (its {' and '.join(differ)} differ from this run's); "
                          f"resuming would mix two runs' rows in one file. Delete it and {side.name}, or choose "
                          "another output")


def write_fingerprint(path: str | Path, fingerprint: dict[str, str]) -> None:
    from llmser.utils.io import atomic_write_json

    atomic_write_json(fingerprint_path(path), fingerprint)


@contextlib.contextmanager
def resumable_output(path: str | Path, fingerprint: dict[str, str], *, expected_bytes: int = 0,
                     writer: bool = True, what: str = "--out"):
    """Everything a resumable output needs, in one ``with``: checked before the work, locked while the
    block runs, refused if an existing file came from another run, fingerprinted for the next resume.
    Processes that only compute (``writer=False``, e.g. non-main ranks) just check the location."""
    check_output_file(path, expected_bytes, what)
    if not writer:
        yield
        return
    with OutputLock(path):
        check_resume(path, fingerprint)
        write_fingerprint(path, fingerprint)
        yield
