"""Ensembles: plurality vote, averaging and stacking on synthetic complementary members; the YAML spec."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from llmser.config import ConfigError
from llmser.ensemble import (
    EnsembleSpec,
    StackingEnsemble,
    align_members,
    average,
    plurality_vote,
    run_ensemble,
)
from llmser.evaluation.metrics import macro_f1
from llmser.evaluation.predictions import Predictions, PredictionsError
from llmser.schema import CLASS_CODES, CODE_TO_INDEX

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Ref:
    file_name: str
    emo_class: str | None
    arousal: float | None
    valence: float | None
    dominance: float | None


def _labels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % 8)


def _member(labels: np.ndarray, reliable: set[int], p_good: float, p_bad: float, seed: int) -> np.ndarray:
    """(N, 8) probabilities: right with p_good on ``reliable`` classes, p_bad elsewhere; confident when right."""
    rng = np.random.default_rng(seed)
    probs = np.full((len(labels), 8), 0.0)
    for i, y in enumerate(labels):
        right = rng.random() < (p_good if y in reliable else p_bad)
        guess = y if right else rng.choice([c for c in range(8) if c != y])
        conf = rng.uniform(0.6, 0.9) if right else rng.uniform(0.25, 0.45)
        probs[i] = (1 - conf) / 7
        probs[i, guess] = conf
    return probs


def _split(n: int, seed: int, prefix: str) -> tuple[dict[str, Predictions], list[Ref]]:
    """Three complementary members: a is good on classes 0-3, b on 4-7, c mediocre everywhere."""
    labels = _labels(n, seed)
    names = [f"{prefix}_{i:04d}.wav" for i in range(n)]
    rng = np.random.default_rng(seed + 100)
    truth = rng.uniform(1, 7, (n, 3))
    specs = {"a": ({0, 1, 2, 3}, 0.9, 0.15), "b": ({4, 5, 6, 7}, 0.9, 0.15), "c": (set(range(8)), 0.45, 0.45)}
    members = {}
    for k, (name, (reliable, good, bad)) in enumerate(specs.items()):
        noise = rng.normal(0, 1.0 + k, (n, 3))
        members[name] = Predictions.from_probs(names, _member(labels, reliable, good, bad, seed + k),
                                               attributes=np.clip(truth + noise, 1, 7))
    refs = [Ref(nm, CLASS_CODES[y], *t) for nm, y, t in zip(names, labels, truth)]
    return members, refs


def _f1(preds: Predictions, refs: list[Ref]) -> float:
    preds = preds.subset([r.file_name for r in refs])
    return macro_f1([CODE_TO_INDEX[r.emo_class] for r in refs], [CODE_TO_INDEX[c] for c in preds.classes])


@pytest.fixture(scope="module")
def data():
    return _split(400, 0, "dev"), _split(400, 1, "test")


# ---------------------------------------------------------------------- plurality and average


def test_methods_beat_the_worst_member(data):
    (dev, dev_refs), (test, refs) = data
    member_f1 = {name: _f1(p, refs) for name, p in test.items()}
    stacker = StackingEnsemble(n_estimators=20, seed=0, attributes="mean").fit(dev, dev_refs)
    scores = {"plurality": _f1(plurality_vote(test), refs), "average": _f1(average(test), refs),
              "stacking": _f1(stacker.predict(test), refs)}
    worst, best = min(member_f1.values()), max(member_f1.values())
    assert all(score > worst + 0.05 for score in scores.values()), (scores, member_f1)
    assert scores["stacking"] > best + 0.1, (scores, member_f1)  # it learns who to trust for which class
    assert stacker.cv["oof_macro_f1"] > max(stacker.cv["member_macro_f1"].values())


def test_votes_are_kept_per_member(data):
    (_, _), (test, _) = data
    out = plurality_vote(test)
    assert set(out.extras) == {"vote_a", "vote_b", "vote_c"}
    assert out.extras["vote_a"] == test["a"].classes
    np.testing.assert_allclose(out.probs.sum(1), 1.0)


def _two(pa, pb, names=("x.wav",)):
    return {"a": Predictions.from_probs(list(names), np.atleast_2d(pa)),
            "b": Predictions.from_probs(list(names), np.atleast_2d(pb))}


def test_plurality_ties_go_to_the_larger_summed_probability():
    a = [0.6, 0.4, 0, 0, 0, 0, 0, 0]  # votes A
    b = [0.45, 0.55, 0, 0, 0, 0, 0, 0]  # votes S; A's sum 1.05 > S's 0.95
    assert plurality_vote(_two(a, b)).classes == ["A"]
    b = [0.3, 0.7, 0, 0, 0, 0, 0, 0]  # now S's sum 1.1 > 0.9
    assert plurality_vote(_two(a, b)).classes == ["S"]


def test_plurality_counts_votes_before_probability():
    names = ["x.wav"]
    weak_a = [0.35, 0.3, 0.35, 0, 0, 0, 0, 0]  # votes A (first max)
    members = {"a": Predictions.from_probs(names, [weak_a]), "b": Predictions.from_probs(names, [weak_a]),
               "c": Predictions.from_probs(names, [[0, 0.99, 0.01, 0, 0, 0, 0, 0]])}
    out = plurality_vote(members)
    assert out.classes == ["A"]  # two votes beat one confident vote
    assert average(members).classes == ["S"]  # averaging lets the confident member win


def test_members_with_classes_only_vote_one_hot_and_rows_align_by_name():
    a = Predictions(["x.wav", "y.wav"], classes=["H", "N"])
    b = Predictions.from_probs(["y.wav", "x.wav"], np.eye(8)[[7, 2]])  # reversed order: N for y, H for x
    c = Predictions(["x.wav", "y.wav"], classes=["A", "A"])
    out = plurality_vote({"a": a, "b": b, "c": c})
    assert out.file_names == ["x.wav", "y.wav"] and out.classes == ["H", "N"]


def test_attributes_are_averaged_and_weighted():
    names = ["x.wav", "y.wav"]
    probs = np.eye(8)[[0, 1]]
    a = Predictions.from_probs(names, probs, attributes=[[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]])
    b = Predictions.from_probs(names, probs, attributes=[[3.0, 4.0, 5.0], [6.0, 6.0, 6.0]])
    text_only = Predictions.from_probs(names, probs)  # no attributes: left out of the mean
    np.testing.assert_allclose(plurality_vote({"a": a, "b": b, "t": text_only}).attributes,
                               [[2.0, 3.0, 4.0], [5.0, 5.0, 5.0]])
    np.testing.assert_allclose(average({"a": a, "b": b}, weights={"a": 3.0}).attributes,
                               [[1.5, 2.5, 3.5], [4.5, 4.5, 4.5]])
    with pytest.raises(ValueError, match="unknown members"):
        average({"a": a, "b": b}, weights={"z": 1.0})


def test_missing_files_are_named_per_member():
    a = Predictions(["x.wav", "y.wav"], classes=["H", "N"])
    b = Predictions(["x.wav"], classes=["H"])
    with pytest.raises(PredictionsError, match=r"b: no prediction for 1 of 2 files, e.g. \['y.wav'\]"):
        align_members({"a": a, "b": b})


# ---------------------------------------------------------------------- stacking


def test_stacking_cv_is_stratified_and_deterministic(data):
    (dev, refs), (test, _) = data
    first = StackingEnsemble(n_estimators=10, seed=3, attributes="mean").fit(dev, refs)
    again = StackingEnsemble(n_estimators=10, seed=3, attributes="mean").fit(dev, refs)
    labels = np.array([CODE_TO_INDEX[r.emo_class] for r in refs])
    assert first.cv["folds"] == 5 and sorted(set(first.fold_ids.tolist())) == [0, 1, 2, 3, 4]
    for c in range(8):  # each class spread evenly over the folds
        counts = np.bincount(first.fold_ids[labels == c], minlength=5)
        assert counts.max() - counts.min() <= 1, (c, counts)
    np.testing.assert_array_equal(first.fold_ids, again.fold_ids)
    assert first.cv == again.cv
    np.testing.assert_array_equal(first.predict(test).probs, again.predict(test).probs)
    other = StackingEnsemble(n_estimators=10, seed=4, attributes="mean").fit(dev, refs)
    assert not np.array_equal(other.fold_ids, first.fold_ids)


def test_stacking_attributes_forest_and_mean(data):
    (dev, refs), (test, test_refs) = data
    forest = StackingEnsemble(n_estimators=10).fit(dev, refs).predict(test)
    assert ((forest.attributes >= 1) & (forest.attributes <= 7)).all()
    mean = StackingEnsemble(n_estimators=10, attributes="mean").fit(dev, refs).predict(test)
    np.testing.assert_allclose(mean.attributes, average(test).attributes)
    with pytest.raises(ValueError, match="'forest' or 'mean'"):
        StackingEnsemble(attributes="median")


def test_stacking_ignores_unlabelled_references_and_small_classes(data):
    (dev, refs), _ = data
    refs = [Ref(r.file_name, None if i % 3 == 0 else r.emo_class, r.arousal, r.valence, r.dominance)
            for i, r in enumerate(refs)]
    model = StackingEnsemble(n_estimators=10, folds=5).fit(dev, refs)
    assert model.cv["n_class"] == sum(r.emo_class is not None for r in refs)
    tiny = refs[:12]  # at most 2 per class: fewer folds, with a warning instead of a crash
    assert StackingEnsemble(n_estimators=5, folds=5).fit(dev, tiny).cv["folds"] <= 2 + 1


def test_stacking_save_load_refits_identically_without_pickle(data, tmp_path):
    (dev, refs), (test, _) = data
    model = StackingEnsemble(n_estimators=10, seed=1).fit(dev, refs)
    model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stacking.json", "stacking_inputs.safetensors"]
    loaded = StackingEnsemble.load(tmp_path)
    assert loaded.members == ["a", "b", "c"] and loaded.cv == model.cv
    a, b = model.predict(test), loaded.predict(test)
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.attributes, b.attributes)
    with pytest.raises(RuntimeError, match="not fitted"):
        StackingEnsemble().predict(test)
    with pytest.raises(PredictionsError, match="missing"):
        loaded.predict({"a": test["a"], "b": test["b"]})


# ---------------------------------------------------------------------- spec


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_shipped_spec_parses():
    spec = EnsembleSpec.load(ROOT / "ensembles/demo.yaml")
    assert spec.methods == ["plurality", "average", "stacking"] and spec.stacking.folds == 5
    assert set(spec.members) == {"wavlm", "text_llm", "audio_llm"}
    assert all(str(m.outputs) == "runs/demo/outputs" for m in spec.members.values())


def test_spec_errors_are_reported_together(tmp_path):
    path = _write(tmp_path / "bad.yaml", """
