"""Challenge metrics and the diagnostics the reports are built from (numpy only).

Task 1 is scored by macro-F1 as the organisers compute it: scikit-learn's ``f1_score(average="macro")``
without ``labels=``, i.e. the mean over the classes that occur in the truth or the predictions
(:func:`macro_f1`); :func:`macro_f1_8` keeps the mean over all eight classes, which differs only on a split
missing a class. Task 2 is scored by Lin's concordance correlation coefficient (CCC) per attribute, with
population moments as the organisers' scorer. Both are implemented here once, matching scikit-learn and the
challenge's evaluation code, so training-time model selection, reports and the demo all report the same
numbers. Everything that a report stores is returned as plain Python (``float``, ``int``, ``list``,
``dict``, ``None``) so it can go straight into ``report.json``.

Class labels may be given as integer indices (``0..7``, the order of ``schema.CLASS_CODES``) or as class
codes (``"A"``, ``"S"``, ...). Empty inputs, mismatched lengths and unknown labels raise ``ValueError``
naming the problem, rather than producing a silent NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmser.schema import (
    ATTRIBUTES,
    CLASS_CODES,
    CODE_TO_INDEX,
    CODE_TO_NAME,
    HIGH_BIN_MIN,
    LOW_BIN_MAX,
    NUM_CLASSES,
)

#: Names of the attribute bins, in the order of the integers :func:`attribute_bins` returns.
BIN_NAMES: tuple[str, ...] = ("low", "mid", "high")


# ----------------------------------------------------------------------------- input checks


def _as_labels(values: Any, name: str, num_classes: int) -> np.ndarray:
    """Integer class indices (N,) from indices or class codes; raises on anything else."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty; metrics need at least one example")
    if array.dtype.kind in "USO":  # codes such as "A"; anything else is named in the error
        unknown = sorted({str(v) for v in array.tolist() if v not in CODE_TO_INDEX})
        if unknown:
            raise ValueError(
                f"{name} has values that are not class codes: {unknown[:5]}; "
                f"valid codes are {', '.join(CLASS_CODES)}"
            )
        return np.array([CODE_TO_INDEX[v] for v in array.tolist()], dtype=np.int64)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError(f"{name} must hold integer class indices, got non-integer floats")
        array = array.astype(np.int64)
    elif array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold class indices or codes, got dtype {array.dtype}")
    bad = array[(array < 0) | (array >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{name} has class indices outside 0..{num_classes - 1}: {sorted(set(bad.tolist()))[:5]}"
        )
    return array.astype(np.int64)


def _label_pair(y_true: Any, y_pred: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    true = _as_labels(y_true, "y_true", num_classes)
    pred = _as_labels(y_pred, "y_pred", num_classes)
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} labels but y_pred has {pred.size}; they must align")
    return true, pred


def _value_pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """Finite float arrays (N,) of equal length, N >= 1."""
    true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} values but y_pred has {pred.size}; they must align")
    if true.size == 0:
        raise ValueError("y_true is empty; metrics need at least one example")
    for name, array in (("y_true", true), ("y_pred", pred)):
        bad = int((~np.isfinite(array)).sum())
        if bad:
            raise ValueError(f"{name} has {bad} NaN/inf values; drop those examples before scoring")
    return true, pred


# ----------------------------------------------------------------------------- task 1


def confusion_matrix(
    y_true: Any, y_pred: Any, num_classes: int = NUM_CLASSES, normalize: bool = False
) -> np.ndarray:
    """(C, C) matrix, rows = true class, columns = predicted class (scikit-learn's convention).

    With ``normalize=True`` each row is divided by its count, so a row reads as "where did the examples
    of this class go"; rows of classes absent from ``y_true`` stay all zero instead of NaN.
    """
    true, pred = _label_pair(y_true, y_pred, num_classes)
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (true, pred), 1)
    if not normalize:
        return counts
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)


