"""The training engine every branch uses, on one CPU up to many GPUs through Accelerate.

    accelerate launch -m llmser train adapters/wavlm_tiny.yaml [key=value ...]
    llmser train adapters/wavlm_tiny.yaml --resume          # one process; continues the latest checkpoint

What it does, in order of a step: take this process's slice of the global batch (``batching``),
forward under autocast, multi-task loss (``losses``), backward with gradient accumulation, clip,
optimiser and schedule step. Every ``eval_every`` steps it scores the dev split (macro-F1, CCCs) with
the work split across processes, keeps the best model (``best/``) and stops early when asked; every
``save_every`` steps it writes a resumable checkpoint (``checkpoint.py``). Only the main process
shows progress bars, logs and writes shared files.

A model plugs in by returning an object with ``class_logits`` (B, 8) and/or ``attributes`` (B, 3)
from ``model(**batch)``, and by having ``save_pretrained(dir)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from llmser.evaluation.metrics import ccc as concordance
from llmser.evaluation.metrics import macro_f1
from llmser.recipe import Recipe
from llmser.schema import ATTRIBUTES
from llmser.training import checkpoint as ckpt
from llmser.training.batching import ShuffledBatchSampler
from llmser.training.losses import MultiTaskLoss
from llmser.training.optim import build_optimizer, build_scheduler
from llmser.utils.budget import budget_batches
from llmser.utils.io import atomic_write_json, disk_full_says
from llmser.utils.logging import get_logger

logger = get_logger(__name__)


@dataclass
class EvalOutput:
    """Per-example outputs of an evaluation pass, in dataset order."""

    indices: np.ndarray
    probs: np.ndarray | None  # (N, 8)
    attributes: np.ndarray | None  # (N, 3)
    labels: np.ndarray  # (N,) -1 = none
    targets: np.ndarray  # (N, 3) NaN = none
    metrics: dict[str, float] = field(default_factory=dict)


# One scored example: (dataset index, class probabilities, attributes, label, attribute targets).
EvalRow = tuple[int, list | None, list | None, int, list]


def output_rows(idx: list[int], out: Any, batch: dict) -> list[EvalRow]:
    """A batch's model outputs (``class_logits``/``attributes``) and targets as rows, one per example."""
    probs = torch.softmax(out.class_logits.float(), -1).cpu().tolist() if out.class_logits is not None else None
    attrs = out.attributes.float().cpu().tolist() if out.attributes is not None else None
    labels = batch["label"].cpu().tolist()
    targets = batch["attributes"].float().cpu().tolist()
    return [(i, probs[k] if probs else None, attrs[k] if attrs else None, labels[k], targets[k])
            for k, i in enumerate(idx)]


def scored_output(rows: list[EvalRow]) -> EvalOutput:
    """Rows (any order) -> an ``EvalOutput`` in dataset order with its metrics."""
    rows = sorted(rows, key=lambda r: r[0])
    out = EvalOutput(
        indices=np.array([r[0] for r in rows]),
        probs=np.array([r[1] for r in rows]) if rows and rows[0][1] is not None else None,
        attributes=np.array([r[2] for r in rows]) if rows and rows[0][2] is not None else None,
        labels=np.array([r[3] for r in rows]),
        targets=np.array([r[4] for r in rows], dtype=np.float64).reshape(-1, 3),
    )
    out.metrics = score(out.labels, out.probs, out.targets, out.attributes)
    return out


def score(labels: np.ndarray, probs: np.ndarray | None, targets: np.ndarray,
          attributes: np.ndarray | None) -> dict[str, float]:
    """Macro-F1 over labelled examples, CCC per attribute, and the model-selection summaries."""
    metrics: dict[str, float] = {}
    parts = []
    if probs is not None and (labels >= 0).any():
        keep = labels >= 0
        metrics["macro_f1"] = float(macro_f1(labels[keep], probs[keep].argmax(-1)))
        parts.append(metrics["macro_f1"])
    if attributes is not None:
        values = []
        for j, name in enumerate(ATTRIBUTES):
            keep = ~np.isnan(targets[:, j])
            if keep.sum() >= 2:
                metrics[f"ccc_{name}"] = float(concordance(targets[keep, j], attributes[keep, j]))
                values.append(metrics[f"ccc_{name}"])
        if values:
            metrics["ccc_mean"] = float(np.mean(values))
            parts.append(metrics["ccc_mean"])
    metrics["combined"] = float(np.mean(parts)) if parts else float("nan")
    return metrics


