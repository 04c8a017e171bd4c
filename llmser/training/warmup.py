"""Stage 1 of a staged branch: train its front end alone before the full model.

The audio-LLM's speech tokens enter at the bottom of the LLM, so every step of the full model runs
forward and backward through all of its layers (~5 s a step for SmolLM2-135M on 2 CPU cores). Its
Q-Former and speech heads, on frames the frozen encoder already cached, cost ~0.1-0.2 s a step. A branch
that sets ``BranchSetup.warmup_steps`` gets that many cheap steps first: only the model's
``warmup_parameters()`` move, trained on ``warmup_outputs(**batch)`` with the recipe's own loss (class
weights, CCC) on the train split. The full training then starts from a front end that already carries
emotion instead of a random one (``docs/audio_llm.md`` has the dev figures).

With ``BranchSetup.warmup_eval_every`` > 0 and a dev split, stage 1 scores the front end on dev that often
(the recipe's ``train.metric_for_best``, as the engine's early stopping) and ends on its best state, not its
last: on 57-80 dev files a front end's dev macro-F1 swings by +-0.03 between evaluations 25 steps apart, and
stage 2 keeps what stage 1 hands it.

Every process runs the same stage 1 (same seed, same batches, the whole train and dev splits): it is cheap,
needs no communication, and leaves identical weights on every rank before the engine wraps the model.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from llmser.utils.logging import get_logger

logger = get_logger(__name__)


def warm_up(setup: Any, recipe: Any, device: torch.device | str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Run ``setup.warmup_steps`` steps of stage 1 on ``setup.model``; returns the mean loss of the last
    tenth of the steps and the seconds taken, and with dev selection the step kept and its dev scores."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from llmser.training.engine import to_device
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
    stage_one_only = [p for p in params if not p.requires_grad]  # frozen again for stage 2
    for p in frozen:  # nothing but the front end moves, and no gradient is kept for the rest
        p.requires_grad_(False)
    for p in stage_one_only:
        p.requires_grad_(True)
    eval_every = setup.warmup_eval_every if setup.eval_set is not None else 0
    selection = _Selection(recipe.train.metric_for_best, model, params)
    model.train()
    losses: list[float] = []
    start, epoch = time.perf_counter(), 0
    bar = tqdm(total=steps, desc="stage 1: speech front end", disable=not progress, leave=False)
    try:
        while len(losses) < steps:
            if hasattr(setup.train_set, "set_epoch"):
                setup.train_set.set_epoch(epoch)
            for batch in loader:
                batch = to_device(batch, device)
                out = model.warmup_outputs(**batch)
                loss = criterion(out.class_logits, out.attributes, batch, out.auxiliary_class_logits)["loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, recipe.optim.grad_clip or float("inf"))
                optimizer.step()
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                if eval_every and (len(losses) % eval_every == 0 or len(losses) == steps):
                    selection.offer(len(losses), _score_front_end(setup, recipe, device))
                    model.train()
                if len(losses) == steps:
                    break
            epoch += 1
    finally:
        bar.close()
        for p in frozen:
            p.requires_grad_(True)
        for p in stage_one_only:
            p.requires_grad_(False)
    tail = losses[-max(1, steps // 10):]
    result: dict[str, Any] = {"warmup_loss": sum(tail) / len(tail), "warmup_seconds": time.perf_counter() - start}
    logger.info("stage 1: %d steps of the front end alone in %.1f s (loss %.3f over the last %d steps)",
                steps, result["warmup_seconds"], result["warmup_loss"], len(tail))
    if eval_every and selection.best_step is None:
        logger.warning("stage 1: dev never gave train.metric_for_best=%s; the last state is kept", selection.metric)
    if selection.best_step is not None:
        selection.restore()
        result.update(warmup_best_step=selection.best_step, warmup_dev=selection.best_metrics)
        logger.info("stage 1: kept step %d of %d, dev %s %.4f", selection.best_step, steps, selection.metric,
                    selection.best_metrics.get(selection.metric, float("nan")))
    return result


class _Selection:
    """The best front-end state seen on dev (by ``metric``), kept on the CPU and put back at the end: the moving
    parameters and the buffers of the model's parts that hold them (the heads' running standardisation statistics
    move in train mode too; the frozen LLM and encoders are not copied)."""

    def __init__(self, metric: str, model: torch.nn.Module, params: list[torch.nn.Parameter]):
        self.metric, self.params = metric, params
        moving = {id(p) for p in params}
        parts = [child for child in model.children() if any(id(p) in moving for p in child.parameters())]
        self.buffers = [b for part in parts for b in part.buffers()]
        self.best_step: int | None = None
        self.best_metrics: dict[str, float] = {}
        self.best_value = float("-inf")
        self.state: list[torch.Tensor] = []

    def offer(self, step: int, metrics: dict[str, float]) -> None:
        value = metrics.get(self.metric, float("nan"))
        if value > self.best_value:  # NaN (dev lacks the metric's targets) never is: as the engine, the last state stays
            self.best_step, self.best_metrics, self.best_value = step, metrics, value
            self.state = [t.detach().to("cpu", copy=True) for t in (*self.params, *self.buffers)]

    def restore(self) -> None:
        with torch.no_grad():
            for tensor, saved in zip((*self.params, *self.buffers), self.state):
                tensor.copy_(saved.to(tensor.device))


@torch.no_grad()
def _score_front_end(setup: Any, recipe: Any, device: torch.device | str) -> dict[str, float]:
    """Dev scores of stage 1's outputs (``warmup_outputs``), as the engine scores a whole model."""
    from llmser.training.engine import ordered_batches, output_rows, scored_output

    model = setup.model
    model.eval()
    rows = []
    for idx, batch in ordered_batches(setup.eval_set, setup.collate_fn, recipe.data.eval_batch_size, device):
        rows += output_rows(idx, model.warmup_outputs(**batch), batch)
    return scored_output(rows).metrics