def per_class_prf(y_true: Any, y_pred: Any, num_classes: int = NUM_CLASSES) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class, each an array (C,) in schema order.

    Undefined ratios (a class never predicted, or never present) are 0, as scikit-learn's
    ``precision_recall_fscore_support(labels=range(C), zero_division=0)``.
    """
    counts = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(counts).astype(np.float64)
    support = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(num_classes), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(num_classes), where=support > 0)
    # F1 = 2tp / (2tp + fp + fn): the same as the harmonic mean, and 0 rather than NaN when tp = 0.
    denominator = support + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros(num_classes), where=denominator > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def macro_f1(y_true: Any, y_pred: Any, num_classes: int = NUM_CLASSES) -> float:
    """The task-1 metric as the organisers compute it: mean F1 over the classes present in either input.

    Their scorer calls ``f1_score(y_true, y_pred, average="macro")`` without ``labels=``, so a class absent
    from both the truth and the predictions is left out of the mean. On the challenge test sets every
    class is present and this equals :func:`macro_f1_8`; on a split missing a class it is higher.
    """
    true, pred = _label_pair(y_true, y_pred, num_classes)
    f1 = per_class_prf(true, pred, num_classes)["f1"]
    return float(f1[_present_classes(true, pred, num_classes)].mean())


def macro_f1_8(y_true: Any, y_pred: Any, num_classes: int = NUM_CLASSES) -> float:
    """Mean F1 over all ``num_classes`` classes; an absent class counts as F1 = 0.

    ``f1_score(average="macro", labels=range(8), zero_division=0)``: a conservative figure on a small
    subset (a demo split, one speaker group) rather than one raised by averaging over fewer classes.
    """
    return float(per_class_prf(y_true, y_pred, num_classes)["f1"].mean())


def _present_classes(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Mask (C,) of the classes in the truth or the predictions: what sklearn averages over by default."""
    present = np.zeros(num_classes, dtype=bool)
    present[true] = True
    present[pred] = True
    return present


def accuracy(y_true: Any, y_pred: Any, num_classes: int = NUM_CLASSES) -> float:
    """Fraction of examples whose predicted class is the true class."""
    true, pred = _label_pair(y_true, y_pred, num_classes)
    return float(np.mean(true == pred))


def classification_report(y_true: Any, y_pred: Any, num_classes: int = NUM_CLASSES) -> dict[str, Any]:
    """Everything task 1 reports, as a JSON-able dict keyed by class code."""
    true, pred = _label_pair(y_true, y_pred, num_classes)
    scores = per_class_prf(true, pred, num_classes)
    counts = confusion_matrix(true, pred, num_classes)
    codes = (
        list(CLASS_CODES[:num_classes])
        if num_classes <= NUM_CLASSES
        else [str(i) for i in range(num_classes)]
    )
    per_class = {
        code: {
            "name": CODE_TO_NAME.get(code, code),
            "precision": float(scores["precision"][i]),
            "recall": float(scores["recall"][i]),
            "f1": float(scores["f1"][i]),
            "support": int(scores["support"][i]),
            "predicted": int(counts[:, i].sum()),
        }
        for i, code in enumerate(codes)
    }
    present = _present_classes(true, pred, num_classes)
    return {
        "n": int(true.size),
        "macro_f1": float(scores["f1"][present].mean()),
        "macro_f1_8": float(scores["f1"].mean()),
        "macro_f1_classes": [code for code, keep in zip(codes, present) if keep],
        "accuracy": float(np.mean(true == pred)),
        "per_class": per_class,
        "confusion_matrix": {
            "labels": codes,
            "counts": counts.tolist(),
            "row_normalised": confusion_matrix(true, pred, num_classes, normalize=True).tolist(),
        },
    }


# ----------------------------------------------------------------------------- task 2


def ccc(y_true: Any, y_pred: Any) -> float:
    """Lin's concordance correlation coefficient, with population (ddof=0) moments as the challenge.

    ``2 cov(t, p) / (var(t) + var(p) + (mean(t) - mean(p))^2)``: 1 only for exact agreement, and lower
    than Pearson's r whenever predictions are shifted or scaled. Constant predictions have zero
    covariance and score 0. When the denominator is 0 (true values and predictions are the same
    constant) agreement is undefined and 0 is returned too, never NaN, so a mean over attributes
    stays a number.
    """
    true, pred = _value_pair(y_true, y_pred)
    mean_t, mean_p = true.mean(), pred.mean()
    covariance = np.mean((true - mean_t) * (pred - mean_p))
    denominator = true.var() + pred.var() + (mean_t - mean_p) ** 2
    if denominator <= 0:
        return 0.0
    return float(2 * covariance / denominator)


