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
- **Never random weights in place of missing ones.** :func:`check_state` / :func:`load_state_checked`
  refuse a file that lacks a tensor the model declares, holds one it does not, or has another shape,
  naming the file, the tensors and both shapes (``load_state_dict(strict=False)`` would leave the
  missing ones at their random initialisation, silently).
- **Finite numbers only.** NaN/Inf tensors are refused before a file is written (a diverged run must
  not overwrite a good checkpoint) and when one is read.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmser.utils.io import atomic_write_bytes, missing

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
            "unpickling can run arbitrary code. Re-save them with save_pretrained(..., safe_serialization=True); "
            f"{_CONVERT_HINT}; then delete the pickle files")
    return folder


def links_out_of(folder: str | Path, boundary: str | Path | None = None) -> list[str]:
    """Symbolic links under ``folder`` that point outside ``boundary`` (default: ``folder``), or nowhere."""
    import os

    folder = Path(folder)
    root = Path(boundary or folder).resolve()
    found = []
    for current, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            item = Path(current) / name
            if not item.is_symlink():
                continue
            target = item.resolve()
            if not target.exists() or not target.is_relative_to(root):
                found.append(f"{item.relative_to(folder).as_posix()} -> {os.readlink(item)}")
    return sorted(found)


def check_no_outside_links(folder: str | Path, boundary: str | Path | None = None) -> Path:
    """Refuse a folder to be copied or uploaded whose symlinks lead outside it: copying follows them, so a
    link to ``~/.ssh/id_rsa`` or another project's file would be published as if it belonged to the model."""
    found = links_out_of(folder, boundary)
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise UnsafeFolderError(f"{folder} holds symbolic links that point outside {boundary or folder} or nowhere "
                                f"({shown}); llmser copies and uploads only the folder's own files. Replace each link "
                                "by a copy of the file it should hold, or delete it")
    return Path(folder)


def load_safetensors(path: str | Path, framework: str = "pt") -> dict[str, Any]:
    """Tensors of a safetensors file (``framework="np"``: numpy arrays), with errors that name the file and the fix;
    NaN/Inf weights are refused."""
    from safetensors.numpy import load_file as load_numpy
    from safetensors.torch import load_file as load_torch

    path = Path(path)
    refuse_pickles(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; the folder is incomplete")
    try:
        tensors = (load_numpy if framework == "np" else load_torch)(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises SafetensorError/OSError/ValueError variants
        raise WeightsError(
            f"{path}: not a complete safetensors file ({exc}); it was probably cut short by a crash, a full "
            "disk or a partial download. Resume from an earlier checkpoint-<step> folder, or copy or "
            "download it again") from None
    bad = nonfinite_tensors(tensors)
    if bad:
        raise WeightsError(f"{path}: tensor(s) {_names(bad)} hold NaN or infinite values; the run that wrote it had "
                           "diverged. Use an earlier checkpoint, or retrain with a lower learning rate")
    return tensors


def nonfinite_tensors(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors holding NaN or Inf."""
    import numpy as np
    import torch

    def bad(t: Any) -> bool:
        if isinstance(t, torch.Tensor):
            return t.is_floating_point() and not bool(torch.isfinite(t).all())
        return isinstance(t, np.ndarray) and t.dtype.kind == "f" and not bool(np.isfinite(t).all())

    return [name for name, t in tensors.items() if bad(t)]


def _names(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_state(expected: Mapping[str, Any], found: Mapping[str, Any], path: str | Path, *,
                optional: tuple[str, ...] = ()) -> None:
    """Refuse ``found`` (tensors read from ``path``) unless it holds every tensor of ``expected`` (a model's
    state dict; names starting with an ``optional`` prefix may be absent), nothing else, and each with the
    model's shape. All differences are listed in one :class:`WeightsError`."""
    missing = [k for k in expected if k not in found and not k.startswith(optional)]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} is {tuple(found[k].shape)} in the file but {tuple(expected[k].shape)} in the model"
              for k in found if k in expected and tuple(found[k].shape) != tuple(expected[k].shape)]
    problems = ([f"missing {len(missing)} tensor(s) the model declares: {_names(missing)}"] if missing else []) + \
               ([f"{len(unexpected)} tensor(s) the model does not have: {_names(unexpected)}"] if unexpected else []) + \
               shapes[:5] + ([f"and {len(shapes) - 5} more shape mismatches"] if len(shapes) > 5 else [])
    if problems:
        raise WeightsError(f"{path} does not fit this model: " + "; ".join(problems) + ". It was saved by another "
                           "config (load it with the config saved beside it), or the folder is damaged: save or "
                           "download it again")


def load_state_checked(module: Any, path: str | Path, *, optional: tuple[str, ...] = (),
                       state: Mapping[str, Any] | None = None) -> None:
    """Load ``path`` (or the already read ``state`` from it) into ``module`` after :func:`check_state`."""
    state = load_safetensors(path) if state is None else state
    check_state(module.state_dict(), state, path, optional=optional)
    module.load_state_dict(dict(state), strict=False)


def save_safetensors(tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write torch tensors or numpy arrays (contiguous CPU copies) to ``path`` atomically; returns the path."""
    import numpy as np

    path = Path(path)
    numpy_arrays = bool(tensors) and all(isinstance(v, np.ndarray) for v in tensors.values())
    if numpy_arrays:
        plain = {name: np.ascontiguousarray(v) for name, v in tensors.items()}
    else:
        plain = {name: v.detach().contiguous().cpu() for name, v in tensors.items()}
    bad = nonfinite_tensors(plain)
    if bad:  # before anything is written: the previous good file stays
        raise WeightsError(f"refusing to write {path}: tensor(s) {_names(bad)} hold NaN or infinite values (the "
                           "training diverged); lower the learning rate, or resume from an earlier checkpoint")
    if numpy_arrays:
        from safetensors.numpy import save as save_numpy

        atomic_write_bytes(path, save_numpy(plain, metadata=metadata))
    else:
        from safetensors.torch import save as save_torch

        atomic_write_bytes(path, save_torch(plain, metadata=metadata))
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
        raise FileNotFoundError(f"{path} {missing(path)}; give the path of the checkpoint file")
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
