"""Fit a branch's closed-form readout before any gradient step (``BranchSetup.fit_readout``).

The audio-LLM's ``attribute_readout: ridge`` reads arousal/valence/dominance from the clip means of the frozen
encoder's cached frames (``llmser.models.readout``). Those features never change during training, so the readout
is fitted once, first: on the train split, its ridge penalty chosen per attribute on dev (the classical baseline
chooses its own the same way), or by leave-one-out on train when the run has no dev split. Stage 1 and the full
training then run with it fixed, and the model saves it with its other weights.

Every process fits the same readout on the same whole splits (closed form, deterministic), so no rank differs;
each holds its own copy of the features, so a node needs the fit's host memory once per process
(``RidgeReadout.fit_bytes``; ``llmser plan`` prints it), and the fit refuses up front where it would not fit.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from llmser.models.readout import RidgeReadout
from llmser.schema import ATTRIBUTES
from llmser.utils.logging import get_logger

logger = get_logger(__name__)


def fit_readout(setup: Any, recipe: Any, device: torch.device | str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Fit ``setup.model``'s readout on the train split (penalty on dev when there is one); returns what it chose."""
    start = time.perf_counter()
    model = setup.model
    _check_host_memory(model, len(setup.train_set), len(setup.eval_set) if setup.eval_set is not None else 0)
    x_train, y_train = _clip_features(model, setup.train_set, setup.collate_fn, recipe, device, progress, "train")
    dev = (_clip_features(model, setup.eval_set, setup.collate_fn, recipe, device, progress, "dev")
           if setup.eval_set is not None else (None, None))
    report = model.heads.readout.fit(x_train, y_train, *dev, alphas=model.config.readout_alphas,
                                       rescale=model.config.readout_rescale)
    chosen = dict(zip(ATTRIBUTES, report))
    seconds = time.perf_counter() - start
    logger.info("ridge readout fitted in %.1f s on %d train clips x %d features: %s", seconds, x_train.shape[0],
                x_train.shape[1], ", ".join(f"{name} alpha={c['alpha']:g} scale={c['scale']:.2f} ({_score(c)})" for name, c in chosen.items()))
    return {"readout": chosen, "readout_seconds": seconds}


def _check_host_memory(model: Any, train_rows: int, dev_rows: int) -> None:
    """Refuse before any work when the fit would not fit in this machine's available memory (it holds every clip's
    features at once, and an SVD of them): better a clear message now than an OOM kill after the feature pass."""
    features = model.heads.readout.mean.numel()
    need = RidgeReadout.fit_bytes(train_rows, dev_rows, features)["total"]
    available = available_memory_bytes()
    if available is not None and need > available:
        raise MemoryError(
            f"the ridge readout's fit needs ~{need / 2**30:.1f} GiB of host memory ({train_rows:,} train + "
            f"{dev_rows:,} dev clips x {features:,} features; llmser plan shows it) and this machine has "
            f"{available / 2**30:.1f} GiB available: set model.encoder_layers=last (one layer's features), or "
            "model.attribute_readout=head (a trained head, no closed-form fit), or run where there is more memory")


def available_memory_bytes() -> int | None:
    """The kernel's estimate of memory available without swapping (Linux ``MemAvailable``); None elsewhere."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _score(choice: dict) -> str:
    return f"dev CCC {choice['dev_ccc']:.3f}" if "dev_ccc" in choice else f"leave-one-out CCC {choice['loo_ccc']:.3f}"


@torch.no_grad()
def _clip_features(model: Any, dataset: Any, collate_fn: Any, recipe: Any, device: torch.device | str,
                   progress: bool, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, F) readout inputs and (N, 3) attribute targets (NaN where a clip has none) of a whole split."""
    from tqdm.auto import tqdm

    from llmser.training.engine import ordered_batches

    features, targets = [], []
    size = recipe.data.eval_batch_size
    for _, batch in tqdm(ordered_batches(dataset, collate_fn, size, device), total=-(-len(dataset) // size),
                         desc=f"ridge readout: {split} clips", disable=not progress, leave=False):
        features.append(model.readout_inputs(batch["speech_frames"], batch["frame_mask"]).cpu())
        targets.append(batch["attributes"].float().cpu())
    return torch.cat(features), torch.cat(targets)