members:
  a: runs/a/test.csv
  b: {predictions: "runs/b/{split}.csv", outputs: runs/out}
  c: {predictions: {test: c.csv}, weight: 2}
  d: {outputs: runs/out, weight: 0}
methods: [plurality, stacking, vote]
stacking: {folds: 1, n_estimator: 5}
""")
    with pytest.raises(ConfigError) as info:
        EnsembleSpec.load(path)
    message = str(info.value)
    for expected in ("'vote' is not one of", "folds must be >= 2", "did you mean 'stacking.n_estimators'",
                     "give exactly one of predictions", "weight must be > 0",
                     "member 'a' has one prediction file for both 'dev'",
                     "member 'c' has no prediction file for split 'dev'"):
        assert expected in message, (expected, message)
    with pytest.raises(ConfigError, match="at least two members"):
        EnsembleSpec.load(_write(tmp_path / "one.yaml", "members: {a: 'x/{split}.csv'}\n"))
    with pytest.raises(ConfigError, match="quote paths with {split}"):
        EnsembleSpec.load(_write(tmp_path / "flow.yaml", "members: {a: x/{split}.csv, b: y.csv}\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        EnsembleSpec.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="members must map"):
        EnsembleSpec.load(_write(tmp_path / "list.yaml", "members: [a, b]\n"))
    # a single file per member is fine when nothing trains on another split
    spec = EnsembleSpec.load(_write(tmp_path / "ok.yaml", "members: {a: a.csv, b: b.csv}\nmethods: [plurality, average]\n"))
    assert spec.members["a"].csv_path("test") == Path("a.csv")


def test_run_ensemble_from_csvs_and_branch_outputs(data, tmp_path):
    import torch

    from llmser.data.branch_outputs import save_branch_outputs

    (dev, dev_refs), (test, _) = data
    for split, members in (("dev", dev), ("test", test)):
        members["a"].write_csv(tmp_path / f"a_{split}.csv")
        members["b"].write_csv(tmp_path / f"b_{split}.csv")
        c = members["c"]
        save_branch_outputs(tmp_path / "outputs", "mediocre", split, c.file_names,
                            {"embedding": torch.zeros(len(c), 2), "probs": torch.from_numpy(c.probs),
                             "attributes": torch.from_numpy(c.attributes)})
    spec = EnsembleSpec.load(_write(tmp_path / "spec.yaml", f"""
