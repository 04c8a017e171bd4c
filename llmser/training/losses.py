"""Every loss the challenge systems used, behind one multi-task module.

Task 1 (8 classes, macro-F1) is heavily imbalanced in MSP-Podcast (Neutral and Happy dominate), so the
baseline weights cross-entropy by inverse class frequency; focal loss and soft-label losses against the
annotators' vote distributions were the other common choices. Task 2 (arousal/valence/dominance, scored
by CCC) is trained directly on 1 - CCC, optionally plus MSE, since MSE alone pulls predictions to the
mean. ``MultiTaskLoss`` combines one of each and masks examples that lack a target (label -1, NaN
attributes, all-zero soft labels), so one batch can mix task-1 and task-2-only utterances.

Conventions: logits (B, C); integer targets (B,) with -1 = no label; distributions (B, C) whose rows
sum to 1, or are all zeros for "no soft label". Every loss returns a graph-connected zero (not NaN)
when no row has a target, so a batch without any valid target still backpropagates cleanly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmser.recipe import LossConfig
from llmser.schema import ATTRIBUTES
from llmser.utils.logging import get_logger

logger = get_logger(__name__)

IGNORE_LABEL = -1
_EPS = 1e-8


# ---------------------------------------------------------------------- class weights


def inverse_frequency_weights(counts: Sequence[int] | Tensor, smoothing: float = 0.0,
                              normalise: bool = True) -> Tensor:
    """Per-class weights ``w_c = (N / (K * n_c)) ** (1 - smoothing)``; classes with no items get 0.

    ``smoothing=0`` and ``normalise=False`` give the challenge baseline's ``total / (num_classes * freq)``
    exactly. ``smoothing`` in [0, 1] flattens the weights geometrically (1 = all equal), which tames the
    huge weights of the rarest classes (Fear, Contempt) without a second hyper-parameter. With
    ``normalise`` the weights of the present classes average 1, so a loss that does not divide by the
    weight sum (focal) keeps the scale of its unweighted version.
    """
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"weight smoothing must be in [0, 1] (0 = inverse frequency, 1 = uniform), got {smoothing}")
    counts_t = torch.as_tensor(counts, dtype=torch.float64).flatten()  # (K,)
    if counts_t.numel() == 0 or bool((counts_t < 0).any()):
        raise ValueError(f"class counts must be a non-empty list of non-negative numbers, got {list(counts)}")
    present = counts_t > 0
    if not bool(present.any()):
        raise ValueError("every class count is 0; the training split has no task-1 labels")
    total, num_classes = counts_t.sum(), counts_t.numel()
    weights = torch.zeros_like(counts_t)
    weights[present] = (total / (num_classes * counts_t[present])) ** (1.0 - smoothing)
    if normalise:
        weights[present] = weights[present] / weights[present].mean()
    return weights.float()


# ---------------------------------------------------------------------- class losses


def _zero(*tensors: Tensor) -> Tensor:
    """A scalar 0 that still depends on the inputs, so ``backward`` works on an all-masked batch."""
    return sum(t.sum() * 0.0 for t in tensors)


def weighted_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None = None,
                           label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy over rows with a label (target -1 is ignored); with ``weight``, PyTorch's weighted
    mean ``sum_i w_{y_i} l_i / sum_i w_{y_i}``, as in the challenge baseline."""
    keep = target != IGNORE_LABEL  # (B,)
    if not bool(keep.any()):
        return _zero(logits)
    return F.cross_entropy(logits[keep].float(), target[keep], weight=weight, label_smoothing=label_smoothing)


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0, alpha: Tensor | float | None = None,
               reduction: Literal["mean", "sum", "none"] = "mean") -> Tensor:
    """Softmax focal loss (Lin et al., 2017): ``-alpha_y (1 - p_y)^gamma log p_y``.

    ``alpha`` is a per-class tensor (C,), one float for every class, or None (1). ``gamma=0`` and no
    alpha is plain cross-entropy. "mean" divides by the number of labelled rows (not by the alpha sum,
    unlike weighted CE), following the paper's normalisation by the number of examples.
    """
    keep = target != IGNORE_LABEL  # (B,)
    logits, target = logits[keep].float(), target[keep]
    if target.numel() == 0:
        zero = _zero(logits)
        return zero if reduction != "none" else logits.new_zeros(0)
    log_p = F.log_softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1)  # (B',)
    loss = -((1.0 - log_p.exp()) ** gamma) * log_p  # (B',)
    if alpha is not None:
        alpha_t = torch.as_tensor(alpha, dtype=loss.dtype, device=loss.device)
        loss = loss * (alpha_t[target] if alpha_t.ndim else alpha_t)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def soft_label_mask(target_dist: Tensor) -> Tensor:
    """Rows that carry a soft label: (B,) bool, False for all-zero rows."""
    return target_dist.sum(dim=-1) > 0


