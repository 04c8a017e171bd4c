"""The synthetic demo corpus: exact release layout, MSP-like imbalance, disjoint speakers, determinism."""

from __future__ import annotations

import csv
import shutil
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from llmser.data.demo_corpus import DemoCorpusConfig, DemoCorpusError, make_demo_corpus, plan_corpus
from llmser.data.msp_podcast import MSPPodcast
from llmser.schema import CLASS_CODES


def test_plan_has_msp_like_imbalance_and_disjoint_speakers():
    plan = plan_corpus(DemoCorpusConfig(n=2000, seed=1))
    counts = Counter(u.consensus for u in plan)
    assert counts["N"] > counts["H"] > counts["A"] > counts["F"]
    assert counts["H"] > counts["S"] > counts["D"]
    assert min(counts[c] for c in CLASS_CODES) > 0 and counts["X"] > 0 and counts["O"] > 0
    speakers = {s: {u.speaker for u in plan if u.split == s} for s in ("Train", "Development", "Test1")}
    assert not (speakers["Train"] & speakers["Development"]) and not (speakers["Train"] & speakers["Test1"])
    assert {u.gender for u in plan} == {"Female", "Male"}
    for split in speakers:
        split_counts = Counter(u.consensus for u in plan if u.split == split)
        assert all(split_counts[c] >= 2 for c in CLASS_CODES), split
    assert sum(u.emotional_wording for u in plan if u.intended in "ASHUFDC") > 0
    values = np.array([u.consensus_attributes for u in plan])
    assert (values <= 2.5).any(axis=0).all() and (values >= 5.5).any(axis=0).all()  # extremes exist


def test_consensus_is_derived_from_five_disagreeing_annotators():
    plan = plan_corpus(DemoCorpusConfig(n=300, seed=2))
    disagreements = 0
    for u in plan:
        assert len(u.annotations) == 5 and len({a["WorkerID"] for a in u.annotations}) == 5
        votes = Counter(a["code"] for a in u.annotations)
        top, n = votes.most_common(1)[0]
        assert u.consensus == (top if n >= 3 else "X")
        assert u.consensus_attributes[0] == pytest.approx(np.mean([a["EmoAct"] for a in u.annotations]), abs=1e-3)
        disagreements += len(votes) > 1
    assert 0.3 < disagreements / len(plan) < 0.95


def test_plan_is_deterministic():
    a, b = plan_corpus(DemoCorpusConfig(n=200, seed=5)), plan_corpus(DemoCorpusConfig(n=200, seed=5))
    assert [(u.file_name, u.text, u.consensus, u.prosody) for u in a] == \
        [(u.file_name, u.text, u.consensus, u.prosody) for u in b]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_written_corpus_reads_back(tmp_path):
    out = tmp_path / "demo"
    summary = make_demo_corpus(out, DemoCorpusConfig(n=40, seed=0, n_speakers=6, workers=2), progress=False)
    assert summary["n_files"] == 40 and (out / "README.md").is_file() and (out / "demo_corpus.json").is_file()
    corpus = MSPPodcast.from_folder(out)
    assert len(corpus) == 40 and corpus.splits() == ["Train", "Development", "Test1"]
    utt = corpus.utterances()[0]
    wave, rate = sf.read(utt.audio_path)
    assert rate == 16000 and wave.ndim == 1 and np.sqrt(np.mean(wave ** 2)) > 0.01
    assert utt.transcript and utt.annotations
    with open(out / "Labels" / "labels_consensus.csv") as handle:
        assert next(csv.reader(handle)) == ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID",
                                            "Gender", "Split_Set"]
    first = (out / "Labels" / "labels_detailed.csv").read_bytes()
    with pytest.raises(DemoCorpusError, match="--overwrite"):
        make_demo_corpus(out, DemoCorpusConfig(n=40, seed=0, n_speakers=6), progress=False)
    make_demo_corpus(out, DemoCorpusConfig(n=40, seed=0, n_speakers=6, workers=2), overwrite=True, progress=False)
    assert (out / "Labels" / "labels_detailed.csv").read_bytes() == first


def test_missing_espeak_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DemoCorpusError, match="apt-get install espeak-ng"):
        make_demo_corpus(tmp_path / "x", DemoCorpusConfig(n=20))


def test_blind_files_leave_the_labelled_plan_unchanged():
    plain, blind = plan_corpus(DemoCorpusConfig(n=60, seed=3)), plan_corpus(DemoCorpusConfig(n=60, seed=3, blind=8))
    assert [(u.file_name, u.consensus) for u in blind[:60]] == [(u.file_name, u.consensus) for u in plain]
    extra = blind[60:]
    assert len(extra) == 8 and {u.split for u in extra} == {"Test3"} and not any(u.annotations for u in extra)
    assert not {u.speaker for u in extra} & {u.speaker for u in plain}
    assert len({u.file_name for u in blind}) == 68


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_make_demo_corpus_blind_split_is_read_as_blind_and_submitted_not_scored(tmp_path, capsys):
    """``make-demo-corpus --blind N``: N Test3 files with empty label cells and no annotator rows; the reader
    sees a blind split, and ``evaluate --submission`` on it writes the submission files and no scores."""
    from llmser.cli import main
    from llmser.evaluation.predictions import Predictions
    from llmser.evaluation.report import is_blind

    out = tmp_path / "demo"
    assert main(["make-demo-corpus", str(out), "--n", "20", "--speakers", "6", "--workers", "2", "--blind", "4"]) == 0
    assert "Test3        4 files, no labels (blind)" in capsys.readouterr().out
    corpus = MSPPodcast.from_folder(out)
    blind = corpus.utterances(corpus.resolve_split("test3"), task="all")
    assert len(blind) == 4 and is_blind(blind) and all(u.transcript for u in blind)
    assert not is_blind(corpus.utterances(corpus.resolve_split("test"), task="all"))
    with open(out / "Labels" / "labels_consensus.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["Split_Set"] == "Test3"]
    assert len(rows) == 4 and all(r["EmoClass"] == r["EmoAct"] == "" for r in rows)
    detailed = (out / "Labels" / "labels_detailed.csv").read_text()
    assert not any(r["FileName"] in detailed for r in rows)

    predictions = tmp_path / "pred" / "predictions.csv"
    predictions.parent.mkdir()
    Predictions(file_names=[u.file_name for u in blind], classes=["N", "H", "A", "S"],
                attributes=np.full((4, 3), 4.0)).write_csv(predictions)
    assert main(["evaluate", "--predictions", str(predictions), "--corpus", str(out), "--split", "Test3",
                 "--out", str(tmp_path / "report"), "--submission"]) == 0
    printed = capsys.readouterr().out
    assert "has no labels (blind): not scored" in printed and "macro-F1" not in printed
    written = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert "report.json" not in written and {"task1_predictions.csv", "task2_predictions.csv"} <= set(written)
    assert main(["evaluate", "--predictions", str(predictions), "--corpus", str(out), "--split", "Test3"]) == 2