class Trainer:
    """Runs a recipe's optimisation loop on ``model`` with the given datasets and collate function."""

    def __init__(self, recipe: Recipe, model: torch.nn.Module, train_set: Dataset, eval_set: Dataset | None,
                 collate_fn: Callable, *, class_counts: list[int] | None = None,
                 train_labels: list[int] | None = None, accelerator: Any = None):
        self.recipe = recipe
        self.output_dir = Path(recipe.train.output_dir)
        self.accelerator = accelerator or make_accelerator(recipe)
        self.train_set = train_set
        self.eval_set = eval_set
        self.collate_fn = collate_fn
        self.loss_fn = MultiTaskLoss(recipe.loss, class_counts=class_counts)
        _log_soft_label_rows(recipe.loss, train_labels)
        self.sampler = self._build_sampler(train_labels)
        self.model = model
        self.optimizer = build_optimizer(model, recipe.optim)
        self.scheduler = build_scheduler(self.optimizer, recipe.optim, recipe.train.max_steps)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.loss_fn.to(self.accelerator.device)
        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_metric": None,
                                      "best_step": None, "evals_without_improvement": 0, "history": []}

    # ------------------------------------------------------------------ set-up

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _build_sampler(self, train_labels: list[int] | None):
        data = self.recipe.data
        acc = self.accelerator
        if data.balanced_sampler:
            from llmser.training.sampler import ClassBalancedBatchSampler

            if train_labels is None:
                raise ValueError("balanced_sampler needs the training labels")
            return ClassBalancedBatchSampler(train_labels, batch_size=data.batch_size, seed=self.recipe.train.seed,
                                             num_replicas=acc.num_processes, rank=acc.process_index,
                                             power=data.sampler_power,
                                             unlabelled_share=data.sampler_unlabelled_share)
        if len(self.train_set) < data.batch_size * acc.num_processes:  # before any work, as a recipe error
            from llmser.config import ConfigError

            raise ConfigError(f"the global batch {data.batch_size * acc.num_processes} (data.batch_size "
                              f"{data.batch_size} x {acc.num_processes} process(es)) is larger than the "
                              f"{len(self.train_set)} training items of {data.train_split!r}; set data.batch_size to "
                              f"at most {len(self.train_set) // acc.num_processes}")
        return ShuffledBatchSampler(len(self.train_set), data.batch_size, num_replicas=acc.num_processes,
                                    rank=acc.process_index, seed=self.recipe.train.seed)

    def _loader(self, epoch: int, start_batch: int) -> DataLoader:
        self.sampler.set_epoch(epoch, start_batch)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        # A private generator: creating a loader must not draw from the global torch RNG, or a resumed
        # run (which creates its loader mid-epoch) would see different dropout masks afterwards.
        generator = torch.Generator().manual_seed(self.recipe.train.seed + epoch)
        return DataLoader(self.train_set, batch_sampler=self.sampler, collate_fn=self.collate_fn,
                          num_workers=self.recipe.data.num_workers, generator=generator)

    # ------------------------------------------------------------------ training

    def fit(self, resume: str | Path | bool | None = None) -> dict[str, Any]:
        """Train to ``max_steps`` (or early stop); returns the final state with the best metrics."""
        cfg = self.recipe.train
        acc = self.accelerator
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._resume(resume)
        if acc.trackers == [] and cfg.log_with and self.is_main:
            logger.info("no tracker available for %s; metrics go to the log and trainer_state.json", cfg.log_with)
        if _available_trackers(cfg.log_with):
            acc.init_trackers(self.output_dir.name)
        accum = self.recipe.optim.gradient_accumulation_steps
        self._log_trainable()
        progress = _progress(total=cfg.max_steps, initial=self.state["step"], disable=not self.is_main,
                             desc=f"train {self.recipe.branch}")
        started = time.perf_counter()
        running: list[float] = []
        stop = self.state["step"] >= cfg.max_steps
        if cfg.eval_on_start and self.eval_set is not None and self.state["step"] == 0:
            stop = self._evaluate_and_track(progress) or stop
        while not stop:
            loader = self._loader(self.state["epoch"], self.state["batch_in_epoch"])
            batches = iter(loader)
            while True:
                micro = []
                for _ in range(accum):
                    batch = next(batches, None)
                    if batch is None:
                        break
                    micro.append(batch)
                if len(micro) < accum:  # epoch ended; a partial accumulation group is dropped
                    self.state["epoch"] += 1
                    self.state["batch_in_epoch"] = 0
                    break
                loss_value = self._optimizer_step(micro)
                self.state["batch_in_epoch"] += accum
                self.state["step"] += 1
                running.append(loss_value)
                progress.update(1)
                step = self.state["step"]
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    self._log({"train/loss": float(np.mean(running)), "train/lr": self.scheduler.get_last_lr()[0]},
                              progress)
                    running.clear()
                due = step % cfg.eval_every == 0 or step == cfg.max_steps
                if self.eval_set is not None and due and self._evaluate_and_track(progress):
                    stop = True
                if step % cfg.save_every == 0 or step == cfg.max_steps or stop:
                    self.save_checkpoint()
                if step >= cfg.max_steps or stop:
                    stop = True
                    break
        progress.close()
        self.state["train_seconds"] = self.state.get("train_seconds", 0.0) + time.perf_counter() - started
        if self.eval_set is None and self.is_main:
            self._save_best()  # no dev split: the last model is the model
        acc.wait_for_everyone()
        if self.is_main:
            with disk_full_says(self.output_dir):
                atomic_write_json(self.output_dir / "trainer_state.json", self.state)
        # Not acc.end_training() here: it tears down the process group, and the caller may still
        # evaluate the test split on every process (llmser.training.run.run calls it when everything is done).
        return self.state

    def _optimizer_step(self, micro_batches: list[dict]) -> float:
        model, acc = self.model, self.accelerator
        model.train()
        total = 0.0
        for i, batch in enumerate(micro_batches):
            batch = to_device(batch, acc.device)
            last = i == len(micro_batches) - 1
            sync = acc.no_sync(model) if (not last and acc.num_processes > 1) else _nullcontext()
            with sync, acc.autocast():
                out = model(**batch)
                losses = self.loss_fn(out.class_logits, out.attributes, batch,
                                      getattr(out, "auxiliary_class_logits", None))
                loss = losses["loss"] / len(micro_batches)
            acc.backward(loss)
            total += float(loss.detach())
        if self.recipe.optim.grad_clip > 0:
            acc.clip_grad_norm_(model.parameters(), self.recipe.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def _log_trainable(self) -> None:
        model = self.accelerator.unwrap_model(self.model)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        logger.info("trainable params: %s || all params: %s || trainable%%: %.4f",
                    f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1))

    def _log(self, values: dict[str, float], progress) -> None:
        step = self.state["step"]
        if self.is_main:
            progress.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in values.items()})
            self.accelerator.log(values, step=step)
            self.state["history"].append({"step": step, **values})

    # ------------------------------------------------------------------ evaluation

    def _evaluate_and_track(self, progress) -> bool:
        """Evaluate on dev, keep the best model, and say whether early stopping triggers."""
        result = self.evaluate(self.eval_set)
        metrics = result.metrics
        self._log({f"eval/{k}": v for k, v in metrics.items()}, progress)
        name = self.recipe.train.metric_for_best
        value = metrics.get(name, float("nan"))
        best = self.state["best_metric"]
        improved = not math.isnan(value) and (best is None or value > best)
        if improved:
            self.state.update(best_metric=value, best_step=self.state["step"], best_metrics=metrics,
                              evals_without_improvement=0)
            if self.is_main:
                self._save_best()
        else:
            self.state["evals_without_improvement"] += 1
        self.accelerator.wait_for_everyone()
        patience = self.recipe.train.early_stopping_patience
        if patience and self.state["evals_without_improvement"] >= patience:
            logger.info("early stopping at step %d: no %s improvement in %d evaluations (best %.4f at step %s)",
                        self.state["step"], name, patience, best, self.state["best_step"])
            return True
        return False

    @torch.no_grad()
    def evaluate(self, dataset: Dataset, desc: str = "eval") -> EvalOutput:
        """Forward the whole dataset (split across processes) and score it; every process gets the result."""
        acc = self.accelerator
        model = self.model
        model.eval()
        n = len(dataset)
        shard = np.array_split(np.arange(n), acc.num_processes)[acc.process_index]
        bs = self.recipe.data.eval_batch_size
        rows: list[EvalRow] = []
        for start in _progress(range(0, len(shard), bs), disable=not self.is_main, desc=desc, leave=False):
            indexed = [(i, dataset[i]) for i in shard[start:start + bs].tolist()]
            # data.eval_max_tokens: split a batch whose rows x padded length would exceed the budget
            for part, batch in budget_batches(indexed, lambda group: self.collate_fn([e for _, e in group]),
                                              self.recipe.data.eval_max_tokens):
                rows += self._eval_rows([i for i, _ in part], to_device(batch, acc.device))
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            rows = gather_object(rows)  # every process's rows, concatenated
        return scored_output(rows)

    def _eval_rows(self, idx: list[int], batch: dict) -> list[EvalRow]:
        with self.accelerator.autocast():
            out = self.model(**batch)
        return output_rows(idx, out, batch)

    # ------------------------------------------------------------------ saving

    def _save_best(self) -> None:
        model = self.accelerator.unwrap_model(self.model)
        best_dir = self.output_dir / "best"
        tmp = self.output_dir / ".best.partial"
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        from llmser.config import save_config
        from llmser.utils.io import partial_dir, replace_dir

        with partial_dir(tmp, owner=self.output_dir):
            model.save_pretrained(tmp)
            save_config(self.recipe, tmp / "recipe.yaml")
            replace_dir(tmp, best_dir)  # a kill at any point leaves a complete best/ (or its backup)

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        directory = self.output_dir / f"{ckpt.CHECKPOINT_PREFIX}{self.state['step']}"
        state = dict(self.state, sampler=self.sampler.state_dict())
        ckpt.save_checkpoint(directory, model=acc.unwrap_model(self.model), optimizer=self.optimizer,
                             scheduler=self.scheduler, trainer_state=state, is_main=self.is_main,
                             rank=acc.process_index, barrier=acc.wait_for_everyone)
        if self.is_main:
            ckpt.prune_checkpoints(self.output_dir, self.recipe.train.keep_checkpoints)
        return directory

    def _resume(self, resume: str | Path | bool) -> None:
        directory = ckpt.latest_checkpoint(self.output_dir) if resume is True or resume == "latest" else Path(resume)
        if directory is None:
            logger.warning("--resume: no checkpoint-* folder in %s; starting from scratch", self.output_dir)
            return
        state = ckpt.load_checkpoint(directory, model=self.accelerator.unwrap_model(self.model),
                                     optimizer=self.optimizer, scheduler=self.scheduler,
                                     rank=self.accelerator.process_index)
        state.pop("sampler", None)
        self.state.update(state)
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", directory, self.state["step"],
                    self.state["epoch"], self.state["batch_in_epoch"])


