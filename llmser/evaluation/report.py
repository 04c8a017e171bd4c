"""The evaluation report of one system on one split: ``report.json``, ``report.md`` and PNG figures.

Task 1 is scored on the references with one of the eight class labels (X = no agreement and O = other
are left out and counted), by macro-F1 as the organisers compute it (``macro_f1``, over the classes
present) and over all eight classes (``macro_f1_8``); task 2 on the references with all three attributes. Beside the challenge
metrics the report shows where errors go (confusion matrix, per-class F1), whether extreme ratings are
pulled to mid-range (per-bin means and MAE), and how the scores differ between speaker genders.

Usage::

    report = evaluate(predictions, corpus.utterances("test1"), "runs/wavlm/test", title="WavLM, test1")
    report = evaluate_corpus("runs/wavlm/predictions.csv", "/data/MSP-Podcast", "test", "runs/wavlm/test")
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmser.evaluation import metrics
from llmser.evaluation.predictions import Predictions, PredictionsError
from llmser.schema import (
    ATTRIBUTE_MAX,
    ATTRIBUTE_MIN,
    ATTRIBUTES,
    CODE_TO_INDEX,
    EXTRA_CODES,
    HIGH_BIN_MIN,
    LOW_BIN_MAX,
)
from llmser.utils.io import atomic_open, atomic_write_json, atomic_write_text
from llmser.utils.logging import get_logger

logger = get_logger(__name__)

#: Columns of :func:`format_summary_table`, the demo's final comparison of systems.
SUMMARY_COLUMNS: tuple[str, ...] = ("macro_f1", "ccc_arousal", "ccc_valence", "ccc_dominance")
FIGURE_DPI = 100
MAX_LISTED_NAMES = 5


class UnlabelledSplitError(PredictionsError):
    """Scoring asked of references that carry no labels at all: the blind test set (Test3)."""


def evaluate(
    predictions: Predictions,
    references: Sequence[Any],
    out_dir: str | Path,
    title: str = "llmser evaluation",
    allow_missing: bool = False,
    plots: bool = True,
) -> dict[str, Any]:
    """Score ``predictions`` against reference utterances and write the report files into ``out_dir``.

    ``references`` are utterance-like objects with ``file_name``, ``emo_class`` (code, X/O or None),
    ``arousal``/``valence``/``dominance`` (float or None) and ``gender``. Every reference needs a
    prediction unless ``allow_missing=True``, in which case the uncovered ones are left out and the
    coverage is reported. Predictions for files outside ``references`` are ignored (and counted).
