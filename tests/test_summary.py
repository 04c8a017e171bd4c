"""llmser compare: one row per system, mean ± standard deviation over seeds, JSON and a PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmser.cli import main
from llmser.evaluation.summary import aggregate_reports, format_table


def _report(f1: float, arousal: float) -> dict:
    return {"task1": {"macro_f1": f1, "macro_f1_8": f1 - 0.01},
            "task2": {"ccc": {"arousal": arousal, "valence": 0.2, "dominance": 0.1}, "ccc_mean": (arousal + 0.3) / 3}}


def test_seeds_give_mean_and_sample_std():
    row = aggregate_reports("text", [_report(0.30, 0.5), _report(0.40, 0.7), _report(0.35, 0.6)])
    assert row["n_runs"] == 3
    assert row["macro_f1"] == pytest.approx(0.35)
    assert row["macro_f1_std"] == pytest.approx(np.std([0.30, 0.40, 0.35], ddof=1))
    assert row["ccc_arousal_std"] == pytest.approx(0.1)
    single = aggregate_reports("prior", [_report(0.05, 0.0)])
    assert "macro_f1_std" not in single and single["n_runs"] == 1
    table = format_table([row, single])
    assert "0.3500 ± 0.0500" in table and "runs" in table.splitlines()[0]


def test_compare_command_writes_json_and_png(tmp_path, capsys):
    paths = []
    for seed, f1 in enumerate((0.3, 0.5)):
        path = tmp_path / f"seed{seed}.json"
        path.write_text(json.dumps(_report(f1, 0.4)))
        paths.append(str(path))
    prior = tmp_path / "prior.json"
    prior.write_text(json.dumps(_report(0.05, 0.0)))
    out = tmp_path / "summary.json"
    code = main(["compare", f"fusion={paths[0]},{paths[1]}", f"prior={prior}", f"gone={tmp_path / 'missing.json'}",
                 "--out", str(out)])
    assert code == 0
    rows = {r["system"]: r for r in json.loads(out.read_text())["systems"]}
    assert rows["fusion"]["macro_f1"] == pytest.approx(0.4) and rows["fusion"]["n_runs"] == 2
    assert "gone" not in rows and "missing.json" in capsys.readouterr().err
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_a_runs_metrics_json_gives_its_dev_scores():
    metrics = {"step": 40, "dev": {"macro_f1": 0.3, "ccc_arousal": 0.5, "ccc_valence": 0.1, "ccc_dominance": 0.3,
                                   "ccc_mean": 0.3, "combined": 0.3}, "test": {"metrics": {"macro_f1": 0.9}}}
    row = aggregate_reports("text_head", [metrics])
    assert row["macro_f1"] == 0.3 and row["ccc_arousal"] == 0.5 and row["ccc_mean"] == 0.3


def test_a_runs_shipped_dev_scores_win_over_its_training_checkpoints():
    """An LLM branch's metrics.json carries ``dev_final`` (calibrated answers, the recipe's vote, on dev): the dev
    table reads that, not the uncalibrated scores its checkpoints were compared by."""
    metrics = {"dev": {"macro_f1": 0.04, "ccc_arousal": 0.5, "ccc_valence": 0.1, "ccc_dominance": 0.3, "ccc_mean": 0.3},
               "dev_final": {"macro_f1": 0.21, "ccc_arousal": 0.6, "ccc_valence": 0.0, "ccc_dominance": 0.3}}
    row = aggregate_reports("audio_speech", [metrics])
    assert row["macro_f1"] == 0.21 and row["ccc_arousal"] == 0.6 and abs(row["ccc_mean"] - 0.3) < 1e-12
