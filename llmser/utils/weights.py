"""Reading and writing weights safely: safetensors only, written atomically, errors that name the file.

Every ``save_pretrained``, checkpoint, feature cache, Hub transfer and the SALMONN import go through
these helpers, so the safety rules live in one place:

- **No pickles.** ``.bin``/``.pt``/``.pth``/``.ckpt``/``.pkl`` files can run arbitrary code when
  unpickled; llmser never loads them (:func:`refuse_pickles`, :func:`check_safe_folder`) and says how
  to convert a trusted one once. The one exception is :func:`load_torch_weights_only`, used only by
  ``llmser import-salmonn`` to read a released checkpoint once, with PyTorch's restricted unpickler.
- **Atomic writes.** :func:`save_safetensors` serialises in memory and replaces the target in one
  ``os.replace`` (``utils.io``): a crash leaves the previous file, never half of one.
- **Clear failures.** A truncated or foreign file raises :class:`WeightsError` naming it and the fix,
  not a low-level deserialisation error.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any

from llmser.utils.io import atomic_write_bytes

#: Pickle-based weight files: loading one can execute arbitrary code, so llmser never reads them.
PICKLE_PATTERNS: tuple[str, ...] = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt")
PICKLE_SUFFIXES: tuple[str, ...] = tuple(p[1:] for p in PICKLE_PATTERNS)
_CONVERT_HINT = ("If you trust the file, convert it once: "
                 "safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')")


class WeightsError(ValueError):
    """A weights file or folder llmser will not or cannot load; the message names it and the fix."""


class UnsafeFolderError(WeightsError):
    """A folder that holds pickle weight files."""


def is_pickle(name: str) -> bool:
    return any(fnmatch.fnmatch(name.lower(), pattern) for pattern in PICKLE_PATTERNS)


def refuse_pickles(path: str | Path) -> None:
    """Raise if ``path`` is (or is a folder holding only) pickle weights, with the way to convert them."""
    path = Path(path)
    if path.is_file():
        pickles = [path] if is_pickle(path.name) else []
    elif path.is_dir() and not any(path.glob("*.safetensors")):
        pickles = sorted(p for p in path.iterdir() if is_pickle(p.name))
    else:
        pickles = []
    if pickles:
        names = ", ".join(p.name for p in pickles[:5])
        raise WeightsError(f"{path}: holds only pickle weights ({names}); llmser loads safetensors only, because "
                           f"unpickling an untrusted file can run arbitrary code. {_CONVERT_HINT}")


def pickle_files(folder: str | Path) -> list[str]:
    """Relative paths of pickle weight files under ``folder`` (``.git`` and caches skipped)."""
    folder = Path(folder)
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not {".git", ".cache"} & set(rel.parts) and is_pickle(rel.name):
            found.append(rel.as_posix())
    return found


def check_safe_folder(folder: str | Path) -> Path:
    """Raise :class:`UnsafeFolderError` if ``folder`` holds pickle weights anywhere; returns the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    found = pickle_files(folder)
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise UnsafeFolderError(
            f"{folder} holds pickle weight files ({shown}); llmser loads and shares safetensors only, because "
            "unpickling can run arbitrary code. Re-save them with save_pretrained(..., safe_serialization=True) "
            "or safetensors.torch.save_file, then delete the pickle files")
    return folder


def load_safetensors(path: str | Path) -> dict[str, Any]:
    """``safetensors.torch.load_file`` with errors that name the file and say what to do."""
    from safetensors.torch import load_file

    path = Path(path)
    refuse_pickles(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; the folder is incomplete")
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises SafetensorError/OSError/ValueError variants
        raise WeightsError(
            f"{path}: not a complete safetensors file ({exc}); it was probably cut short by a crash, a full "
            "disk or a partial download. Resume from an earlier checkpoint-<step> folder, or copy or "
            "download it again") from None


def save_safetensors(tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` (contiguous CPU copies) to ``path`` atomically; returns the path."""
    from safetensors.torch import save

    path = Path(path)
    plain = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    atomic_write_bytes(path, save(plain, metadata=metadata))
    return path


def load_torch_weights_only(path: str | Path) -> Any:
    """Read a PyTorch pickle checkpoint with ``torch.load(weights_only=True)``: the one pickle read in llmser.

    Why it exists: some checkpoints are released only as ``.pth`` (SALMONN's ``salmonn_v1.pth``), and
    ``llmser import-salmonn`` converts such a file once into safetensors. ``weights_only=True`` uses
    PyTorch's restricted unpickler, which rebuilds only tensors and plain containers (dict, list,
    str, numbers) and refuses any other object, so the file cannot run code while it is read. A file
    that needs full unpickling is refused here, never retried with ``weights_only=False``. Everything
    else in llmser reads safetensors (:func:`load_safetensors`).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give the path of the checkpoint file")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"WeightsUnpickler error: ([^\n]*)", str(exc))
        first = found.group(1).strip() if found else type(exc).__name__
        raise WeightsError(
            f"{path}: refused - the file holds objects other than tensors and plain containers, which only full "
            f"unpickling (able to run arbitrary code) could rebuild ({first}). llmser reads pickle checkpoints with "
            "weights_only=True only; re-save the tensors from a trusted environment with "
            "safetensors.torch.save_file(state_dict, 'model.safetensors') and import that file") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({exc}); download it again") from None