References without any label (the blind test set) raise :class:`UnlabelledSplitError`.
    Returns the report dict that is also written to ``report.json``.
    """
    if not references:
        raise ValueError("no reference utterances to evaluate against; check the split name")
    _require_labels(references)
    duplicates = [name for name, count in Counter(u.file_name for u in references).items() if count > 1]
    if duplicates:
        raise ValueError(
            f"{len(duplicates)} reference file name(s) appear more than once, e.g. {duplicates[:5]}"
        )
    index = predictions.index()
    covered = [u for u in references if u.file_name in index]
    missing = [u.file_name for u in references if u.file_name not in index]
    if missing and not allow_missing:
        raise PredictionsError(
            f"{len(missing)} of {len(references)} reference files have no prediction, e.g. "
            f"{missing[:MAX_LISTED_NAMES]}; predict the whole split, "
            "or pass allow_missing=True to score the rest"
        )
    if not covered:
        raise PredictionsError(
            f"none of the {len(references)} reference files has a prediction, e.g. reference "
            f"{references[0].file_name!r} vs prediction "
            f"{predictions.file_names[0] if len(predictions) else None!r}"
        )
    reference_names = {u.file_name for u in references}
    report: dict[str, Any] = {
        "title": title,
        "n_references": len(references),
        "coverage": {
            "n_predicted": len(covered),
            "n_missing": len(missing),
            "fraction": len(covered) / len(references),
            "missing_examples": missing[:MAX_LISTED_NAMES],
            "n_extra_predictions": sum(1 for name in predictions.file_names if name not in reference_names),
        },
        "notes": [],
    }
    if missing:
        logger.warning(
            "%d of %d reference files have no prediction; scoring the other %d",
            len(missing),
            len(references),
            len(covered),
        )

    rows = [index[u.file_name] for u in covered]
    y_true = np.array([CODE_TO_INDEX.get(u.emo_class, -1) for u in covered], dtype=np.int64)  # (N,) -1 = none
    attr_true = np.array([[_attribute(u, name) for name in ATTRIBUTES] for u in covered])  # (N, 3) NaN = none
    y_pred = (
        None
        if predictions.classes is None
        else np.array([CODE_TO_INDEX[predictions.classes[i]] for i in rows], dtype=np.int64)
    )
    attr_pred = None if predictions.attributes is None else predictions.attributes[rows]

    report["task1"] = _task1(covered, y_true, y_pred, report["notes"])
    report["task2"] = _task2(attr_true, attr_pred, report["notes"])
    report["gender"] = _gender(covered, y_true, y_pred, attr_true, attr_pred, report)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = write_figures(report, out_dir, y_true, y_pred, attr_true, attr_pred) if plots else []
    report["figures"] = figures
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", to_markdown(report))
    logger.info("report written to %s", out_dir / "report.md")
    return report


def evaluate_corpus(
    predictions_path: str | Path,
    corpus_root: str | Path,
    split: str,
    out_dir: str | Path,
    allow_missing: bool = False,
    blind_ok: bool = False,
) -> dict[str, Any]:
    """:func:`evaluate` a prediction CSV against one split of an MSP-Podcast-layout corpus folder.

    ``blind_ok``: a split without labels (Test3) returns ``{"blind": True}`` instead of being refused (the
    caller wrote its submission files)."""
    from llmser.data.msp_podcast import MSPPodcast  # lazy: keeps the evaluation package light

    predictions = Predictions.read_csv(predictions_path)
    corpus = MSPPodcast.from_folder(corpus_root)
    split_name = corpus.resolve_split(split)
    references = corpus.utterances(split_name, task="all")
    if blind_ok and is_blind(references):
        return {"blind": True, "split": split_name}
    title = f"{Path(predictions_path).name} on {Path(corpus_root).name} / {split_name}"
    return evaluate(predictions, references, out_dir, title=title, allow_missing=allow_missing)


# ----------------------------------------------------------------------------- report sections


def is_blind(references: Sequence[Any]) -> bool:
    """Whether none of the files has a class or an attribute: a blind test set such as Test3."""
    return bool(references) and not any(getattr(u, "emo_class", None) or getattr(u, "arousal", None) is not None
                                        for u in references)


def report_or_submit(predictions: Predictions, references: Sequence[Any], out_dir: str | Path,
                     title: str = "llmser evaluation", **kwargs: Any) -> dict[str, Any]:
    """:func:`evaluate` a labelled split; a blind one (no labels) gets the challenge submission files in
    ``out_dir`` instead, so a run predicting it ends with what can be uploaded and its other results kept."""
    if not is_blind(references):
        return evaluate(predictions, references, out_dir, title=title, **kwargs)
    from llmser.evaluation.submission import write_submissions

    written = write_submissions(out_dir, predictions)
    logger.info("%s: the split has no labels (blind), so it is not scored; submission files: %s", title,
                ", ".join(str(p) for p in written.values()))
    return {"blind": True, "submission": {k: str(p) for k, p in written.items()}}


def _require_labels(references: Sequence[Any]) -> None:
    """Refuse to score a split none of whose files has a class or an attribute (the blind test set)."""
    if not is_blind(references):
        return
    splits = sorted({str(getattr(u, "split", "?")) for u in references})
    raise UnlabelledSplitError(
        f"split {', '.join(splits)} has no labels (none of its {len(references)} files, e.g. "
        f"{references[0].file_name!r}, has an EmoClass or EmoAct/EmoVal/EmoDom): it is a blind test set that "
        "only the organisers can score. Write its submission files instead (`llmser evaluate --submission` "
        "writes them before scoring, `llmser predict --corpus ... --split ... --submission` too), check them "
        "with `llmser validate-submission`, and upload them."
    )



def _attribute(utterance: Any, name: str) -> float:
    value = getattr(utterance, name, None)
    return math.nan if value is None else float(value)


def _task1(
    covered: list[Any], y_true: np.ndarray, y_pred: np.ndarray | None, notes: list[str]
) -> dict | None:
    if y_pred is None:
        notes.append("task 1 not scored: the predictions have no classes")
        return None
    labels = Counter(u.emo_class for u in covered)
    excluded = {code: labels.get(code, 0) for code in EXTRA_CODES}
    excluded["unlabelled"] = labels.get(None, 0) + sum(
        count
        for code, count in labels.items()
        if code is not None and code not in CODE_TO_INDEX and code not in EXTRA_CODES
    )
    keep = y_true >= 0
    if not keep.any():
        notes.append("task 1 not scored: no reference has one of the eight class labels")
        return None
    section = metrics.classification_report(y_true[keep], y_pred[keep])
    section["excluded"] = excluded
    return section


def _task2(attr_true: np.ndarray, attr_pred: np.ndarray | None, notes: list[str]) -> dict | None:
    if attr_pred is None:
        notes.append("task 2 not scored: the predictions have no attributes")
        return None
    keep = ~np.isnan(attr_true).any(axis=1)
    if not keep.any():
        notes.append("task 2 not scored: no reference has all three attributes")
        return None
    section = metrics.attribute_report(attr_true[keep], attr_pred[keep])
    section["n_without_attributes"] = int((~keep).sum())
    return section


def _gender(
    covered: list[Any],
    y_true: np.ndarray,
    y_pred: np.ndarray | None,
    attr_true: np.ndarray,
    attr_pred: np.ndarray | None,
    report: dict,
) -> dict | None:
    if report["task1"] is None and report["task2"] is None:
        return None
    groups = [str(getattr(u, "gender", None) or "Unknown") for u in covered]
    with_classes = report["task1"] is not None
    with_attributes = report["task2"] is not None
    return metrics.group_breakdown(
        groups,
        y_true if with_classes else None,
        y_pred if with_classes else None,
        attr_true if with_attributes else None,
        attr_pred if with_attributes else None,
    )


# ----------------------------------------------------------------------------- markdown


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def to_markdown(report: dict[str, Any]) -> str:
    """A readable Markdown version of a report dict (what ``report.md`` holds)."""
    coverage = report["coverage"]
    lines = [
        f"# {report['title']}",
        "",
        f"{coverage['n_predicted']} of {report['n_references']} reference files have a prediction "
        f"({coverage['fraction']:.1%}).",
        "",
    ]
    if coverage["n_missing"]:
        lines += [f"Missing, e.g.: {', '.join(coverage['missing_examples'])}", ""]
    lines += [f"- {note}" for note in report.get("notes", [])] + ([""] if report.get("notes") else [])
    task1, task2 = report.get("task1"), report.get("task2")
    if task1:
        excluded = task1["excluded"]
        lines += [
            "## Task 1: eight emotion classes",
            "",
            f"**Macro-F1 {task1['macro_f1']:.4f}** (as the organisers score it: mean F1 over the "
            f"{len(task1['macro_f1_classes'])} classes in the references or predictions), macro-F1 over all 8 "
            f"classes {task1['macro_f1_8']:.4f}, accuracy "
            f"{task1['accuracy']:.4f}, n = {task1['n']}; left out: {excluded['X']} X (no agreement), "
            f"{excluded['O']} O (other), {excluded['unlabelled']} without a class label.",
            "",
        ]
        lines += _table(
            ["class", "name", "precision", "recall", "F1", "support", "predicted"],
            [
                [code, s["name"], s["precision"], s["recall"], s["f1"], s["support"], s["predicted"]]
                for code, s in task1["per_class"].items()
            ],
        )
        matrix = task1["confusion_matrix"]
        lines += ["Confusion matrix (rows: true class, columns: predicted class, counts):", ""]
        lines += _table(
            ["true \\ pred", *matrix["labels"]],
            [[f"**{code}**", *row] for code, row in zip(matrix["labels"], matrix["counts"])],
        )
    if task2:
        lines += [
            "## Task 2: arousal, valence, dominance",
            "",
            f"**Mean CCC {task2['ccc_mean']:.4f}**, n = {task2['n']}.",
            "",
        ]
        lines += _table(
            ["attribute", "CCC", "Pearson r", "MAE", "mean true", "mean pred", "std true", "std pred"],
            [
                [
                    name,
                    task2["ccc"][name],
                    task2["pearson"][name],
                    task2["mae"][name],
                    task2["mean_true"][name],
                    task2["mean_pred"][name],
                    task2["std_true"][name],
                    task2["std_pred"][name],
                ]
                for name in task2["ccc"]
            ],
        )
        lines += [
            f"Extreme values, binned by the true rating (low <= {LOW_BIN_MAX}, high >= {HIGH_BIN_MIN}). "
            "A mean prediction closer to the middle than the mean true value, and a low bin recall "
            "(share predicted in the same bin), show the pull to mid-range.",
            "",
        ]
        rows = []
        for name, analysis in task2["extreme_values"].items():
            for bin_name, b in analysis["per_bin"].items():
                rows.append(
                    [name, bin_name, b["n"], b["mean_true"], b["mean_pred"], b["mae"], b["ccc"], b["recall"]]
                )
        lines += _table(
            ["attribute", "true bin", "n", "mean true", "mean pred", "MAE", "CCC", "bin recall"], rows
        )
    gender = report.get("gender")
    if gender:
        keys = [
            key
            for key in ("macro_f1", "macro_f1_8", "accuracy", *(f"ccc_{a}" for a in ATTRIBUTES))
            if key in gender["gap"]
        ]
        lines += ["## By speaker gender", ""]
        rows = [
            [group, entry["n"], *(entry.get(key) for key in keys)]
            for group, entry in gender["groups"].items()
        ]
        rows.append(["**gap (max - min)**", "", *(gender["gap"][key] for key in keys)])
        lines += _table(["group", "n", *keys], rows)
        if gender["gap_excludes"]:
            lines += [f"The gap leaves out: {', '.join(gender['gap_excludes'])}.", ""]
    if report.get("figures"):
        lines += ["## Figures", ""] + [f"![{name}]({name})" for name in report["figures"]] + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures


def write_figures(
    report: dict[str, Any],
    out_dir: Path,
    y_true: np.ndarray,
    y_pred: np.ndarray | None,
    attr_true: np.ndarray,
    attr_pred: np.ndarray | None,
) -> list[str]:
    """Write the report's PNGs into ``out_dir``; returns their file names."""
    written = []
    if report.get("task1"):
        written.append(_save(_confusion_figure(report["task1"]), out_dir / "confusion_matrix.png"))
        written.append(_save(_per_class_f1_figure(report["task1"]), out_dir / "per_class_f1.png"))
    if report.get("task2") and attr_pred is not None:
        keep = ~np.isnan(attr_true).any(axis=1)
        written.append(
            _save(
                _scatter_figure(attr_true[keep], attr_pred[keep], report["task2"]),
                out_dir / "attributes_scatter.png",
            )
        )
        written.append(_save(_bins_figure(report["task2"]), out_dir / "attribute_bins.png"))
    return written


