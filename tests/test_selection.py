"""What a built system ships is chosen on dev (``build-system --method auto``): every candidate scored on
out-of-sample dev predictions with the same folds, the best shipped, its table in the manifest and the card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tiny_models  # noqa: E402 - the tests folder is on sys.path under pytest
import torch

from llmser.data.msp_podcast import Utterance
from llmser.evaluation.predictions import Predictions
from llmser.schema import CLASS_CODES


def _references(n: int = 40, speakers: int = 8) -> list[Utterance]:
    rng = np.random.default_rng(0)
    return [Utterance(file_name=f"f{i:03d}.wav", audio_path=Path(f"f{i:03d}.wav"), split="dev",
                      emo_class=CLASS_CODES[i % 8], arousal=float(rng.uniform(1, 7)), valence=float(rng.uniform(1, 7)),
                      dominance=float(rng.uniform(1, 7)), speaker=str(i % speakers), gender="Female")
            for i in range(n)]


def _member(refs, class_accuracy: float, attribute_noise: float, seed: int) -> Predictions:
    """A member right on about ``class_accuracy`` of the files, its attributes the truth plus noise."""
    rng = np.random.default_rng(seed)
    truth = np.array([CLASS_CODES.index(r.emo_class) for r in refs])
    picks = np.where(rng.random(len(refs)) < class_accuracy, truth, rng.integers(0, 8, len(refs)))
    probs = np.full((len(refs), 8), 0.05)
    probs[np.arange(len(refs)), picks] = 0.65
    attrs = np.array([[r.arousal, r.valence, r.dominance] for r in refs]) + attribute_noise * rng.standard_normal((len(refs), 3))
    return Predictions.from_probs([r.file_name for r in refs], probs, attributes=np.clip(attrs, 1, 7))


def test_every_candidate_is_scored_and_the_best_on_dev_is_chosen():
    from llmser.ensemble.selection import choose, score_candidates

    refs = _references()
    members = {"speech": _member(refs, 0.8, 1.0, 1), "text": _member(refs, 0.4, 0.3, 2),
               "noise": _member(refs, 0.0, 5.0, 3)}
    fusion = {"fusion": _member(refs, 0.5, 0.5, 4)}
    table = score_candidates(members, refs, fusion=fusion, folds=4)
    assert [c.name for c in table] == ["speech_alone", "text_alone", "noise_alone", "plurality", "average",
                                       "weighted_average", "stacking", "fusion"]
    chosen = choose(table, "combined")
    assert chosen.scores["combined"] == max(c.scores["combined"] for c in table)
    assert choose(table, "macro_f1").scores["macro_f1"] == max(c.scores["macro_f1"] for c in table)
    assert table[2].scores["macro_f1"] < 0.3 and table[0].scores["macro_f1"] > 0.6


def test_learned_candidates_never_score_a_file_they_learned_from(monkeypatch):
    from llmser.ensemble import selection

    refs = _references()
    members = {"a": _member(refs, 0.7, 1.0, 1), "b": _member(refs, 0.5, 1.0, 2)}
    seen = []
    real_fit, real_predict = selection.StackingEnsemble.fit, selection.StackingEnsemble.predict

    def fit(self, fit_members, fit_refs, **kwargs):
        seen.append(("fit", {r.file_name for r in fit_refs}))
        return real_fit(self, fit_members, fit_refs, **kwargs)

    def predict(self, held):
        seen.append(("predict", set(next(iter(held.values())).file_names)))
        return real_predict(self, held)

    monkeypatch.setattr(selection.StackingEnsemble, "fit", fit)
    monkeypatch.setattr(selection.StackingEnsemble, "predict", predict)
    folds = selection.dev_folds(refs, 4)
    selection.score_candidates(members, refs, folds=4)
    pairs = list(zip(seen[::2], seen[1::2]))
    assert len(pairs) == 4
    for (_, fitted), (_, scored) in pairs:
        assert not fitted & scored and fitted | scored == {r.file_name for r in refs}
        assert len({folds[n] for n in scored}) == 1  # one speaker-disjoint fold held out at a time


def test_auto_ships_the_best_candidate_with_its_table_and_predict_runs_it(tmp_path):
    """A member that is right everywhere: shipping it alone beats every combination with the others, so the
    system holds that member only; the card and llmser.json carry the candidates' dev table."""
    from llmser.cli import main
    from llmser.data.branch_outputs import save_branch_outputs
    from llmser.hub.manifest import SystemManifest
    from llmser.inference.predictor import Predictor
    from tests.corpus_factory import write_corpus

    refs = _references(24, 6)
    rows = [[r.file_name, r.emo_class, round(r.arousal, 1), round(r.valence, 1), round(r.dominance, 1), r.speaker,
             "Female", "Development"] for r in refs] + [["t.wav", "A", 4.0, 4.0, 4.0, 99, "Male", "Train"]]
    corpus = write_corpus(tmp_path / "corpus", rows)
    runs = {}
    for seed, (name, accuracy, noise) in enumerate([("good", 1.0, 0.0), ("poor", 0.3, 2.0)]):
        runs[name] = tiny_models.save_run(tmp_path, name, tiny_models.build("wavlm", seed=seed), "wavlm")
        member = _member(refs, accuracy, noise, seed)
        save_branch_outputs(tmp_path / "outputs", name, "Development", member.file_names,
                            {"embedding": torch.zeros(len(refs), 4),
                             "probs": torch.from_numpy(member.probs).float(),
                             "attributes": torch.from_numpy(member.attributes).float()})
    code = main(["build-system", "--member", f"good={runs['good']}", "--member", f"poor={runs['poor']}",
                 "--outputs", str(tmp_path / "outputs"), "--corpus", str(corpus), "--folds", "3",
                 "--out", str(tmp_path / "system")])
    assert code == 0
    manifest = SystemManifest.load(tmp_path / "system")
    assert manifest.ensemble["method"] == "member" and manifest.ensemble["member"] == "good"
    assert [m.name for m in manifest.members] == ["good"]
    selection = json.loads((tmp_path / "system" / "selection.json").read_text())
    assert selection["chosen"] == "good_alone" and selection["dev"]["macro_f1"] == pytest.approx(1.0)
    assert {c["candidate"] for c in selection["candidates"]} >= {"good_alone", "poor_alone", "plurality", "stacking"}
    card = (tmp_path / "system" / "README.md").read_text()
    assert "How this system was chosen" in card and "| good_alone (shipped) |" in card
    paths = tiny_models.write_clips(tmp_path / "clips", (1.0, 1.0))
    result = Predictor.from_pretrained(tmp_path / "system")(paths, progress=False)
    assert len(result.predictions) == 2 and set(result.predictions.extras) == {"vote_good"}


