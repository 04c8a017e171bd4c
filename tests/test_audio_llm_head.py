"""The audio-LLM's head mode and multi-layer encoder frames on tiny presets: what trains, the cached-instruction
path against full prompts, the vote's shape, save/load, and stage 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tiny_models  # noqa: E402 - the tests folder is on sys.path under pytest
import torch

from llmser.models.audio_llm.model import AudioLLMEmotionModel, pad_pieces, prompt_pieces

ROOT = Path(__file__).resolve().parents[1]
LAST = ["speech_last_plain", "speech_last_definitions", "speech_last_shuffled", "speech_last_annotator",
        "speech_last_short"]


def _head_model(seed: int = 0, **kw) -> AudioLLMEmotionModel:
    torch.manual_seed(seed)
    config = tiny_models.config("audio_llm", mode="head", encoder_layers="all", speech_attention="isolated",
                                prompts=LAST, **kw)
    model = tiny_models.with_random_lora(AudioLLMEmotionModel.from_config(config))
    with torch.no_grad():  # a trained LLM head (it starts at zero) and non-trivial standardisation statistics
        for param in model.heads.llm.parameters():
            param.normal_(0, 0.2)
        for norm in (model.heads.speech.input_norm, model.heads.llm.input_norm):
            norm.running_mean.normal_(0, 0.1)
            norm.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _batch(model: AudioLLMEmotionModel, variants=(0, 4), seconds=(2.0, 0.5)) -> dict:
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in seconds]
    frames, mask = model.encoders(waves)
    ids = pad_pieces(model.tokenizer, [prompt_pieces(model.tokenizer, model.templates[v]) for v in variants])
    return dict(zip(["before_ids", "before_mask", "after_ids", "after_mask"], ids), speech_frames=frames,
                frame_mask=mask, candidate_index=torch.tensor([model.candidate_index[v] for v in variants]))


@pytest.fixture(scope="module")
def head_model():
    return _head_model()


def test_all_layers_are_cached_side_by_side_and_weighted_before_the_qformer(head_model):
    batch = _batch(head_model)
    whisper = head_model.encoders.whisper
    layers = whisper.config.encoder_layers + 1
    assert batch["speech_frames"].shape[-1] == layers * whisper.config.d_model
    assert head_model.speech.layer_weights is not None
    frames = batch["speech_frames"]
    with torch.no_grad():
        head_model.speech.layer_weights.logits.copy_(torch.tensor([0.0] * (layers - 1) + [30.0]))
        last = head_model.speech.combine(frames)  # all weight on the last layer
        head_model.speech.layer_weights.logits.zero_()
    torch.testing.assert_close(last, frames[..., -whisper.config.d_model:], atol=1e-5, rtol=1e-5)


def test_a_fresh_head_model_starts_from_its_speech_head(head_model):
    """The LLM head's output layers start at zero: stage 2 begins with exactly what stage 1 learned."""
    model = AudioLLMEmotionModel.from_config(head_model.config).eval()
    batch = _batch(model)
    with torch.no_grad():
        out = model(**batch)
        alone, attributes = model.heads.speech_only(model.pool_speech(batch["speech_frames"], batch["frame_mask"]))
    torch.testing.assert_close(out.class_logits, alone)
    torch.testing.assert_close(out.attributes, attributes)


def test_evaluation_with_cached_instructions_equals_the_full_prompt(head_model):
    batch = _batch(head_model)
    with torch.no_grad():
        cached = head_model(**batch)  # no gradients, eval mode: instructions from the prefix cache
    with torch.enable_grad():
        full = head_model(**batch)  # the training path: every prompt whole
    torch.testing.assert_close(cached.class_logits, full.class_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cached.attributes, full.attributes, atol=1e-5, rtol=1e-4)


