"""Test is only reported on: every split argument that fits or selects is refused when it is (or overlaps) test,
before any work, on every command that takes a split; the explicit opt-in is recorded (llmser.data.splits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from corpus_factory import write_corpus

from llmser.cli import main
from llmser.data.msp_podcast import MSPPodcast
from llmser.data.splits import SplitRoleError, SplitUse, check_split_roles, is_test_name, splits_overlap

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "adapters" / "wavlm_tiny.yaml")
CODES = ["A", "S", "H", "N"]


def _rows(blind: bool = False) -> list[list]:
    """32 tone clips of 16 speakers: 12 Train, 6 Development, 14 Test1 of two classes (or Test3 without labels
    when blind)."""
    rows = []
    for i in range(32):
        split = "Train" if i < 12 else ("Development" if i < 18 else ("Test3" if blind else "Test1"))
        code = CODES[i % (4 if i < 18 else 2)]
        labels = ["", "", "", ""] if blind and split == "Test3" else [code, 3.0 + i % 3, 4.0, 4.0]
        rows.append([f"MSP-PODCAST_{i // 2 + 1:04d}_{i:04d}.wav", *labels, i // 2 + 1, "Female", split])
    return rows


@pytest.fixture()
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus", _rows())


@pytest.mark.parametrize("name", ["test", "Test1", "TEST2", "test3", "test[0/2]", "Test1[^1/5]", " tEsT "])
def test_every_name_of_test_and_its_folds_is_test(name):
    assert is_test_name(name)


@pytest.mark.parametrize("name", ["train", "dev", "Development", "dev[^0/5]", "testing", "Train[1/2]"])
def test_other_splits_are_not_test(name):
    assert not is_test_name(name)


def test_overlap_by_name_resolves_aliases_case_and_folds():
    assert splits_overlap("dev", "Development")
    assert splits_overlap("DEV[0/5]", "development[^1/5]")
    assert not splits_overlap("dev[0/5]", "dev[^0/5]")
    assert splits_overlap("test", "Test1[1/2]")
    assert not splits_overlap("train", "test")


def test_a_split_that_shares_files_with_test_is_test(corpus):
    """A fold, an alias or another name of test is caught by its files, not only by its name."""
    reader = MSPPodcast.from_folder(corpus)
    uses = [SplitUse("data.eval_split", "Test1[^0/2]", "select")]
    with pytest.raises(SplitRoleError, match=r"data.eval_split='Test1\[\^0/2\]' chooses on test"):
        check_split_roles(uses, reader)
    assert check_split_roles([SplitUse("data.test_split", "test", "report")], reader)["splits"]


@pytest.mark.parametrize("override", ["data.eval_split=test", "data.train_split=Test1", "data.eval_split=test[0/2]",
                                      "data.train_split=test[^0/2]", "data.eval_split=TEST1"])
def test_train_refuses_test_for_fit_or_select_before_any_work(corpus, tmp_path, capsys, override):
    out = tmp_path / "run"
    status = main(["train", RECIPE, f"data.corpus={corpus}", f"train.output_dir={out}", override])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    argument = override.split("=")[0]
    assert f"{argument}=" in err and "may only be reported on" in err and "data.allow_test_fit=true" in err
    assert not out.exists() or not any(out.iterdir())  # nothing built, nothing written


def test_fusion_refuses_test_for_train_and_eval(corpus, tmp_path, capsys):
    out = tmp_path / "fusion"
    status = main(["train", str(ROOT / "adapters" / "fusion_tiny.yaml"), f"data.corpus={corpus}",
                   f"train.output_dir={out}", "data.train_split=test", "data.eval_split=test",
                   f"model.outputs_dir={tmp_path / 'outputs'}"])
    err = capsys.readouterr().err
    assert status == 2
    assert "data.train_split='test' learns from test" in err and "data.eval_split='test' chooses on test" in err


def test_baseline_and_prior_refuse_test(corpus, tmp_path, capsys):
    cases = [["baseline", "classical", "--corpus", str(corpus), "--out", str(tmp_path / "b"), "--dev-split", "test"],
             ["baseline", "classical", "--corpus", str(corpus), "--out", str(tmp_path / "b"), "--train-split",
              "Test1[^0/2]"],
             ["predict-prior", "--corpus", str(corpus), "--train-split", "test", "--out", str(tmp_path / "p.csv")]]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "may only be reported on" in err and "--allow-test-fit" in err, (argv, err)
    assert not (tmp_path / "b").exists() and not (tmp_path / "p.csv").exists()


def test_prior_fitted_on_test_with_the_flag_is_recorded(corpus, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["predict-prior", "--corpus", str(corpus), "--train-split", "test", "--allow-test-fit",
                 "--out", str(out)]) == 0
    record = json.loads(out.with_name("p.splits.json").read_text())
    assert record["test_fit"] == ["--train-split=test (fit)"]


def _members(tmp_path: Path, splits: list[str]) -> Path:
    """Two members' prediction CSVs for ``splits`` of the test corpus."""
    import numpy as np

    from llmser.evaluation.predictions import Predictions

    reader = MSPPodcast.from_folder(tmp_path / "corpus")
    for member in ("a", "b"):
        for split in splits:
            names = [u.file_name for u in reader.utterances(reader.resolve_split(split))]
            probs = np.random.default_rng(len(member)).dirichlet(np.ones(8), len(names))
            Predictions.from_probs(names, probs, attributes=np.full((len(names), 3), 4.0)).write_csv(
                tmp_path / member / f"{split}.csv")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"members:\n  a: '{tmp_path}/a/{{split}}.csv'\n  b: '{tmp_path}/b/{{split}}.csv'\n"
                    "methods: [average, stacking]\nstacking: {n_estimators: 5, folds: 2}\n")
    return spec