def test_predict_runs_stacking_and_weighted_average_as_the_ensemble_module_does():
    from llmser.ensemble.methods import StackingEnsemble, average
    from llmser.inference.predictor import Predictor

    refs = _references()
    members = {"a": _member(refs, 0.7, 1.0, 1), "b": _member(refs, 0.5, 1.0, 2)}
    stacker = StackingEnsemble(n_estimators=20).fit(members, refs)
    outputs = {n: {"probs": torch.from_numpy(p.probs).float(), "attributes": torch.from_numpy(p.attributes).float(),
                   "embedding": torch.zeros(len(refs), 2)} for n, p in members.items()}
    names = [r.file_name for r in refs]
    shipped = Predictor([], "stacking", combine_settings={"stacker": stacker})._combine(names, outputs)
    assert shipped.classes == stacker.predict(members).classes
    weighted = Predictor([], "average", combine_settings={"weights": {"a": 3.0, "b": 1.0}})._combine(names, outputs)
    np.testing.assert_allclose(weighted.probs, average(members, {"a": 3.0, "b": 1.0}).probs, rtol=1e-5)


def test_weighted_average_leaves_out_the_members_its_weights_drop():
    """Weights fitted to {speech: 1} (noise dropped) must score as speech alone, not as an even average."""
    from llmser.ensemble.selection import dev_scores, fit_average_weights, score_candidates

    refs = _references()
    members = {"speech": _member(refs, 0.9, 0.2, 1), "noise": _member(refs, 0.0, 5.0, 3)}
    assert fit_average_weights(members, refs) == {"speech": 1.0}
    table = {c.name: c for c in score_candidates(members, refs, folds=4)}
    assert table["weighted_average"].scores == dev_scores(members["speech"], refs)
    assert table["average"].scores["combined"] < table["weighted_average"].scores["combined"]


def test_out_of_fold_joins_folds_whose_models_read_different_members():
    """A fold's weights may drop a member the next fold keeps: its vote columns differ, the join must not care."""
    from llmser.ensemble.selection import _out_of_fold, dev_folds, weighted_average

    refs = _references()
    members = {"a": _member(refs, 0.7, 1.0, 1), "b": _member(refs, 0.5, 1.0, 2)}
    folds = dev_folds(refs, 4)
    calls = []

    def fit_predict(fit_members, fit_refs, held):
        calls.append(1)
        return weighted_average(held, {"a": 1.0} if len(calls) % 2 else {"a": 1.0, "b": 1.0})

    joined = _out_of_fold(fit_predict, members, refs, folds)
    assert sorted(joined.file_names) == sorted(r.file_name for r in refs) and len(calls) == 4