# ---------------------------------------------------------------------- helpers


def _log_soft_label_rows(loss: Any, train_labels: Sequence[int] | None) -> None:
    """Say how many training files the soft-label class loss leaves out (X/O: no task-1 label) or keeps."""
    if loss.class_loss not in ("soft_ce", "soft_kl") or not train_labels:
        return
    unlabelled = sum(1 for label in train_labels if label < 0)
    if unlabelled and loss.soft_labels_on_xo:
        logger.info("%s: the class loss also learns the annotator votes of %d X/O training file(s) "
                    "(loss.soft_labels_on_xo)", loss.class_loss, unlabelled)
    elif unlabelled:
        logger.info("%s: %d X/O training file(s) have no task-1 label and are left out of the class loss (they "
                    "still train the attributes; loss.soft_labels_on_xo=true uses their votes)", loss.class_loss,
                    unlabelled)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def ordered_batches(dataset: Any, collate_fn: Any, batch_size: int, device: torch.device | str
                    ) -> Iterator[tuple[list[int], dict]]:
    """A whole split in dataset order, ``batch_size`` examples at a time, on ``device``: (indices, batch) pairs,
    for the passes over a split that run outside ``Trainer.evaluate`` (stage 1's dev score, the readout's fit)."""
    for start in range(0, len(dataset), batch_size):
        idx = list(range(start, min(start + batch_size, len(dataset))))
        yield idx, to_device(collate_fn([dataset[i] for i in idx]), device)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def ddp_kwargs(recipe: Recipe) -> list:
    from accelerate.utils import DistributedDataParallelKwargs

    return [DistributedDataParallelKwargs(find_unused_parameters=recipe.train.ddp_find_unused_parameters)]


