"""scripts/gpu_checks.py in its --dry-run mode: the same code as on a GPU (random full-architecture models built
locally, each branch's tiny recipe, the 8-B recipes' QLoRA and LoRA steps, phase peaks against the plan,
scoring cost and agreement) at small shapes on the CPU; one line per check, and the dated row goes to the
docs file it is given (here a temporary copy, never the real docs/gpu-checks.md)."""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import io
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("gpu_checks", ROOT / "scripts" / "gpu_checks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_row_goes_first_in_the_results_table(tmp_path):
    checks = _script()
    report = checks.Report()
    report("PASS", "train[lora]", "3 steps of 8 x 416 tokens: 9.80 examples/s")
    report("SKIP", "train[qlora]", "bitsandbytes is not installed")
    report("FAIL", "phase[lora/generation]", "measured 2 GiB, planned 1 GiB (a|b)")
    row = checks.docs_row(report, "H200", datetime.date(2027, 1, 2))
    assert row.startswith("| 2027-01-02 (scripts/gpu_checks.py) | H200 | 1 pass, 1 fail, 1 skip; ")
    assert "9.80 examples/s" in row and "(a/b)" in row and row.count("|") == 4  # a | in a figure cannot split the row
    docs = tmp_path / "gpu-checks.md"
    docs.write_text("# GPU checks\n\n| date | machine | result |\n|---|---|---|\n| 2026-12 | none | not run |\n\nmore\n")
    checks.append_row(docs, row)
    lines = docs.read_text().splitlines()
    assert lines[4] == row and lines[5] == "| 2026-12 | none | not run |" and lines[-1] == "more"
    fresh = tmp_path / "new.md"
    checks.append_row(fresh, row)
    assert fresh.read_text().splitlines()[-3:] == ["| date | machine | result |", "|---|---|---|", row]


@pytest.mark.slow
def test_dry_run_prints_a_line_per_check_and_writes_the_row(tmp_path):
    checks = _script()
    docs = tmp_path / "gpu-checks.md"
    docs.write_text((ROOT / "docs" / "gpu-checks.md").read_text(encoding="utf-8"), encoding="utf-8")
    real = (ROOT / "docs" / "gpu-checks.md").read_text(encoding="utf-8")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = checks.main(["--dry-run", "--docs", str(docs)])
    lines = out.getvalue().splitlines()
    names = [line.split(":", 1)[0] for line in lines if line.startswith(("PASS ", "FAIL ", "SKIP "))]
    expected = [f"PASS cuda_path[{b}]" for b in ("wavlm", "text_llm", "audio_llm")]
    expected += [f"PASS phase[{m}/{p}]" for m in ("qlora", "lora")
                 for p in ("train step", "evaluation", "prompt voting", "generation")]
    expected += ["PASS train[qlora]", "PASS train[lora]", "PASS scoring[5-vs-1]", "PASS scoring[naive-vs-fast]"]
    assert sorted(names) == sorted(expected), out.getvalue()
    assert code == 0
    assert any("examples/s" in line for line in lines) and any("5 variants cost" in line for line in lines)
    row = f"| {datetime.date.today().isoformat()} (scripts/gpu_checks.py) | CPU dry run, small shapes"
    written = docs.read_text(encoding="utf-8").splitlines()
    header = written.index("| date | machine | result |")
    assert written[header + 2].startswith(row) and "15 pass, 0 fail, 0 skip" in written[header + 2]
    assert (ROOT / "docs" / "gpu-checks.md").read_text(encoding="utf-8") == real  # the real docs untouched


@pytest.mark.slow
def test_whole_run_dry_run_trains_evaluates_and_reports_on_long_transcripts(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_whole_run", ROOT / "scripts" / "gpu_whole_run.py")
    whole = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(whole)
    assert whole.main(["adapters/text_llama3_8b.yaml", "--dry-run", "--work", str(tmp_path), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "RESULT adapters/text_llama3_8b.yaml: exit 0" in out and "peak phase" in out
    texts = list((tmp_path / "corpus" / "Transcripts").glob("*.txt"))
    assert len(texts) == 9 * 4 * 3 and all(len(t.read_text().split()) == 40 for t in texts)
    assert (tmp_path / "run" / "test" / "report.json").is_file()  # the report split ran, every variant voting