def pearson(y_true: Any, y_pred: Any) -> float:
    """Pearson's r; 0 when either side is constant (the reports compare it with CCC)."""
    true, pred = _value_pair(y_true, y_pred)
    dt, dp = true - true.mean(), pred - pred.mean()
    denominator = np.sqrt(np.sum(dt**2) * np.sum(dp**2))
    return float(np.sum(dt * dp) / denominator) if denominator > 0 else 0.0


def attribute_bins(values: Any) -> np.ndarray:
    """Bin index per value (N,): 0 = low (<= LOW_BIN_MAX), 1 = mid, 2 = high (>= HIGH_BIN_MIN)."""
    array = np.asarray(values, dtype=np.float64)
    if np.isnan(array).any():
        raise ValueError("attribute_bins got NaN values; drop examples without attributes first")
    bins = np.ones(array.shape, dtype=np.int64)
    bins[array <= LOW_BIN_MAX] = 0
    bins[array >= HIGH_BIN_MIN] = 2
    return bins


def bin_analysis(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """Extreme-value diagnostics for one attribute, per bin of the TRUE value.

    Systems trained with MSE/CCC losses pull extreme ratings toward the middle of the scale; a mean
    prediction in the low bin well above the mean true value (and the opposite in the high bin), or
    a low bin "recall", shows it. ``ccc`` and ``mae`` of a bin with fewer than 2 / 0 examples are None.
    """
    true, pred = _value_pair(y_true, y_pred)
    true_bins, pred_bins = attribute_bins(true), attribute_bins(pred)
    bin_confusion = np.zeros((len(BIN_NAMES), len(BIN_NAMES)), dtype=np.int64)
    np.add.at(bin_confusion, (true_bins, pred_bins), 1)
    per_bin: dict[str, dict[str, Any]] = {}
    for b, name in enumerate(BIN_NAMES):
        mask = true_bins == b
        n = int(mask.sum())
        per_bin[name] = {
            "n": n,
            "mean_true": float(true[mask].mean()) if n else None,
            "mean_pred": float(pred[mask].mean()) if n else None,
            "mae": float(np.abs(true[mask] - pred[mask]).mean()) if n else None,
            "ccc": ccc(true[mask], pred[mask]) if n >= 2 else None,
            # fraction of this bin's examples whose prediction lands in the same bin
            "recall": float(bin_confusion[b, b] / n) if n else None,
        }
    return {"bins": list(BIN_NAMES), "bin_confusion": bin_confusion.tolist(), "per_bin": per_bin}


def _attribute_matrix(values: Any, name: str, n_attributes: int) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1 and n_attributes == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] != n_attributes:
        raise ValueError(f"{name} must have shape (N, {n_attributes}), got {array.shape}")
    return array


def extreme_value_analysis(y_true: Any, y_pred: Any, names: Sequence[str] = ATTRIBUTES) -> dict[str, Any]:
    """:func:`bin_analysis` for each attribute column of (N, A) arrays, keyed by attribute name."""
    true = _attribute_matrix(y_true, "y_true", len(names))
    pred = _attribute_matrix(y_pred, "y_pred", len(names))
    return {name: bin_analysis(true[:, j], pred[:, j]) for j, name in enumerate(names)}


def attribute_report(y_true: Any, y_pred: Any, names: Sequence[str] = ATTRIBUTES) -> dict[str, Any]:
    """Everything task 2 reports for (N, A) true and predicted attributes, as a JSON-able dict."""
    true = _attribute_matrix(y_true, "y_true", len(names))
    pred = _attribute_matrix(y_pred, "y_pred", len(names))
    if true.shape != pred.shape:
        raise ValueError(f"y_true has shape {true.shape} but y_pred has {pred.shape}; they must align")
    cccs = {name: ccc(true[:, j], pred[:, j]) for j, name in enumerate(names)}
    return {
        "n": int(true.shape[0]),
        "ccc": cccs,
        "ccc_mean": float(np.mean(list(cccs.values()))),
        "pearson": {name: pearson(true[:, j], pred[:, j]) for j, name in enumerate(names)},
        "mae": {name: float(np.abs(true[:, j] - pred[:, j]).mean()) for j, name in enumerate(names)},
        "mean_true": {name: float(true[:, j].mean()) for j, name in enumerate(names)},
        "mean_pred": {name: float(pred[:, j].mean()) for j, name in enumerate(names)},
        "std_true": {name: float(true[:, j].std()) for j, name in enumerate(names)},
        "std_pred": {name: float(pred[:, j].std()) for j, name in enumerate(names)},
        "extreme_values": extreme_value_analysis(true, pred, names),
    }


