"""Classical baselines: eGeMAPS cache, standard output files, TF-IDF on words, transcripts, dev-only choices."""

from __future__ import annotations

import csv
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llmser.baselines import BaselineError
from llmser.baselines.classical import choose, run_classical
from llmser.baselines.config import ClassicalConfig
from llmser.data.demo_corpus import ATTRIBUTE_MEANS, EMOTIONAL_SENTENCES, NEUTRAL_SENTENCES
from llmser.evaluation.predictions import ATTR_COLUMNS, PROB_COLUMNS
from llmser.schema import CLASS_CODES
from tests.corpus_factory import tone, write_corpus

SPLIT_SIZES = {"Train": 4, "Development": 2, "Test1": 2}  # files per class


def _word_corpus(root: Path, test_shift: int = 0) -> Path:
    """Eight classes whose words carry the label (the demo corpus's emotional sentences) and whose tones
    differ by class. ``test_shift`` rotates only the test split's labels: same features, other test truth."""
    rows, texts = [], {}
    rng = np.random.default_rng(0)
    speaker = 0
    for split, per_class in SPLIT_SIZES.items():
        for k, code in enumerate(CLASS_CODES):
            label = CLASS_CODES[(k + test_shift) % len(CLASS_CODES)] if split == "Test1" else code
            for i in range(per_class):
                speaker += 1
                name = f"MSP-PODCAST_{speaker:04d}_{k}{i:03d}.wav"
                attrs = np.clip(np.array(ATTRIBUTE_MEANS[label]) + rng.normal(0, 0.3, 3), 1, 7).round(2)
                rows.append([name, label, *attrs, speaker, "Female" if speaker % 2 else "Male", split])
                pool = EMOTIONAL_SENTENCES.get(code, NEUTRAL_SENTENCES)
                texts[Path(name).stem] = pool[(i + len(split)) % len(pool)]
    write_corpus(root, rows, transcripts=texts, audio=False)
    for row in rows:
        k = int(row[0].split("_")[-1][0])  # the class index written into the name
        sf.write(root / "Audios" / row[0], tone(freq=140 + 45 * k, amplitude=0.1 + 0.04 * k), 16000)
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _word_corpus(tmp_path_factory.mktemp("baselines") / "corpus")


def _config(tmp_path: Path, **changes) -> ClassicalConfig:
    return replace(ClassicalConfig(cache_dir=str(tmp_path / "cache")), **changes)


def test_choose_takes_the_best_dev_score_and_on_a_tie_the_stronger_regularisation():
    assert choose({0.01: 0.2, 0.1: 0.5, 1.0: 0.4}) == 0.1
    assert choose({1000.0: 0.3, 100.0: 0.3, 10.0: 0.1}) == 1000.0


def test_config_names_every_bad_flag():
    with pytest.raises(BaselineError, match=r"(?s)--systems: unknown system.*wavlm.*--c-grid"):
        ClassicalConfig(systems=("wavlm",), c_grid=(0.0,))


def test_egemaps_without_opensmile_names_the_package(monkeypatch):
    from llmser.baselines.features import EgemapsExtractor

    monkeypatch.setitem(sys.modules, "opensmile", None)  # import opensmile now raises ImportError
    with pytest.raises(BaselineError, match=r"pip install opensmile==2\.6\.0"):
        EgemapsExtractor()


def test_egemaps_features_are_cached(corpus, tmp_path):
    pytest.importorskip("opensmile")
    from llmser.baselines.features import EGEMAPS_DIM, EgemapsExtractor, egemaps_matrix
    from llmser.data.msp_podcast import MSPPodcast

    utterances = MSPPodcast.from_folder(corpus).utterances("dev")
    extractor = EgemapsExtractor()
    first = egemaps_matrix(utterances, extractor, tmp_path / "cache")
    assert first.shape == (len(utterances), EGEMAPS_DIM) and extractor.calls == len(utterances)
    second = egemaps_matrix(utterances, extractor, tmp_path / "cache")
    assert extractor.calls == len(utterances)  # nothing extracted again
    np.testing.assert_array_equal(first, second)


def _prediction_header(path: Path) -> list[str]:
    with open(path, newline="") as handle:
        return next(csv.reader(handle))


