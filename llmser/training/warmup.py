"""Stage 1 of a staged branch: train its front end alone before the full model.

The audio-LLM's speech tokens enter at the bottom of the LLM, so every step of the full model runs
forward and backward through all of its layers (~5 s a step for SmolLM2-135M on 2 CPU cores). Its
Q-Former and speech heads, on frames the frozen encoder already cached, cost ~0.1-0.2 s a step. A branch
that sets ``BranchSetup.warmup_steps`` gets that many cheap steps first: only the model's
``warmup_parameters()`` move, trained on ``warmup_outputs(**batch)`` with the recipe's own loss (class
weights, CCC) on the train split. The full training then starts from a front end that already carries
emotion instead of a random one (``docs/audio_llm.md`` has the dev figures).

Every process runs the same stage 1 (same seed, same batches, the whole train split): it is cheap,
needs no communication, and leaves identical weights on every rank before the engine wraps the model.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from llmser.utils.logging import get_logger

logger = get_logger(__name__)


def warm_up(setup: Any, recipe: Any, device: torch.device | str = "cpu", progress: bool = True) -> dict[str, float]:
    """Run ``setup.warmup_steps`` steps of stage 1 on ``setup.model``; returns the mean loss of the last
    tenth of the steps and the seconds taken."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from llmser.training.losses import MultiTaskLoss

    model, steps = setup.model, setup.warmup_steps
    params = model.warmup_parameters()
    generator = torch.Generator().manual_seed(recipe.train.seed)
    loader = DataLoader(setup.train_set, batch_size=recipe.data.batch_size, shuffle=True, drop_last=True,
                        collate_fn=setup.collate_fn, generator=generator)
    if len(loader) == 0:
        raise ValueError(f"stage 1 needs at least one full batch: the train split has {len(setup.train_set)} examples "
                         f"and data.batch_size is {recipe.data.batch_size}; lower the batch size")
    criterion = MultiTaskLoss(recipe.loss, setup.class_counts).to(device)
    optimizer = torch.optim.AdamW(params, lr=setup.warmup_lr, weight_decay=recipe.optim.weight_decay)
    moving = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in moving]
    for p in frozen:  # nothing but the front end moves, and no gradient is kept for the rest
        p.requires_grad_(False)
    model.train()
    losses: list[float] = []
    start, epoch = time.perf_counter(), 0
    bar = tqdm(total=steps, desc="stage 1: speech front end", disable=not progress, leave=False)
    try:
        while len(losses) < steps:
            if hasattr(setup.train_set, "set_epoch"):
                setup.train_set.set_epoch(epoch)
            for batch in loader:
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                out = model.warmup_outputs(**batch)
                loss = criterion(out.class_logits, out.attributes, batch, out.auxiliary_class_logits)["loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, recipe.optim.grad_clip or float("inf"))
                optimizer.step()
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                if len(losses) == steps:
                    break
            epoch += 1
    finally:
        bar.close()
        for p in frozen:
            p.requires_grad_(True)
    tail = losses[-max(1, steps // 10):]
    result = {"warmup_loss": sum(tail) / len(tail), "warmup_seconds": time.perf_counter() - start}
    logger.info("stage 1: %d steps of the front end alone in %.1f s (loss %.3f over the last %d steps)",
                steps, result["warmup_seconds"], result["warmup_loss"], len(tail))
    return result
