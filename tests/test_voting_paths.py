"""Prompt voting is what the LLM branches run: the voting setting, each branch's vote_batch, the test report,
collect-outputs and the predictor all read the same vote (tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tiny_models  # noqa: E402 - the tests folder is on sys.path under pytest
import torch

from llmser.config import ConfigError
from llmser.models.voting import VotingConfig, vote

ROOT = Path(__file__).resolve().parents[1]


def _tiny_corpus(root: Path) -> Path:
    from tests.corpus_factory import transcribed_corpus

    return transcribed_corpus(root)


# ---------------------------------------------------------------------- the setting


def test_voting_section_parses_from_a_recipe_and_bad_values_are_named():
    from llmser.models.registry import branch_config, load_recipe

    recipe = load_recipe(ROOT / "adapters/text_tiny.yaml", ["model.voting.rule=mean",
                                                             "model.voting.variants=[text_plain,text_short]"])
    config = branch_config(recipe)
    assert config.voting == VotingConfig(variants=["text_plain", "text_short"], rule="mean")
    with pytest.raises(ConfigError, match="voting.rule"):
        load_recipe(ROOT / "adapters/audio_tiny.yaml", ["model.voting.rule=majority"])
    with pytest.raises(ValueError, match="not variants of this model"):
        VotingConfig(variants=["text_nope"]).select(["text_plain"])
    assert VotingConfig().select(["b", "a"]) == ["b", "a"]


def test_plurality_and_mean_rules_can_disagree():
    # two voters say class 0 weakly, one says class 1 strongly: plurality 0, mean 1
    probs = np.array([[[0.5, 0.5, 0]], [[0.5, 0.5, 0]], [[0.0, 1.0, 0]]]) + 1e-3
    probs[:2, :, 0] += 0.01
    assert vote(probs, list("abc"), "plurality").labels.tolist() == [0]
    assert vote(probs, list("abc"), "mean").labels.tolist() == [1]


# ---------------------------------------------------------------------- each branch's vote_batch


def _utterances(n: int = 3):
    from llmser.inference.predictor import _utterance

    texts = ["so happy today", "i hate this", "fine"]
    return [_utterance(Path(f"clip{i}.wav"), texts[i % 3]) for i in range(n)]


def test_text_vote_rows_equal_each_variant_through_the_heads_alone():
    from llmser.models.llm.votes import collect_votes
    from llmser.models.text_llm.branch import predict_data

    model = tiny_models.build("text_llm", voting=VotingConfig(rule="plurality"))
    utts = _utterances()
    dataset, collate = predict_data(model, None, utts)
    result = collect_votes(model, dataset, collate, batch_size=2, progress=False)
    assert result.variant_probs.shape == (3, len(model.config.prompts), 8)
    assert result.variant_names == list(model.config.prompts)
    assert len(model.prefix_cache) == len(model.config.prompts)  # each instruction once for the run, not per batch
    templates = list(dataset.templates)
    for k in range(len(templates)):
        dataset.templates = templates[k:] + templates[:k]  # variant k first: what a single forward reads
        with torch.no_grad():
            out = model(**collate([dataset[i] for i in range(3)]))
        np.testing.assert_allclose(result.variant_probs[:, k], out.class_logits.softmax(-1).numpy(), atol=1e-5)
        np.testing.assert_allclose(result.variant_attributes[:, k], out.attributes.numpy(), atol=1e-4)
    np.testing.assert_allclose(result.probs, result.variant_probs.mean(1), atol=1e-6)
    expected = vote(result.variant_probs.transpose(1, 0, 2), result.variant_names).labels
    assert result.labels.tolist() == expected.tolist()


def test_audio_vote_batch_encodes_once_and_equals_vote_probabilities(monkeypatch):
    from llmser.models.audio_llm.branch import predict_data
    from llmser.models.llm.votes import collect_votes

    model = tiny_models.build("audio_llm", voting=VotingConfig(["speech_plain", "speech_short"], "mean"))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        paths = tiny_models.write_clips(Path(tmp))
        from llmser.inference.predictor import _utterance

        utts = [_utterance(p, None) for p in paths]
        dataset, collate = predict_data(model, None, utts)
        calls = []
        original = model.speech.forward
        monkeypatch.setattr(model.speech, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
        result = collect_votes(model, dataset, collate, batch_size=3, progress=False)
        assert len(calls) == 1  # the speech ran once for the whole batch, whatever the number of variants
        batch = collate([dataset[i] for i in range(3)])
    templates = [t for t in model.templates if t.name in ("speech_plain", "speech_short")]
    direct = model.vote_probabilities(batch["speech_frames"], batch["frame_mask"], templates)  # (K, B, 8)
    np.testing.assert_allclose(result.variant_probs, direct.transpose(1, 0, 2), atol=1e-5)
    assert result.variant_names == ["speech_plain", "speech_short"]
    assert result.labels.tolist() == result.probs.argmax(1).tolist()  # the mean rule


# ---------------------------------------------------------------------- the consumers


def test_text_run_reports_each_variant_and_the_vote_and_collects_the_vote(tmp_path):
    from llmser.data.branch_outputs import load_branch_outputs
    from llmser.inference.collect import collect_run_outputs
    from llmser.training.run import run

    corpus = _tiny_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    result = run(ROOT / "adapters/text_tiny.yaml", [f"data.corpus={corpus}", f"train.output_dir={out}",
                                                     "train.max_steps=2", "train.eval_every=2", "train.save_every=2",
                                                     "data.batch_size=4", "model.voting.variants=all"])
    table = json.loads((out / "test" / "voting.json").read_text())
    names = ["vote", "text_plain", "text_definitions", "text_shuffled", "text_annotator", "text_short"]
    assert [r["variant"] for r in table["dev"]] == names and [r["variant"] for r in table["test"]] == names
    assert table["test"][0]["macro_f1"] == pytest.approx(result["test"]["metrics"]["macro_f1"])
    assert result["dev_final"]["macro_f1"] == pytest.approx(table["dev"][0]["macro_f1"])  # the vote's dev scores
    assert "On dev the vote" in (out / "test" / "voting.md").read_text()
    assert (out / "test" / "single" / "report.json").is_file()
    header = (out / "test_predictions.csv").read_text().splitlines()[0]
    assert all(f"vote_{n}" in header for n in names[1:])
    collect_run_outputs(out, tmp_path / "outputs", ("dev",), progress=False)
    dev = load_branch_outputs(tmp_path / "outputs", "text_llm", "dev")
    assert dev.variant_names == names[1:] and dev.tensors["variant_probs"].shape == (3, 5, 8)
    preds = dev.predictions()
    dev_votes = {r["variant"]: r for r in table["dev"]}
    from llmser.evaluation.metrics import macro_f1
    from llmser.schema import CLASS_CODES

    truth = ["A", "S", "H"]  # dev files 10..12
    f1 = macro_f1([CLASS_CODES.index(c) for c in truth], [CLASS_CODES.index(c) for c in preds.classes])
    assert f1 == pytest.approx(dev_votes["vote"]["macro_f1"])
    assert set(preds.extras) == {f"vote_{n}" for n in names[1:]}
    torch.testing.assert_close(dev.tensors["probs"], dev.tensors["variant_probs"].mean(1))


def test_system_card_lists_the_variants_and_rule_and_predict_carries_each_variants_vote(tmp_path):
    from llmser.inference.predictor import Predictor
    from llmser.inference.system import build_system

    section = tiny_models.section("text_llm", voting={"variants": ["text_plain", "text_short"], "rule": "mean"})
    model = tiny_models.build("text_llm", voting=VotingConfig(["text_plain", "text_short"], "mean"))
    run = tiny_models.save_run(tmp_path, "text", model, "text_llm", section)
    system = build_system(tmp_path / "system", {"text_llm": run}, method="average")
    card = (system / "README.md").read_text()
    assert "## Prompt voting" in card and "| text_llm | mean | text_plain, text_short |" in card
    paths = tiny_models.write_clips(tmp_path / "clips", (1.0, 1.0))
    result = Predictor.from_pretrained(system)(paths, {"clip0": "so happy", "clip1": "go away"}, progress=False)
    extras = result.predictions.extras
    assert set(extras) == {"vote_text_llm", "vote_text_llm_text_plain", "vote_text_llm_text_short"}


# ---------------------------------------------------------------------- instructions shared across files


@pytest.mark.parametrize("old_layout", [False, True])
def test_shared_instruction_scoring_equals_whole_prompt_scoring(tmp_path, old_layout):
    """Every variant's instruction cached once, files x variants in one forward: the same scores as each whole
    prompt, for the shipped layout (instruction first) and the old one (transcript first) alike."""
    from llmser.models.llm.loading import load_causal_lm
    from llmser.models.llm.prompts import load_prompts
    from llmser.models.llm.scoring import LabelScorer, instruction_text

    folder = ROOT / "prompts"
    if old_layout:  # the transcript before the instruction, a space before it, no system turn
        folder = tmp_path
        (folder / "text_old.yaml").write_text('name: text_old\ntask: class\ninputs: transcript\nuser: |\n'
                                              '  Segment: {transcript}\n  Which emotion ({labels})?\n')
        (folder / "text_rate.yaml").write_text((ROOT / "prompts/text_rate.yaml").read_text())
    loaded = load_causal_lm("tiny")
    model, tok = loaded.model.eval(), loaded.tokenizer
    templates = load_prompts(task="class", inputs="transcript", folder=folder)
    texts = ["so happy today", "i hate this", "fine", "", "oh no what now"]
    scorer = LabelScorer(model, tok, batch_size=2)
    fast = scorer.variant_log_likelihoods(templates, texts)  # (K, N, 8)
    for k, template in enumerate(templates):
        assert instruction_text(tok, template)  # something before the transcript is shared
        whole = scorer.log_likelihoods([template.render(tok, t) for t in texts], template.candidates)
        np.testing.assert_allclose(fast[k], whole, atol=1e-4)
    assert len(scorer.prefix_cache) == len(templates)  # one instruction per variant for the whole run
    rate = load_prompts(["text_rate"], folder=folder)[0]
    fast = scorer.variant_log_likelihoods([rate], texts, attribute="valence")[0]
    whole = scorer.log_likelihoods([rate.render(tok, t, attribute="valence") for t in texts], rate.candidates)
    np.testing.assert_allclose(fast, whole, atol=1e-4)


def test_shipped_text_prompts_put_the_instruction_before_the_transcript():
    from llmser.models.llm.prompts import load_prompts

    for template in load_prompts(inputs="transcript"):
        assert template.user.index("{transcript}") > len(template.user) // 2, template.name
        assert "{labels}" not in template.user.split("{transcript}")[1], template.name


def test_a_run_without_a_test_split_still_scores_its_shipped_vote_on_dev(tmp_path):
    """data.test_split= (a dev-only comparison): metrics.json still gets the vote's dev scores (dev_final) and
    one dev row per variant, and nothing is predicted on test."""
    from llmser.training.run import run

    corpus = _tiny_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    result = run(ROOT / "adapters/text_tiny.yaml", [f"data.corpus={corpus}", f"train.output_dir={out}",
                                                     "train.max_steps=2", "train.eval_every=2", "train.save_every=2",
                                                     "data.batch_size=4", "data.test_split="])
    saved = json.loads((out / "metrics.json").read_text())
    assert "test" not in saved and not (out / "test").exists()
    assert [r["variant"] for r in saved["dev_voting"]][0] == "vote" and len(saved["dev_voting"]) == 6
    assert saved["dev_final"]["macro_f1"] == pytest.approx(saved["dev_voting"][0]["macro_f1"])
    assert result["dev_final"] == saved["dev_final"]


# ---------------------------------------------------------------------- the configured rule decides everywhere


def _disagreeing_llm_output():
    """Variants H,S,S,H,S on one file (plurality S) whose mean probabilities favour H: the case where
    the argmax of the mean and the plurality vote part ways."""
    from llmser.schema import CODE_TO_INDEX

    h, s = CODE_TO_INDEX["H"], CODE_TO_INDEX["S"]
    variant_probs = np.full((1, 5, 8), 0.01)
    for k, (winner, p) in enumerate([(h, 0.9), (s, 0.4), (s, 0.4), (h, 0.9), (s, 0.4)]):
        variant_probs[0, k, winner] = p
        variant_probs[0, k, s if winner == h else h] = 0.3
    names = [f"v{k}" for k in range(5)]
    result = vote(variant_probs.transpose(1, 0, 2), names, "plurality")
    assert result.labels.tolist() == [s] and result.probs.argmax(1).tolist() == [h]
    return {"probs": torch.from_numpy(result.probs).float(), "labels": torch.from_numpy(result.labels),
            "variant_probs": torch.from_numpy(variant_probs).float(), "variant_names": [names],
            "embedding": torch.zeros(1, 4)}


@pytest.mark.parametrize("method", ["average", "plurality"])
def test_predictor_ships_the_members_plurality_vote_not_the_argmax_of_its_mean(method):
    from llmser.inference.predictor import Predictor

    out = _disagreeing_llm_output()
    predictions = Predictor([], method)._combine(["a.wav"], {"text_llm": out})
    assert predictions.classes == ["S"] == predictions.extras["vote_text_llm"]
    # and across members: the LLM member casts S (not H), one member S, one H -> S
    other = {"probs": torch.eye(8)[[2]].float(), "embedding": torch.zeros(1, 4)}  # H
    speech_s = {"probs": torch.eye(8)[[1]].float() * 0.6 + 0.05, "embedding": torch.zeros(1, 4)}  # S
    three = Predictor([], "plurality")._combine(["a.wav"], {"text_llm": out, "speech": speech_s, "other": other})
    assert three.classes == ["S"]


def test_ensemble_plurality_counts_each_members_own_class():
    from llmser.ensemble.methods import plurality_vote
    from llmser.evaluation.predictions import Predictions

    out = _disagreeing_llm_output()
    llm = Predictions(["a.wav"], ["S"], out["probs"].double().numpy(), None, {})  # its vote S, mean argmax H
    h_member = Predictions.from_probs(["a.wav"], np.eye(8)[[2]] * 0.5 + 0.05)  # H
    s_member = Predictions.from_probs(["a.wav"], np.eye(8)[[1]] * 0.5 + 0.05)  # S
    assert plurality_vote({"llm": llm, "h": h_member, "s": s_member}).classes == ["S"]


# ---------------------------------------------------------------------- which variants vote, chosen on dev


def _dev_votes(correct_by_variant, n=12, seed=0):
    """Votes of K variants on n files whose true classes are 0..7 cycling; variant k is right on the files
    ``correct_by_variant[k]`` marks and confidently wrong elsewhere."""
    from llmser.data.msp_podcast import Utterance
    from llmser.models.llm.votes import Votes
    from llmser.schema import CLASS_CODES

    truth = np.arange(n) % 8
    k = len(correct_by_variant)
    variant_probs = np.full((n, k, 8), 0.02)
    for j, right in enumerate(correct_by_variant):
        for i in range(n):
            variant_probs[i, j, truth[i] if right[i] else (truth[i] + 1 + j) % 8] = 0.86
    names = [f"v{j}" for j in range(k)]
    refs = [Utterance(file_name=f"f{i}.wav", audio_path=Path(f"f{i}.wav"), split="dev", emo_class=CLASS_CODES[t],
                      arousal=4.0, valence=4.0, dominance=4.0, speaker="s", gender="Female") for i, t in enumerate(truth)]
    mean = variant_probs.mean(1)
    return Votes([r.file_name for r in refs], names, variant_probs, mean, mean.argmax(1), None,
                 np.zeros((n, 2)), "plurality"), refs


def test_choose_voting_never_loses_to_the_best_single_variant_and_drops_the_bad_ones():
    from llmser.models.llm.votes import choose_voting, scores

    good = [True] * 10 + [False] * 2
    bad = [i % 4 == 0 for i in range(12)]
    dev, refs = _dev_votes([bad, good, bad, bad, bad])
    variants, rule, table = choose_voting(dev, refs)
    best_single = max(r["macro_f1"] for r in scores(dev, refs)[1:])
    chosen = scores(dev.subset(variants, rule), refs)[0]["macro_f1"]
    assert chosen >= best_single and variants[0] == "v1"
    all_five = scores(dev, refs)[0]["macro_f1"]
    assert all_five < best_single  # the plain vote of all five would lose to v1 alone here
    assert len(table) == 1 + 2 * 4 and {r["rule"] for r in table} == {"plurality", "mean"}
    # three good, complementary variants: the vote of several beats each alone and is chosen
    a = [i % 3 != 0 for i in range(12)]
    b = [i % 3 != 1 for i in range(12)]
    c = [i % 3 != 2 for i in range(12)]
    dev, refs = _dev_votes([a, b, c, bad])
    variants, rule, _ = choose_voting(dev, refs)
    assert {"v0", "v1", "v2"} <= set(variants) and rule == "plurality"  # ties go to the wider vote
    assert scores(dev.subset(variants, rule), refs)[0]["macro_f1"] == 1.0 > max(r["macro_f1"] for r in scores(dev, refs)[1:])


def test_auto_voting_is_chosen_on_dev_saved_with_the_weights_and_read_by_collect_outputs(tmp_path):
    from llmser.data.branch_outputs import load_branch_outputs
    from llmser.inference.collect import collect_run_outputs
    from llmser.models.text_llm.config import TextLLMBranchConfig
    from llmser.training.run import run

    corpus = _tiny_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    result = run(ROOT / "adapters/text_tiny.yaml", [f"data.corpus={corpus}", f"train.output_dir={out}",
                                                     "train.max_steps=2", "train.eval_every=2", "train.save_every=2",
                                                     "data.batch_size=4", "model.voting.variants=auto"])
    choice = result["voting_choice"]
    saved = TextLLMBranchConfig.load(out / "best").voting
    assert saved.variants == choice["variants"] and saved.rule == choice["rule"] and saved.variants != "auto"
    dev_rows = result["test"]["voting"]["dev"]
    assert len(dev_rows) == 6  # the vote, then every variant, voting or not
    assert dev_rows[0]["macro_f1"] >= max(r["macro_f1"] for r in dev_rows[1:]) - 1e-9
    assert result["dev_final"]["macro_f1"] == pytest.approx(dev_rows[0]["macro_f1"])
    collect_run_outputs(out, tmp_path / "outputs", ("dev",), progress=False)
    assert load_branch_outputs(tmp_path / "outputs", "text_llm", "dev").variant_names == choice["variants"]


@pytest.mark.slow
def test_cross_fitted_llm_outputs_vote_as_the_full_run_chose_whatever_each_fold_chose(tmp_path):
    """With voting.variants: auto every fold model chooses its own vote on dev (found cross-fitting the demo's
    text head: folds chose 1 and 3 variants, and joining their outputs failed). The out-of-fold outputs stand in
    for the full run's, so every fold votes as the full run chose."""
    from llmser.data.branch_outputs import load_branch_outputs
    from llmser.models.text_llm.config import TextLLMBranchConfig
    from llmser.models.voting import VotingConfig
    from llmser.training.crossfit import cross_fit_outputs
    from llmser.training.run import run

    corpus = _tiny_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    steps = ["train.max_steps=2", "train.eval_every=2", "train.save_every=2", "data.batch_size=4"]
    run(ROOT / "adapters/text_tiny.yaml", [f"data.corpus={corpus}", f"train.output_dir={out}", *steps,
                                           "model.voting.variants=auto", "train.predict_test=false"])
    full = TextLLMBranchConfig.load(out / "best").voting
    for fold in range(2):  # the fold runs, as cross-fitting trains them; then each "chooses" another vote
        fold_best = out / "crossfit" / f"fold{fold}" / "best"
        run(ROOT / "adapters/text_tiny.yaml", [f"data.corpus={corpus}", f"train.output_dir={fold_best.parent}",
                                               *steps, "model.voting.variants=auto", "train.predict_test=false",
                                               f"data.train_split=train[^{fold}/2]"])
        config = TextLLMBranchConfig.load(fold_best)
        config.voting = VotingConfig(variants=["text_plain"] if fold else ["text_short", "text_plain", "text_shuffled"],
                                     rule="plurality")
        config.save(fold_best)
    cross_fit_outputs(out, tmp_path / "outputs", folds=2, overrides=[f"data.corpus={corpus}"])
    train = load_branch_outputs(tmp_path / "outputs", "text_llm", "train")
    assert train.cross_fitted == 2 and train.variant_names == list(full.variants)
    assert train.tensors["variant_probs"].shape[1] == len(full.variants)