def soft_label_cross_entropy(logits: Tensor, target_dist: Tensor, weight: Tensor | None = None) -> Tensor:
    """Cross-entropy against annotator distributions, ``-sum_c w_c q_c log p_c``; all-zero rows ignored.

    With ``weight`` the sum is divided by ``sum_i sum_c w_c q_ic`` (PyTorch's weighted mean generalised),
    so a one-hot ``q`` gives exactly ``weighted_cross_entropy``.
    """
    keep = soft_label_mask(target_dist)  # (B,)
    if not bool(keep.any()):
        return _zero(logits)
    log_p = F.log_softmax(logits[keep].float(), dim=-1)  # (B', C)
    q = target_dist[keep].float()  # (B', C)
    if weight is None:
        return -(q * log_p).sum(dim=-1).mean()
    wq = q * weight.to(q)[None, :]  # (B', C)
    return -(wq * log_p).sum() / wq.sum().clamp_min(_EPS)


def soft_label_kl(logits: Tensor, target_dist: Tensor) -> Tensor:
    """KL(q || p) per labelled row, averaged; 0 when the model reproduces the annotators' distribution.

    Differs from soft CE by the (constant) entropy of q, so it has the same gradients but reads as 0
    at the optimum, which makes logged values comparable across datasets.
    """
    keep = soft_label_mask(target_dist)  # (B,)
    if not bool(keep.any()):
        return _zero(logits)
    log_p = F.log_softmax(logits[keep].float(), dim=-1)  # (B', C)
    q = target_dist[keep].float()  # (B', C)
    return F.kl_div(log_p, q, reduction="sum", log_target=False) / q.shape[0]


# ---------------------------------------------------------------------- attribute losses


def concordance_cc(pred: Tensor, target: Tensor) -> Tensor:
    """Lin's concordance correlation coefficient per column: (B, D) -> (D,), or (B,) -> scalar.

    Population (1/N) moments, as the challenge scorer computes them. An epsilon in the denominator keeps
    a batch of 2 or a constant target finite (CCC is then 0 rather than NaN).
    """
    pred, target = pred.float(), target.float()
    mean_p, mean_t = pred.mean(dim=0), target.mean(dim=0)
    var_p = ((pred - mean_p) ** 2).mean(dim=0)
    var_t = ((target - mean_t) ** 2).mean(dim=0)
    cov = ((pred - mean_p) * (target - mean_t)).mean(dim=0)
    return 2.0 * cov / (var_p + var_t + (mean_p - mean_t) ** 2 + _EPS)


def ccc_loss(pred: Tensor, target: Tensor, reduction: Literal["mean", "none"] = "none") -> Tensor:
    """``1 - CCC`` per attribute column ((B, 3) -> (3,)), or their mean with ``reduction="mean"``."""
    loss = 1.0 - concordance_cc(pred, target)
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


# ---------------------------------------------------------------------- multi-task loss