@pytest.mark.slow
def test_run_writes_standard_files_and_a_rerun_reads_no_audio(corpus, tmp_path, monkeypatch):
    pytest.importorskip("opensmile")
    summary = run_classical(corpus, "test", tmp_path / "out", _config(tmp_path))
    assert list(summary["systems"]) == ["egemaps", "tfidf", "late_fusion"]
    for name in summary["systems"]:
        folder = tmp_path / "out" / name
        assert _prediction_header(folder / "predictions.csv") == ["FileName", "EmoClass", *PROB_COLUMNS, *ATTR_COLUMNS]
        report = json.loads((folder / "report.json").read_text())
        assert report["n_references"] == 16 and report["task1"]["macro_f1"] >= 0
        assert set(report["task2"]["ccc"]) == {"arousal", "valence", "dominance"}
        assert (folder / "report.md").is_file() and (folder / "dev" / "report.json").is_file()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dev_split"] == "dev"

    def no_audio(*args, **kwargs):
        raise AssertionError("audio read although its eGeMAPS features are cached")

    monkeypatch.setattr("llmser.baselines.features.load_audio", no_audio)
    again = run_classical(corpus, "test", tmp_path / "again", _config(tmp_path, systems=("egemaps",)))
    assert again["systems"]["egemaps"]["target"] == summary["systems"]["egemaps"]["target"]


def test_tfidf_beats_chance_when_words_carry_the_label(corpus, tmp_path):
    summary = run_classical(corpus, "test", tmp_path / "out", _config(tmp_path, systems=("tfidf",)))
    target = summary["systems"]["tfidf"]["target"]
    assert target["macro_f1"] > 0.5  # chance is 1/8
    assert target["ccc_valence"] > 0.3


def test_regularisation_is_chosen_on_dev_never_on_test(corpus, tmp_path):
    other = _word_corpus(tmp_path / "other", test_shift=3)  # same train/dev, other test labels
    config = _config(tmp_path, systems=("tfidf",))
    run_classical(corpus, "test", tmp_path / "a", config)
    run_classical(other, "test", tmp_path / "b", config)
    a, b = (json.loads((tmp_path / d / "tfidf" / "selection.json").read_text()) for d in ("a", "b"))
    assert a["task1"] == b["task1"] and a["task2"] == b["task2"]  # test labels changed nothing chosen
    grid = {float(k): v for k, v in a["task1"]["grid"].items()}
    assert a["task1"]["chosen"] == choose(grid) and a["splits"]["dev"] == "Development"
    dev_report = json.loads((tmp_path / "a" / "tfidf" / "dev" / "report.json").read_text())
    assert dev_report["task1"]["macro_f1"] == pytest.approx(a["task1"]["dev_score"])


def test_missing_transcript_is_an_error_naming_the_file_or_empty_text_with_a_count(tmp_path, caplog):
    root = _word_corpus(tmp_path / "corpus")
    missing = sorted((root / "Transcripts").glob("*.txt"))[-1]
    missing.unlink()
    with pytest.raises(BaselineError, match=rf"1 of .* have no transcript, e\.g\. .*{missing.name}"):
        run_classical(root, "test", tmp_path / "out", _config(tmp_path, systems=("tfidf",)))
    logger = logging.getLogger("llmser")
    logger.addHandler(caplog.handler)  # llmser's logger does not propagate to the root
    try:
        run_classical(root, "test", tmp_path / "out", _config(tmp_path, systems=("tfidf",),
                                                              missing_transcripts="empty"))
    finally:
        logger.removeHandler(caplog.handler)
    assert "1 of 16 utterance(s) have no transcript; scored as empty text" in caplog.text
    assert (tmp_path / "out" / "tfidf" / "predictions.csv").is_file()


def test_cli_writes_the_files_and_reports_errors_cleanly(corpus, tmp_path, capsys):
    from llmser.cli import main

    out = tmp_path / "out"
    code = main(["baseline", "classical", "--corpus", str(corpus), "--split", "test", "--out", str(out),
                 "--systems", "tfidf", "--cache-dir", str(tmp_path / "cache")])
    assert code == 0 and (out / "tfidf" / "report.md").is_file() and (out / "summary.json").is_file()
    assert "tfidf" in capsys.readouterr().out
    code = main(["baseline", "classical", "--corpus", str(corpus), "--out", str(out), "--systems", "svm"])
    assert code == 2 and "unknown system(s) ['svm']" in capsys.readouterr().err
