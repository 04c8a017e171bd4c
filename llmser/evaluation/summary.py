"""Tables of several systems' scores, with seeds: what ``llmser compare`` prints, writes and plots.

A system may come with several reports (one per seed). Its row then holds the mean of each metric,
``<metric>_std`` (sample standard deviation, ddof=1) and ``n_runs``; differences smaller than the
spread across seeds are noise, and the table shows both so a reader can tell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmser.evaluation.report import SUMMARY_COLUMNS, _new_figure, _save, summary_row

METRICS: tuple[str, ...] = ("macro_f1", "macro_f1_8", "ccc_arousal", "ccc_valence", "ccc_dominance", "ccc_mean")


def as_report(data: dict[str, Any]) -> dict[str, Any]:
    """A report dict from either a report.json or a training run's metrics.json: its ``dev_final`` scores (what
    the run ships - an LLM branch's calibrated answers and prompt vote - on dev) where it has them, else the best
    checkpoint's ``dev`` scores from training.

    So ``llmser compare NAME=runs/x/metrics.json`` tabulates dev, the split every choice is made on.
    """
    if "task1" in data or "task2" in data or "dev" not in data:
        return data
    dev = data.get("dev_final") or data["dev"] or {}
    ccc = {name: dev[f"ccc_{name}"] for name in ("arousal", "valence", "dominance") if f"ccc_{name}" in dev}
    ccc_mean = dev.get("ccc_mean", float(np.mean(list(ccc.values()))) if len(ccc) == 3 else None)
    return {"task1": {"macro_f1": dev.get("macro_f1")} if "macro_f1" in dev else {},
            "task2": {"ccc": ccc, "ccc_mean": ccc_mean} if ccc else {}}


def aggregate_reports(system: str, reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row for ``system`` from one report or several (seeds): means, standard deviations, run count."""
    if not reports:
        raise ValueError(f"{system}: no reports to aggregate")
    rows = [summary_row(system, as_report(report)) for report in reports]
    row: dict[str, Any] = {"system": system, "n_runs": len(rows)}
    for metric in METRICS:
        values = [r[metric] for r in rows if _is_number(r.get(metric))]
        row[metric] = float(np.mean(values)) if values else None
        if len(rows) > 1:
            row[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return row


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = SUMMARY_COLUMNS, digits: int = 4) -> str:
    """A fixed-width table; a cell reads ``mean ± std`` where the row has several runs, ``-`` where missing."""
    if not rows:
        raise ValueError("format_table needs at least one row")

    def cell(row: dict[str, Any], column: str) -> str:
        value = row.get(column)
        if not _is_number(value):
            return "-"
        spread = row.get(f"{column}_std")
        return f"{value:.{digits}f}" + (f" ± {spread:.{digits}f}" if _is_number(spread) else "")

    seeds = any(row.get("n_runs", 1) > 1 for row in rows)
    header = ["system", *columns] + (["runs"] if seeds else [])
    table = [header] + [[str(row["system"]), *(cell(row, c) for c in columns)]
                        + ([str(row.get("n_runs", 1))] if seeds else []) for row in rows]
    widths = [max(len(line[k]) for line in table) for k in range(len(header))]
    return "\n".join("  ".join([line[0].ljust(widths[0]), *(v.rjust(widths[k + 1]) for k, v in enumerate(line[1:]))])
                     for line in table)


def plot_summary(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """A PNG of systems x (macro-F1, mean CCC), bars with error bars where there are seeds."""
    path = Path(path)
    names = [str(r["system"]) for r in rows]
    figure = _new_figure(9.0, 0.42 * len(rows) + 1.6)
    for k, (metric, label) in enumerate((("macro_f1", "task 1: macro-F1"), ("ccc_mean", "task 2: mean CCC"))):
        ax = figure.add_subplot(1, 2, k + 1)
        values = [r.get(metric) if _is_number(r.get(metric)) else 0.0 for r in rows]
        errors = [r.get(f"{metric}_std") if _is_number(r.get(f"{metric}_std")) else 0.0 for r in rows]
        y = np.arange(len(rows))
        ax.barh(y, values, xerr=errors, color="#4c72b0" if k == 0 else "#55a868", capsize=3)
        ax.set_yticks(y, names if k == 0 else [""] * len(names))
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.set_xlim(min(0.0, min(values) - 0.05), max(0.05, max(v + e for v, e in zip(values, errors)) * 1.1))
        ax.grid(axis="x", alpha=0.3)
        for yi, value, error in zip(y, values, errors):
            ax.text(value + error, yi, f"  {value:.3f}", va="center", fontsize=7)
    if title:
        figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(figure, path)
    return path


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating)) and not (isinstance(value, float) and math.isnan(value))