def _new_figure(width: float, height: float) -> Any:
    # A Figure with its own Agg canvas: no pyplot, so no global backend switch, no display, and no
    # figure left open in a long-running process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> str:
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=FIGURE_DPI)
    return path.name


def _confusion_figure(task1: dict) -> Any:
    matrix = np.asarray(task1["confusion_matrix"]["row_normalised"])  # (8, 8) rows sum to 1 (or 0)
    labels = task1["confusion_matrix"]["labels"]
    figure = _new_figure(5.2, 4.6)
    ax = figure.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=ax, shrink=0.85)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{matrix[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if matrix[i, j] > 0.5 else "black",
            )
    ax.set_title(f"row-normalised confusion, macro-F1 {task1['macro_f1']:.3f}", fontsize=9)
    return figure


def _per_class_f1_figure(task1: dict) -> Any:
    codes = list(task1["per_class"])
    f1 = [task1["per_class"][code]["f1"] for code in codes]
    figure = _new_figure(5.2, 3.0)
    ax = figure.add_subplot()
    ax.bar(codes, f1, color="tab:blue")
    ax.axhline(
        task1["macro_f1"],
        color="tab:red",
        linestyle="--",
        linewidth=1,
        label=f"macro-F1 {task1['macro_f1']:.3f}",
    )
    for x, (code, value) in enumerate(zip(codes, f1)):
        ax.text(x, value + 0.02, f"n={task1['per_class'][code]['support']}", ha="center", fontsize=6)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_title("per-class F1", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    return figure


def _scatter_figure(attr_true: np.ndarray, attr_pred: np.ndarray, task2: dict) -> Any:
    figure = _new_figure(10.0, 3.8)
    axes = figure.subplots(1, len(ATTRIBUTES), sharey=True)
    lo, hi = ATTRIBUTE_MIN - 0.2, ATTRIBUTE_MAX + 0.2
    for j, (ax, name) in enumerate(zip(axes, ATTRIBUTES)):
        ax.scatter(attr_true[:, j], attr_pred[:, j], s=6, alpha=0.4, color="tab:blue", linewidths=0)
        ax.plot([lo, hi], [lo, hi], color="black", linestyle="--", linewidth=1, label="identity")
        for edge in (LOW_BIN_MAX, HIGH_BIN_MIN):  # bin boundaries on both axes
            ax.axvline(edge, color="grey", linewidth=0.6, linestyle=":")
            ax.axhline(edge, color="grey", linewidth=0.6, linestyle=":")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel(f"true {name}")
        ax.set_title(f"{name}: CCC {task2['ccc'][name]:.3f}", fontsize=9)
    axes[0].set_ylabel("predicted")
    axes[0].legend(fontsize=7, loc="upper left")
    return figure


def _bins_figure(task2: dict) -> Any:
    figure = _new_figure(6.5, 3.2)
    ax = figure.add_subplot()
    width = 0.38
    positions = []
    labels = []
    for j, name in enumerate(ATTRIBUTES):
        per_bin = task2["extreme_values"][name]["per_bin"]
        for b, bin_name in enumerate(metrics.BIN_NAMES):
            x = j * (len(metrics.BIN_NAMES) + 1) + b
            positions.append(x)
            labels.append(f"{name[:3]}\n{bin_name}")
            entry = per_bin[bin_name]
            if entry["n"]:
                ax.bar(
                    x - width / 2,
                    entry["mean_true"],
                    width,
                    color="tab:gray",
                    label="mean true" if not j and not b else None,
                )
                ax.bar(
                    x + width / 2,
                    entry["mean_pred"],
                    width,
                    color="tab:orange",
                    label="mean predicted" if not j and not b else None,
                )
    ax.axhline((ATTRIBUTE_MIN + ATTRIBUTE_MAX) / 2, color="black", linewidth=0.6, linestyle=":")
    ax.set_xticks(positions, labels, fontsize=7)
    ax.set_ylim(ATTRIBUTE_MIN, ATTRIBUTE_MAX)
    ax.set_ylabel("rating")
    ax.set_title("mean prediction per true bin (pull to mid-range)", fontsize=9)
    ax.legend(fontsize=7)
    return figure


# ----------------------------------------------------------------------------- summary table


def summary_row(system: str, report: dict[str, Any]) -> dict[str, Any]:
    """One row for :func:`format_summary_table` from a report dict (None where a task was not scored)."""
    task1, task2 = report.get("task1") or {}, report.get("task2") or {}
    row: dict[str, Any] = {
        "system": system,
        "macro_f1": task1.get("macro_f1"),
        "macro_f1_8": task1.get("macro_f1_8"),
    }
    for name in ATTRIBUTES:
        row[f"ccc_{name}"] = (task2.get("ccc") or {}).get(name)
    row["ccc_mean"] = task2.get("ccc_mean")
    return row


def format_summary_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str] = SUMMARY_COLUMNS, digits: int = 4
) -> str:
    """A fixed-width text table, one line per system; missing values show as ``-``.

    >>> print(format_summary_table([{"system": "prior", "macro_f1": 0.0312}]))
    system  macro_f1  ccc_arousal  ccc_valence  ccc_dominance
    prior     0.0312            -            -              -
    """
    if not rows:
        raise ValueError("format_summary_table needs at least one row")
    missing = [i for i, row in enumerate(rows) if "system" not in row]
    if missing:
        raise ValueError(f"rows {missing} have no 'system' key")

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{value:.{digits}f}" if isinstance(value, (float, np.floating)) else str(value)

    table = [["system", *columns]] + [
        [str(row["system"]), *(cell(row.get(c)) for c in columns)] for row in rows
    ]
    widths = [max(len(line[k]) for line in table) for k in range(len(table[0]))]
    lines = []
    for line in table:
        first = line[0].ljust(widths[0])
        lines.append("  ".join([first, *(value.rjust(widths[k + 1]) for k, value in enumerate(line[1:]))]))
    return "\n".join(lines)


__all__ = [
    "SUMMARY_COLUMNS",
    "UnlabelledSplitError",
    "is_blind",
    "report_or_submit",
    "evaluate",
    "evaluate_corpus",
    "format_summary_table",
    "summary_row",
    "to_markdown",
    "write_figures",
]