class MultiTaskLoss(nn.Module):
    """Class loss + attribute loss with per-example masking; returns the total and each part for logging.

    ``forward(class_logits, attribute_preds, batch)``: either head may be None (a single-task model).
    ``batch`` holds ``label`` (B,) long, -1 = none; ``soft_label`` (B, 8), zeros = none; ``attributes``
    (B, 3), NaN = none. The returned dict has ``loss`` (with graph) and detached ``class_loss``,
    ``attribute_loss``, per-attribute ``ccc_<name>`` (the batch CCC, logged as the metric reads; absent
    when the batch has fewer than 2 targets for it) and ``mse_<name>``.
    """

    def __init__(self, config: LossConfig | None = None, class_counts: Sequence[int] | None = None):
        super().__init__()
        self.config = config or LossConfig()
        weight = None
        if self.config.class_loss in ("weighted_ce", "focal", "soft_ce"):
            if class_counts is not None:
                weight = inverse_frequency_weights(class_counts, self.config.weight_smoothing, normalise=True)
            elif self.config.class_loss == "weighted_ce":
                logger.warning("class_loss=weighted_ce without class counts: the loss is unweighted")
        # A buffer moves with .to(device); None when the loss is unweighted.
        self.register_buffer("class_weights", weight, persistent=False)
        attr_w = torch.tensor(self.config.attribute_weights, dtype=torch.float32)
        self.register_buffer("attribute_weights", attr_w / attr_w.sum(), persistent=False)

    def forward(self, class_logits: Tensor | None, attribute_preds: Tensor | None,
                batch: dict[str, Tensor], auxiliary_logits: Tensor | None = None) -> dict[str, Tensor]:
        cfg = self.config
        parts: dict[str, Tensor] = {}
        total: Tensor | None = None
        if class_logits is not None:
            class_term = self.class_loss(class_logits, batch)
            parts["class_loss"] = class_term
            total = cfg.class_weight * class_term
        if attribute_preds is not None:
            attr_term, per_attribute = self.attribute_loss(attribute_preds, batch["attributes"])
            parts["attribute_loss"] = attr_term
            parts.update(per_attribute)
            attr_total = cfg.attribute_weight * attr_term
            total = attr_total if total is None else total + attr_total
        if auxiliary_logits is not None and cfg.auxiliary_class_weight > 0 and total is not None:
            aux_term = self.class_loss(auxiliary_logits, batch)
            parts["auxiliary_class_loss"] = aux_term
            total = total + cfg.auxiliary_class_weight * aux_term
        if total is None:
            raise ValueError("MultiTaskLoss got neither class logits nor attribute predictions; "
                             "the model must return at least one head's output")
        return {"loss": total, **{name: value.detach() for name, value in parts.items()}}

    def class_loss(self, logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """The configured task-1 loss over the rows that have a (hard or soft) label."""
        cfg = self.config
        label = batch["label"].to(logits.device).long()  # (B,)
        weight = self.class_weights
        if cfg.class_loss in ("ce", "weighted_ce"):
            return weighted_cross_entropy(logits, label, weight if cfg.class_loss == "weighted_ce" else None,
                                          cfg.label_smoothing)
        if cfg.class_loss == "focal":
            return focal_loss(logits, label, gamma=cfg.focal_gamma, alpha=weight)
        target = self._soft_targets(batch, label, logits.shape[-1])  # (B, C)
        if cfg.class_loss == "soft_ce":
            return soft_label_cross_entropy(logits, target, weight)
        return soft_label_kl(logits, target)

    def _soft_targets(self, batch: dict[str, Tensor], label: Tensor, num_classes: int) -> Tensor:
        """Annotator distributions, with the one-hot consensus label for rows that have none; rows without a
        task-1 label (X/O) get none (all zeros: left out), as task 1 leaves them out, unless the recipe sets
        ``loss.soft_labels_on_xo``."""
        soft = batch.get("soft_label")
        if soft is None:
            soft = torch.zeros(label.shape[0], num_classes, device=label.device)
        soft = soft.to(label.device).float().clone()  # (B, C)
        unlabelled = label == IGNORE_LABEL  # (B,)
        if not self.config.soft_labels_on_xo:
            soft[unlabelled] = 0.0
        missing = ~soft_label_mask(soft) & ~unlabelled  # (B,)
        if bool(missing.any()):
            soft[missing] = F.one_hot(label[missing], num_classes).float()
        return soft

    def attribute_loss(self, pred: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted mean over attributes of 1 - CCC and/or MSE, each column masked where the target is NaN."""
        kind = self.config.attribute_loss
        target = target.to(pred.device).float()  # (B, 3)
        pred = pred.float()  # (B, 3)
        per_attribute: dict[str, Tensor] = {}
        columns = []
        for j, name in enumerate(ATTRIBUTES):
            keep = ~torch.isnan(target[:, j])  # (B,)
            p, t = pred[keep, j], target[keep, j]  # (B',)
            column = _zero(pred)
            # CCC needs a spread: with fewer than 2 targets it carries no signal, so it adds 0.
            if kind in ("ccc", "ccc+mse") and p.numel() >= 2:
                ccc_term = ccc_loss(p, t)
                per_attribute[f"ccc_{name}"] = 1.0 - ccc_term  # logged as the CCC itself
                column = column + ccc_term
            if kind in ("mse", "ccc+mse"):
                mse_term = F.mse_loss(p, t) if p.numel() >= 1 else _zero(pred)
                per_attribute[f"mse_{name}"] = mse_term
                column = column + mse_term
            columns.append(column)
        weighted = (torch.stack(columns) * self.attribute_weights.to(pred)).sum()
        return weighted, per_attribute