# ----------------------------------------------------------------------------- groups


def group_breakdown(
    groups: Sequence[str],
    y_true: Any = None,
    y_pred: Any = None,
    attr_true: Any = None,
    attr_pred: Any = None,
    names: Sequence[str] = ATTRIBUTES,
    exclude_from_gap: Sequence[str] = ("Unknown",),
    num_classes: int = NUM_CLASSES,
) -> dict[str, Any]:
    """Macro-F1 and CCCs per group (e.g. speaker gender) and the gap (max - min) between groups.

    All arrays align with ``groups`` (N,). Rows without a task-1 label have ``y_true = -1`` and rows
    without attributes have NaN in ``attr_true``, so one call covers both tasks even though they score
    different subsets. A group needs 1 labelled row for macro-F1 and 2 rows for a CCC; otherwise the
    value is None. Groups in ``exclude_from_gap`` (speakers of unknown gender) are reported but do not
    enter the gap, which is a fairness number between known groups.
    """
    groups_array = np.asarray([str(g) for g in groups])
    if groups_array.size == 0:
        raise ValueError("groups is empty; group_breakdown needs at least one example")
    if (y_true is None) != (y_pred is None) or (attr_true is None) != (attr_pred is None):
        raise ValueError("pass y_true with y_pred, and attr_true with attr_pred")
    n = groups_array.size
    if y_true is not None:
        true = np.asarray(y_true)
        pred = np.asarray(y_pred)
        if true.shape != (n,) or pred.shape != (n,):
            raise ValueError(
                f"y_true/y_pred must have shape ({n},) like groups, got {true.shape} and {pred.shape}"
            )
        labelled = true.astype(np.int64) >= 0 if true.dtype.kind in "iuf" else np.isin(true, CLASS_CODES)
    if attr_true is not None:
        at = _attribute_matrix(attr_true, "attr_true", len(names))
        ap = _attribute_matrix(attr_pred, "attr_pred", len(names))
        if at.shape[0] != n or ap.shape[0] != n:
            raise ValueError(
                f"attr_true/attr_pred must have {n} rows like groups, got {at.shape[0]} and {ap.shape[0]}"
            )

    per_group: dict[str, dict[str, Any]] = {}
    for group in sorted(set(groups_array.tolist())):
        mask = groups_array == group
        entry: dict[str, Any] = {"n": int(mask.sum())}
        if y_true is not None:
            keep = mask & labelled
            entry["n_task1"] = int(keep.sum())
            entry["macro_f1"] = macro_f1(true[keep], pred[keep], num_classes) if keep.any() else None
            entry["macro_f1_8"] = macro_f1_8(true[keep], pred[keep], num_classes) if keep.any() else None
            entry["accuracy"] = accuracy(true[keep], pred[keep], num_classes) if keep.any() else None
        if attr_true is not None:
            for j, name in enumerate(names):
                keep = mask & ~np.isnan(at[:, j])
                entry[f"ccc_{name}"] = ccc(at[keep, j], ap[keep, j]) if keep.sum() >= 2 else None
        per_group[group] = entry

    metric_keys = ([] if y_true is None else ["macro_f1", "macro_f1_8", "accuracy"]) + (
        [] if attr_true is None else [f"ccc_{name}" for name in names]
    )
    gap: dict[str, float | None] = {}
    for key in metric_keys:
        values = [
            e[key] for g, e in per_group.items() if g not in exclude_from_gap and e.get(key) is not None
        ]
        gap[key] = float(max(values) - min(values)) if len(values) >= 2 else None
    return {"groups": per_group, "gap": gap, "gap_excludes": list(exclude_from_gap)}


__all__ = [
    "BIN_NAMES",
    "accuracy",
    "attribute_bins",
    "attribute_report",
    "bin_analysis",
    "ccc",
    "classification_report",
    "confusion_matrix",
    "extreme_value_analysis",
    "group_breakdown",
    "macro_f1",
    "macro_f1_8",
    "pearson",
    "per_class_prf",
]
