"""The evaluation report: files written, numbers equal to the metrics, coverage and task filtering."""

import json
import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest
from sklearn.metrics import f1_score

from llmser.evaluation import report as report_module
from llmser.evaluation.metrics import ccc
from llmser.evaluation.predictions import Predictions, PredictionsError
from llmser.evaluation.report import evaluate, evaluate_corpus, format_summary_table, summary_row
from llmser.schema import CLASS_CODES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ["confusion_matrix.png", "per_class_f1.png", "attributes_scatter.png", "attribute_bins.png"]


@dataclass
class Utt:
    """Stands in for the corpus reader's Utterance (only the fields the report reads)."""

    file_name: str
    emo_class: str | None
    arousal: float | None
    valence: float | None
    dominance: float | None
    gender: str


def _corpus(n: int = 60, seed: int = 0) -> tuple[list[Utt], Predictions]:
    rng = np.random.default_rng(seed)
    codes = list(CLASS_CODES) + ["X", "O", None]
    refs = []
    for i in range(n):
        attrs = rng.uniform(1, 7, 3) if i % 10 else (None, None, None)  # every 10th has no attributes
        refs.append(Utt(f"f{i:03d}.wav", codes[i % len(codes)], *attrs, ("Female", "Male", "Unknown")[i % 3]))
    probs = rng.dirichlet(np.ones(8), n)
    true_attrs = np.array([[u.arousal or 4.0, u.valence or 4.0, u.dominance or 4.0] for u in refs])
    attributes = 0.5 * true_attrs + 2.0 + rng.normal(0, 0.3, (n, 3))
    return refs, Predictions.from_probs([u.file_name for u in refs], probs, attributes)


def test_evaluate_writes_every_file_with_the_metric_values(tmp_path):
    refs, preds = _corpus()
    out = tmp_path / "report"
    result = evaluate(preds, refs, out, title="unit test system")
    for name in ["report.json", "report.md", *FIGURES]:
        assert (out / name).stat().st_size > 0, name
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["report.json", "report.md", *FIGURES]
    )  # no temp files
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(result))

    # task 1: only the eight classes; X, O and None are counted, not scored
    labelled = [u for u in refs if u.emo_class in CLASS_CODES]
    index = {n: i for i, n in enumerate(preds.file_names)}
    y_true = [u.emo_class for u in labelled]
    y_pred = [preds.classes[index[u.file_name]] for u in labelled]
    task1 = result["task1"]
    assert task1["n"] == len(labelled) == 45  # 60 refs cycle 11 codes: 5 x 8 + 5
    assert task1["excluded"] == {"X": 5, "O": 5, "unlabelled": 5}
    assert task1["macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, labels=list(CLASS_CODES), average="macro", zero_division=0)
    )
    # task 2: only references with attributes
    with_attrs = [u for u in refs if u.arousal is not None]
    assert result["task2"]["n"] == len(with_attrs) == 54
    true_arousal = [u.arousal for u in with_attrs]
    pred_arousal = [preds.attributes[index[u.file_name], 0] for u in with_attrs]
    assert result["task2"]["ccc"]["arousal"] == pytest.approx(ccc(true_arousal, pred_arousal))
    assert set(result["gender"]["groups"]) == {"Female", "Male", "Unknown"}
    female, male = (result["gender"]["groups"][g]["macro_f1"] for g in ("Female", "Male"))
    assert result["gender"]["gap"]["macro_f1"] == pytest.approx(abs(female - male))
    assert result["coverage"]["fraction"] == 1.0 and result["figures"] == FIGURES

    markdown = (out / "report.md").read_text()
    assert "# unit test system" in markdown
    assert f"Macro-F1 {task1['macro_f1']:.4f}" in markdown
    assert f"Mean CCC {result['task2']['ccc_mean']:.4f}" in markdown
    assert "| Female |" in markdown and "gap (max - min)" in markdown
    assert "5 X (no agreement), 5 O (other), 5 without a class label" in markdown


def test_missing_predictions_raise_or_are_reported(tmp_path):
    refs, preds = _corpus(30)
    partial = preds.subset([u.file_name for u in refs[5:]])
    with pytest.raises(
        PredictionsError, match=r"5 of 30 reference files have no prediction.*f000.wav.*allow_missing"
    ):
        evaluate(partial, refs, tmp_path)
    result = evaluate(partial, refs, tmp_path, allow_missing=True, plots=False)
    assert result["coverage"]["n_missing"] == 5
    assert result["coverage"]["fraction"] == pytest.approx(25 / 30)
    assert result["coverage"]["missing_examples"] == [f"f{i:03d}.wav" for i in range(5)]
    assert "25 of 30 reference files have a prediction (83.3%)" in (tmp_path / "report.md").read_text()
    assert not list(tmp_path.glob("*.png"))


def test_classes_only_predictions_skip_task2(tmp_path):
    refs, preds = _corpus(30)
    extra = Predictions(preds.file_names + ["not_in_split.wav"], classes=preds.classes + ["A"])
    result = evaluate(extra, refs, tmp_path)
    assert result["task2"] is None
    assert "task 2 not scored: the predictions have no attributes" in result["notes"]
    assert result["coverage"]["n_extra_predictions"] == 1
    assert "ccc_arousal" not in result["gender"]["gap"]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["confusion_matrix.png", "per_class_f1.png"]