def test_each_variant_votes_with_its_own_head_probabilities(head_model):
    batch = _batch(head_model, variants=(0, 4))
    voted = head_model.vote_batch(batch["speech_frames"], batch["frame_mask"])
    k = len(head_model.templates)
    assert voted.variant_probs.shape == (2, k, 8) and voted.variant_attributes.shape == (2, k, 3)
    assert voted.probs.shape == (2, 8) and voted.labels.shape == (2,)
    with torch.no_grad():
        single = head_model(**batch).class_logits.softmax(-1)  # row 0 through variant 0, row 1 through variant 4
    torch.testing.assert_close(voted.variant_probs[0, 0], single[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(voted.variant_probs[1, 4], single[1], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(voted.variant_probs[:, 0], voted.variant_probs[:, 1])  # the prompt matters


def test_head_mode_save_load_round_trip(head_model, tmp_path):
    batch = _batch(head_model)
    expected = head_model.vote_batch(batch["speech_frames"], batch["frame_mask"])
    saved = head_model.save_pretrained(tmp_path / "head")
    again = AudioLLMEmotionModel.from_pretrained(saved).eval()
    assert again.config.mode == "head" and again.calibration is None
    got = again.vote_batch(batch["speech_frames"], batch["frame_mask"])
    torch.testing.assert_close(got.variant_probs, expected.variant_probs)
    torch.testing.assert_close(got.attributes, expected.attributes)
    other = _head_model(seed=1)  # reload in place: adapter, heads and layer weights all come back
    other.load_trained_weights(saved)
    torch.testing.assert_close(other.vote_batch(batch["speech_frames"], batch["frame_mask"]).variant_probs,
                               expected.variant_probs)


def test_two_engine_steps_in_head_mode_move_lora_the_qformer_the_layer_weights_and_both_heads(tmp_path):
    """Two steps: the LLM head's zero output layer passes no gradient back to LoRA until it has moved once."""
    from accelerate import Accelerator

    from llmser.data.msp_podcast import MSPPodcast
    from llmser.models.audio_llm.branch import prepare
    from llmser.models.registry import branch_config, load_recipe
    from llmser.training.engine import Trainer
    from tests.corpus_factory import transcribed_corpus

    corpus_dir = transcribed_corpus(tmp_path / "corpus")
    recipe = load_recipe(ROOT / "adapters" / "audio_tiny.yaml",
                         [f"data.corpus={corpus_dir}", f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2",
                          "train.eval_every=2", "train.save_every=2", "data.batch_size=4", "model.mode=head",
                          "model.encoder_layers=all", f"data.cache_dir={tmp_path / 'cache'}"])
    torch.manual_seed(0)
    setup = prepare(recipe, branch_config(recipe), MSPPodcast.from_folder(corpus_dir), Accelerator(cpu=True))
    model = setup.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    Trainer(recipe, model, setup.train_set, setup.eval_set, setup.collate_fn, class_counts=setup.class_counts,
            accelerator=Accelerator(cpu=True)).fit()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    for prefix in ("speech.qformer.", "speech.layer_weights.", "heads.speech.", "heads.llm.", "heads.pooling."):
        assert any(n.startswith(prefix) for n in changed), prefix
    assert any("lora_B" in n for n in changed)
    assert not any(n.startswith("encoders.") for n in changed)
    assert (tmp_path / "run" / "best" / "speech_modules.safetensors").is_file()
    from llmser.models.audio_llm.branch import predict_with_voting

    predictions, vote = predict_with_voting(model, setup.test_utterances, setup.test_set.cache, progress=False)
    n = len(setup.test_utterances)
    assert predictions.attributes.shape == (n, 3) and vote.voter_probs.shape == (5, n, 8)


def test_stage_one_in_head_mode_trains_the_speech_side_only(tmp_path):
    from accelerate import Accelerator

    from llmser.data.msp_podcast import MSPPodcast
    from llmser.models.audio_llm.branch import prepare
    from llmser.models.registry import branch_config, load_recipe
    from llmser.training.warmup import warm_up
    from tests.corpus_factory import transcribed_corpus

    corpus_dir = transcribed_corpus(tmp_path / "corpus")
    recipe = load_recipe(ROOT / "adapters" / "audio_tiny.yaml",
                         [f"data.corpus={corpus_dir}", f"train.output_dir={tmp_path / 'run'}", "data.batch_size=4",
                          "model.mode=head", "model.encoder_layers=all", "model.speech_warmup_steps=3",
                          f"data.cache_dir={tmp_path / 'cache'}"])
    torch.manual_seed(0)
    setup = prepare(recipe, branch_config(recipe), MSPPodcast.from_folder(corpus_dir), Accelerator(cpu=True))
    before = {n: p.detach().clone() for n, p in setup.model.named_parameters()}
    warm_up(setup, recipe, progress=False)
    changed = {n for n, p in setup.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    # the speech head and pooling, the layer weights, and the Q-Former through the auxiliary head
    for prefix in ("heads.speech.", "heads.pooling.", "speech.layer_weights.", "speech.qformer.", "speech_class_head."):
        assert any(n.startswith(prefix) for n in changed), prefix
    assert not any("lora_" in n or n.startswith(("heads.llm.", "encoders.", "llm.")) for n in changed), changed


def test_head_mode_is_refused_with_a_typo_naming_the_choices():
    from llmser.models.audio_llm.config import AudioLLMBranchConfig

    with pytest.raises(ValueError, match="mode must be 'answer' or 'head'"):
        AudioLLMBranchConfig(llm="tiny", whisper="tiny", mode="heads")
    with pytest.raises(ValueError, match="encoder_layers must be 'last' or 'all'"):
        AudioLLMBranchConfig(llm="tiny", whisper="tiny", encoder_layers="every")


def _head_setup(tmp_path, *overrides: str):
    from accelerate import Accelerator

    from llmser.data.msp_podcast import MSPPodcast
    from llmser.models.audio_llm.branch import prepare
    from llmser.models.registry import branch_config, load_recipe
    from tests.corpus_factory import transcribed_corpus

    corpus_dir = transcribed_corpus(tmp_path / "corpus")
    recipe = load_recipe(ROOT / "adapters" / "audio_tiny.yaml",
                         [f"data.corpus={corpus_dir}", f"train.output_dir={tmp_path / 'run'}", "data.batch_size=4",
                          "model.mode=head", "model.encoder_layers=all", f"data.cache_dir={tmp_path / 'cache'}",
                          *overrides])
    torch.manual_seed(0)
    return recipe, prepare(recipe, branch_config(recipe), MSPPodcast.from_folder(corpus_dir), Accelerator(cpu=True))


def test_stage_one_ends_on_its_best_dev_state_not_its_last(tmp_path, monkeypatch):
    """speech_warmup_eval_every: stage 1 is scored on dev and the front end it hands stage 2 is the best one."""
    from llmser.training import warmup

    recipe, setup = _head_setup(tmp_path, "model.speech_warmup_steps=3", "model.speech_warmup_eval_every=1",
                                "train.metric_for_best=combined")
    assert setup.warmup_eval_every == 1
    scripted, seen = iter([0.1, 0.9, 0.2]), []

    def score(setup_, recipe_, device):  # the dev scores of steps 1, 2, 3; step 2 is the best
        model = setup_.model
        seen.append({n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]
                     if n.startswith("heads.speech.")})
        return {"combined": next(scripted), "macro_f1": 0.5}

    monkeypatch.setattr(warmup, "_score_front_end", score)
    result = warmup.warm_up(setup, recipe, progress=False)
    assert result["warmup_best_step"] == 2 and result["warmup_dev"]["combined"] == 0.9
    assert len(seen) == 3 and not all(torch.equal(seen[1][n], seen[2][n]) for n in seen[1])
    now = dict([*setup.model.named_parameters(), *setup.model.named_buffers()])
    assert any("running_mean" in name for name in seen[1])  # the standardisation statistics come back too
    for name, value in seen[1].items():
        torch.testing.assert_close(now[name].detach(), value, rtol=0, atol=0)


def test_stage_one_dev_scores_are_the_front_ends_own(tmp_path):
    """The real scorer: what stage 1 reports for its kept step is what its front end scores on dev afterwards."""
    from llmser.training.warmup import _score_front_end, warm_up

    recipe, setup = _head_setup(tmp_path, "model.speech_warmup_steps=4", "model.speech_warmup_eval_every=2")
    result = warm_up(setup, recipe, progress=False)
    assert result["warmup_best_step"] in (2, 4)
    again = _score_front_end(setup, recipe, "cpu")
    assert again["combined"] == pytest.approx(result["warmup_dev"]["combined"], abs=1e-6)


def test_freeze_speech_head_trains_the_speech_side_in_stage_one_only(tmp_path):
    """freeze_speech_head: stage 1 moves the speech head, its pooling and the layer weights; stage 2 (the engine)
    leaves them as stage 1 did and trains the Q-Former, LoRA and the LLM head added to them."""
    from accelerate import Accelerator

    from llmser.training.engine import Trainer
    from llmser.training.warmup import warm_up

    recipe, setup = _head_setup(tmp_path, "model.speech_warmup_steps=3", "model.freeze_speech_head=true",
                                "train.max_steps=2", "train.eval_every=2", "train.save_every=2")
    model = setup.model
    kept = ("heads.speech.", "heads.pooling.", "speech.layer_weights.")
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    warm_up(setup, recipe, progress=False)
    for prefix in kept:
        assert any(n.startswith(prefix) and not torch.equal(p.detach(), start[n]) for n, p in model.named_parameters())
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith(kept))
    after_one = {n: p.detach().clone() for n, p in model.named_parameters()}
    Trainer(recipe, model, setup.train_set, setup.eval_set, setup.collate_fn, class_counts=setup.class_counts,
            accelerator=Accelerator(cpu=True)).fit()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), after_one[n])}
    assert not any(n.startswith(kept) for n in changed), changed
    for prefix in ("speech.qformer.", "heads.llm."):
        assert any(n.startswith(prefix) for n in changed), prefix
    assert any("lora_B" in n for n in changed)


def test_freeze_speech_head_needs_stage_one_in_head_mode():
    from llmser.models.audio_llm.config import AudioLLMBranchConfig

    with pytest.raises(ValueError, match="freeze_speech_head"):
        AudioLLMBranchConfig(llm="tiny", whisper="tiny", mode="head", freeze_speech_head=True)
    # the smol recipe switched to answer mode (its header says how) still loads: there is no speech head to keep
    AudioLLMBranchConfig(llm="tiny", whisper="tiny", mode="answer", speech_warmup_steps=5, freeze_speech_head=True)
