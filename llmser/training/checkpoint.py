"""Resumable training checkpoints in safetensors + JSON (no pickles).

A checkpoint folder ``checkpoint-<step>/`` holds the trainable weights, the optimiser state (tensors
in safetensors, hyper-parameters in JSON), the scheduler and trainer state, and every process's RNG
state, so ``--resume`` continues exactly where the run stopped. Folders are written under a
temporary name and renamed when complete: a kill mid-save leaves the previous checkpoint intact.

Loading is safetensors only: a folder holding only pickles (``.bin``, ``.pt``, ...) is refused,
because unpickling runs whatever code the file carries (``llmser.utils.weights``). A truncated,
foreign or mismatched checkpoint gets a ``CheckpointError`` naming it and what to do.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmser.utils.io import atomic_write_json, partial_dir, recover_dir, replace_dir
from llmser.utils.weights import WeightsError, load_safetensors, refuse_pickles, save_safetensors

CHECKPOINT_PREFIX = "checkpoint-"


class CheckpointError(WeightsError):
    """A checkpoint llmser will not or cannot resume from; the message names it and the fix."""


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    state = model.state_dict()
    # buffers (e.g. norm statistics) travel too: they change during training
    buffers = {n for n, _ in model.named_buffers()}
    return {k: v.detach().contiguous().cpu().clone() for k, v in state.items() if k in names or k in buffers}


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_checkpoint(directory: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, trainer_state: dict[str, Any], is_main: bool, rank: int,
                    barrier: Any = None) -> Path:
    """Write ``directory`` atomically (main process writes shared files; each rank its RNG state)."""
    tmp = directory.with_name(directory.name + ".partial")
    with partial_dir(tmp, owner=directory.parent):  # a failed save (a full disk) leaves no half checkpoint
        if is_main:
            if tmp.exists():
                shutil.rmtree(tmp)  # left by a kill mid-save; never loaded
            tmp.mkdir(parents=True)
            save_safetensors(trainable_state_dict(model), tmp / "trainable.safetensors")
            tensors, meta = _optimizer_to_files(optimizer)
            save_safetensors(tensors, tmp / "optimizer.safetensors")
            atomic_write_json(tmp / "optimizer.json", meta)
            atomic_write_json(tmp / "scheduler.json", scheduler.state_dict())
            atomic_write_json(tmp / "trainer_state.json", trainer_state)
        if barrier is not None:
            barrier()
        atomic_write_json(tmp / f"rng_rank{rank}.json", rng_state())
        if barrier is not None:
            barrier()
        if is_main:
            replace_dir(tmp, directory)  # an existing folder of that step stays until the new one is in place
    if barrier is not None:
        barrier()
    return directory


def load_checkpoint(directory: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, rank: int) -> dict[str, Any]:
    """Restore everything ``save_checkpoint`` wrote; returns the trainer state."""
    directory = Path(directory)
    recover_dir(directory)
    refuse_pickles(directory)
    required = ["trainable.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json",
                "trainer_state.json"]
    missing = [name for name in required if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {directory} is incomplete (missing {', '.join(missing)}); "
                                "resume from an earlier checkpoint-<step> folder")
    weights = load_safetensors(directory / "trainable.safetensors")
    try:
        unexpected = model.load_state_dict(weights, strict=False).unexpected_keys
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"checkpoint {directory} does not fit this model ({str(exc)[:300]}); resume with "
                              "the recipe that wrote it, or start a new output_dir") from None
    if unexpected:
        raise CheckpointError(f"checkpoint {directory} does not fit this model (unexpected {unexpected[:5]}); "
                              "was it written by another recipe? Resume with that recipe or start a new output_dir")
    meta = _read_json(directory / "optimizer.json")
    optimizer.load_state_dict(_optimizer_from_files(load_safetensors(directory / "optimizer.safetensors"), meta))
    scheduler.load_state_dict(_read_json(directory / "scheduler.json"))
    rng_file = directory / f"rng_rank{rank}.json"
    if rng_file.is_file():
        set_rng_state(_read_json(rng_file))
    return _read_json(directory / "trainer_state.json")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); the checkpoint is damaged, resume from an "
                              "earlier checkpoint-<step> folder") from None


def latest_checkpoint(output_dir: Path) -> Path | None:
    candidates = [p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*")
                  if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return max(candidates, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]), default=None)


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    candidates = sorted((p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*")
                         if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()),
                        key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))
    for old in candidates[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