def test_reference_errors(tmp_path):
    refs, preds = _corpus(10)
    with pytest.raises(ValueError, match="no reference utterances"):
        evaluate(preds, [], tmp_path)
    with pytest.raises(ValueError, match="more than once"):
        evaluate(preds, refs + refs[:1], tmp_path)
    other = Predictions(["zzz.wav"], classes=["A"])
    with pytest.raises(PredictionsError, match="none of the 10 reference files"):
        evaluate(other, refs, tmp_path, allow_missing=True)


def test_evaluate_corpus_reads_the_split_through_the_reader(tmp_path, monkeypatch):
    refs, preds = _corpus(20)
    path = preds.write_csv(tmp_path / "predictions.csv")
    calls = []

    class FakeCorpus:
        @classmethod
        def from_folder(cls, root):
            calls.append(("from_folder", root))
            return cls()

        def resolve_split(self, name):
            return {"test": "test1"}[name]

        def utterances(self, split, task="all"):
            calls.append(("utterances", split, task))
            return refs

    fake = types.ModuleType("llmser.data.msp_podcast")
    fake.MSPPodcast = FakeCorpus
    monkeypatch.setitem(sys.modules, "llmser.data.msp_podcast", fake)
    result = evaluate_corpus(path, tmp_path / "MSP-Podcast", "test", tmp_path / "out")
    assert calls == [("from_folder", tmp_path / "MSP-Podcast"), ("utterances", "test1", "all")]
    assert result["title"] == "predictions.csv on MSP-Podcast / test1"
    assert (tmp_path / "out" / "report.json").is_file()


def test_format_summary_table():
    rows = [
        {
            "system": "prior",
            "macro_f1": 0.03125,
            "ccc_arousal": 0.0,
            "ccc_valence": 0.0,
            "ccc_dominance": 0.0,
        },
        {"system": "wavlm+llm fusion", "macro_f1": 0.41239, "ccc_valence": float("nan")},
    ]
    assert format_summary_table(rows) == (
        "system            macro_f1  ccc_arousal  ccc_valence  ccc_dominance\n"
        "prior               0.0312       0.0000       0.0000         0.0000\n"
        "wavlm+llm fusion    0.4124            -            -              -"
    )
    with pytest.raises(ValueError, match="no 'system'"):
        format_summary_table([{"macro_f1": 0.1}])


def test_summary_row_from_a_report(tmp_path):
    refs, preds = _corpus(30)
    result = evaluate(preds, refs, tmp_path, plots=False)
    row = summary_row("sys", result)
    assert row["macro_f1"] == result["task1"]["macro_f1"]
    assert row["ccc_dominance"] == result["task2"]["ccc"]["dominance"]
    assert report_module.SUMMARY_COLUMNS[0] in format_summary_table([row])


def test_a_split_missing_a_class_reports_both_macro_f1s(tmp_path):
    refs = [Utt(f"f{i}.wav", "ASH"[i % 3], 4.0, 4.0, 4.0, "Female") for i in range(9)]
    classes = ["A", "S", "H", "A", "S", "S", "A", "H", "H"]
    result = evaluate(Predictions([u.file_name for u in refs], classes=classes), refs, tmp_path, plots=False)
    task1, y_true = result["task1"], [u.emo_class for u in refs]
    assert task1["macro_f1"] == pytest.approx(f1_score(y_true, classes, average="macro"))  # the organisers' way
    assert task1["macro_f1_8"] == pytest.approx(
        f1_score(y_true, classes, labels=list(CLASS_CODES), average="macro", zero_division=0)
    )
    assert task1["macro_f1_8"] == pytest.approx(task1["macro_f1"] * 3 / 8) and task1["macro_f1_classes"] == ["A", "S", "H"]
    markdown = (tmp_path / "report.md").read_text()
    assert f"**Macro-F1 {task1['macro_f1']:.4f}** (as the organisers score it" in markdown
    assert f"macro-F1 over all 8 classes {task1['macro_f1_8']:.4f}" in markdown
    assert summary_row("s", result)["macro_f1_8"] == task1["macro_f1_8"]


def test_a_blind_split_is_read_predicted_and_submitted_but_not_scored(tmp_path, capsys):
    from llmser.cli import main
    from llmser.data.msp_podcast import MSPPodcast
    from llmser.evaluation import submission
    from llmser.evaluation.report import UnlabelledSplitError
    from tests.corpus_factory import good_rows, write_corpus

    blind = [[f"MSP-PODCAST_0153_000{i}.wav", "", "", "", "", "Unknown", "Unknown", "Test3"] for i in range(3)]
    root = write_corpus(tmp_path / "c", good_rows() + blind)
    names = [u.file_name for u in MSPPodcast.from_folder(root).utterances("test3")]
    assert len(names) == 3
    preds = Predictions.from_probs(names, np.full((3, 8), 1 / 8), attributes=np.full((3, 3), 4.0))
    path = preds.write_csv(tmp_path / "predictions.csv")
    with pytest.raises(UnlabelledSplitError, match=r"split Test3 has no labels .* blind test set .*--submission"):
        evaluate_corpus(path, root, "test3", tmp_path / "report")
    assert main(["evaluate", "--predictions", str(path), "--corpus", str(root), "--split", "Test3",
                 "--out", str(tmp_path / "out"), "--submission"]) == 0  # the files are the result; no scores
    assert "has no labels (blind): not scored" in capsys.readouterr().out
    for name in ("task1_predictions.csv", "task1_probabilities.csv", "task2_predictions.csv"):
        kind, rows = submission.validate_file(tmp_path / "out" / name, names)
        assert sorted(rows) == sorted(names), kind
    assert not (tmp_path / "out" / "report.json").exists()