@pytest.mark.parametrize("fit", ["test", "test[^0/2]", "Test1"])
def test_stacking_refuses_to_fit_on_test_or_its_folds(corpus, tmp_path, capsys, fit):
    spec = _members(tmp_path, ["test", "dev"])
    status = main(["ensemble", str(spec), f"fit_split={fit}", "--corpus", str(corpus), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert status == 2 and "learns from test" in err and "allow_test_fit=true" in err
    assert not (tmp_path / "e").exists()


def test_stacking_fit_on_test_with_the_override_is_recorded(corpus, tmp_path, capsys):
    spec = _members(tmp_path, ["test", "test[^0/2]", "test[0/2]"])
    out = tmp_path / "e"
    assert main(["ensemble", str(spec), "fit_split=test[^0/2]", "predict_split=test[0/2]", "allow_test_fit=true",
                 "--corpus", str(corpus), "--out", str(out)]) == 0
    record = json.loads((out / "ensemble.json").read_text())
    assert record["allow_test_fit"] and record["test_fit"] == ["fit_split=test[^0/2] (fit)"]


def test_ensemble_spec_lists_each_missing_file_once(tmp_path):
    from llmser.config import ConfigError
    from llmser.ensemble import EnsembleSpec

    spec = tmp_path / "s.yaml"
    spec.write_text("members:\n  a: {predictions: {dev: x.csv}}\n  b: {predictions: {dev: y.csv}}\n"
                    "methods: [average, stacking]\nfit_split: test\n")
    with pytest.raises(ConfigError) as info:
        EnsembleSpec.load(spec)
    message = str(info.value)
    assert message.count("member 'a' has no prediction file") == 1
    assert message.count("member 'b' has no prediction file") == 1


def test_train_on_a_corpus_with_a_blind_test_split_writes_metrics_and_submission(tmp_path, capsys, caplog):
    """The challenge's Test3 has no labels: the run says so before training, keeps its dev scores in
    metrics.json and ends with the submission files (it used to train, predict, then exit 2 with neither)."""
    from llmser.evaluation.submission import validate_task1, validate_task2

    corpus = write_corpus(tmp_path / "blind", _rows(blind=True))
    out = tmp_path / "run"
    status = main(["train", RECIPE, f"data.corpus={corpus}", f"train.output_dir={out}", "data.test_split=Test3",
                   "train.max_steps=2", "train.eval_every=2", "train.save_every=2", "data.batch_size=4",
                   "data.max_seconds=1.0", "optim.warmup_steps=0"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    messages = [r.getMessage() for r in caplog.records]
    said = next(i for i, m in enumerate(messages) if "has no labels (a blind split)" in m)
    assert said < next(i for i, m in enumerate(messages) if "trainable params" in m)  # said before training
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_blind"] and metrics["test"]["blind"] and "macro_f1" in metrics["dev"]
    assert metrics["splits"]["data.test_split"] == {"split": "Test3", "role": "report"}
    blind_files = [r[0] for r in _rows(blind=True) if r[-1] == "Test3"]
    assert sorted(validate_task1(out / "test" / "task1_predictions.csv", blind_files)) == sorted(blind_files)
    validate_task2(out / "test" / "task2_predictions.csv", blind_files)
    assert "blind" in captured.out and "submission files" in captured.out


def test_train_logs_splits_by_role_and_test_scores_not_at_info(corpus, tmp_path, capsys, caplog):
    """docs/protocol.md: train prints dev only; the test scores are in the report (they were logged at INFO)."""
    out = tmp_path / "run"
    assert main(["train", RECIPE, f"data.corpus={corpus}", f"train.output_dir={out}", "train.max_steps=2",
                 "train.eval_every=2", "train.save_every=2", "data.batch_size=4", "data.max_seconds=1.0",
                 "optim.warmup_steps=0"]) == 0
    info = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert not [m for m in info if m.startswith("test")], info
    assert {"fit split: train (data.train_split)", "select split: dev (data.eval_split)",
            "report split: test (data.test_split)"} <= set(info)
    printed = capsys.readouterr().out
    assert "select split dev (data.eval_split), best step" in printed and "report split predicted" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["splits"]["data.train_split"] == {"split": "train", "role": "fit"} and "test_fit" not in metrics


def test_train_on_test_with_the_override_says_so_in_metrics(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", RECIPE, f"data.corpus={corpus}", f"train.output_dir={out}", "train.max_steps=1",
                 "train.eval_every=1", "train.save_every=1", "data.batch_size=4", "data.max_seconds=1.0",
                 "optim.warmup_steps=0", "data.eval_split=test[0/2]", "data.allow_test_fit=true",
                 "train.predict_test=false"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_fit"] == ["data.eval_split=test[0/2] (select)"]
    assert "WARNING: test was used for more than a report" in capsys.readouterr().out


def test_build_system_auto_refuses_to_choose_on_test(corpus, tmp_path, capsys):
    out = tmp_path / "system"
    status = main(["build-system", "--member", f"a={tmp_path / 'a'}", "--member", f"b={tmp_path / 'b'}", "--outputs",
                   str(tmp_path / "outputs"), "--corpus", str(corpus), "--dev-split", "test[0/2]", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2 and "--dev-split='test[0/2]' chooses on test" in err and "Traceback" not in err
    assert not out.exists()


def test_ensemble_on_a_blind_predict_split_writes_submission_files_and_no_scores(tmp_path, capsys):
    """The demo's ensembles with predict_split=Test3 (no labels): each method writes its submission files and is
    left out of the score table (it used to stop at the first method, refusing to score)."""
    corpus = write_corpus(tmp_path / "corpus", _rows(blind=True))
    spec = _members(tmp_path, ["Test3", "dev"])
    out = tmp_path / "e"
    assert main(["ensemble", str(spec), "predict_split=Test3", "fit_split=dev", "--corpus", str(corpus),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for method in ("average", "stacking"):
        assert f"{method}: Test3 has no labels (blind), not scored" in printed
        assert (out / method / "task1_predictions.csv").is_file() and not (out / method / "report.json").exists()