members:
  a: {tmp_path}/a_{{split}}.csv
  b: {{predictions: {{dev: {tmp_path}/b_dev.csv, test: {tmp_path}/b_test.csv}}}}
  c: {{outputs: {tmp_path}/outputs, branch: mediocre}}
stacking: {{n_estimators: 10, attributes: mean}}
"""))
    run = run_ensemble(spec, dev_refs, tmp_path / "out")
    assert set(run.predictions) == {"plurality", "average", "stacking"}
    for method in run.predictions:
        again = Predictions.read_csv(tmp_path / "out" / f"{method}_predictions.csv")
        assert again.classes == run.predictions[method].classes
        assert set(again.extras) == {"vote_a", "vote_b", "vote_c"}
    assert (tmp_path / "out" / "stacking" / "stacking.json").is_file()
    with pytest.raises(ValueError, match="stacking needs the 'dev' split"):
        run_ensemble(spec)
    broken = EnsembleSpec.load(_write(tmp_path / "broken.yaml", f"members: {{a: '{tmp_path}/nope_{{split}}.csv', "
                                                                f"c: {{outputs: {tmp_path}/outputs}}}}\n"))
    with pytest.raises(PredictionsError) as info:
        run_ensemble(broken, dev_refs)
    assert "member 'a'" in str(info.value) and "member 'c'" in str(info.value)


def test_stacking_is_refused_in_sample(data, tmp_path):
    import torch

    from llmser.data.branch_outputs import save_branch_outputs

    with pytest.raises(ValueError, match="'dev' and predict_split 'Development' share files: stacking would be scored on the examples it "
                       "learned from"):
        EnsembleSpec.from_dict({"members": {"a": "a_{split}.csv", "b": "b_{split}.csv"}, "fit_split": "dev",
                                "predict_split": "Development"})
    (dev, dev_refs), (test, _) = data
    for split, members in (("dev", dev), ("test", test)):
        for name in ("a", "c"):
            m = members[name]
            save_branch_outputs(tmp_path / "outputs", name, split, m.file_names,
                                {"embedding": torch.zeros(len(m), 2), "probs": torch.from_numpy(m.probs)},
                                trained_on="Development" if name == "c" else "Train")
    spec = EnsembleSpec.from_dict({"members": {"a": {"outputs": str(tmp_path / "outputs")},
                                               "c": {"outputs": str(tmp_path / "outputs")}},
                                   "methods": ["plurality", "stacking"], "stacking": {"n_estimators": 5}})
    with pytest.raises(PredictionsError, match=r"member 'c'.*in-sample \(its model trained on 'Development'\)"):
        run_ensemble(spec, dev_refs, tmp_path / "out")