def make_accelerator(recipe: Recipe) -> Any:
    """The run's ``Accelerator``: the recipe's precision and trackers, CPU-only where there is no GPU (without
    it, launched CPU processes each think they are alone)."""
    from accelerate import Accelerator

    mixed_precision = _mixed_precision(recipe.train.mixed_precision)
    _release_single_process_state(mixed_precision)
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision,
                       log_with=_available_trackers(recipe.train.log_with) or None,
                       project_dir=str(recipe.train.output_dir), kwargs_handlers=ddp_kwargs(recipe))


def _release_single_process_state(mixed_precision: str) -> None:
    """Let a second run in the same Python process (a notebook, a script training two recipes) use another
    precision: accelerate keeps one AcceleratorState per process and refuses a new Accelerator whose
    mixed_precision differs ("restart your runtime completely"). In a single process nothing else holds that
    state, so it is cleared; under a distributed launch it is left alone (every rank shares it)."""
    from accelerate.state import AcceleratorState, PartialState

    if not AcceleratorState._shared_state or PartialState().num_processes > 1:
        return
    if AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state()


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _available_trackers(names: list[str]) -> list[str]:
    import importlib.util

    modules = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
    return [n for n in names if importlib.util.find_spec(modules.get(n, n)) is not None]


def _progress(iterable=None, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, dynamic_ncols=True, **kwargs)
