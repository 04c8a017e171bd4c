"""The audio-LLM branch on tiny presets: windows, splicing, trainability, voting, save/load, SALMONN import, training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tiny_models  # noqa: E402 - the tests folder is on sys.path under pytest
import torch

from llmser.models.audio_llm.config import AudioLLMBranchConfig
from llmser.models.audio_llm.model import AudioLLMEmotionModel, pad_pieces, prompt_pieces, speech_token_count
from llmser.models.llm.scoring import candidate_token_ids

ROOT = Path(__file__).resolve().parents[1]


def _config(**kw) -> AudioLLMBranchConfig:
    return tiny_models.config("audio_llm", **kw)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _with_random_lora(AudioLLMEmotionModel.from_config(_config()))


_with_random_lora = tiny_models.with_random_lora


def _waves(*seconds: float) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in seconds]


def _batch(model: AudioLLMEmotionModel, seconds=(2.0, 0.5), variants=(0, 4)) -> dict:
    frames, mask = model.encoders(_waves(*seconds))
    pieces = [prompt_pieces(model.tokenizer, model.templates[v]) for v in variants]
    ids = pad_pieces(model.tokenizer, pieces)
    index = torch.tensor([model.candidate_index[v] for v in variants])
    return dict(zip(["before_ids", "before_mask", "after_ids", "after_mask"], ids),
                speech_frames=frames, frame_mask=mask, candidate_index=index)


# ---------------------------------------------------------------------- windows and splicing


def test_speech_token_count_grows_with_audio_length(model):
    frames, mask = model.encoders(_waves(0.2, 1.0, 3.0))
    tokens, token_mask, _ = model.speech(frames, mask)
    counts = token_mask.sum(-1).tolist()
    assert counts == [1, 3, 9]  # 17-frame (0.34 s) windows, one query each; a partial window is kept
    assert counts == [speech_token_count(s, model.config) for s in (0.2, 1.0, 3.0)]
    assert tokens.shape == (3, 9, model.llm.get_base_model().config.hidden_size)
    assert model.speech.window == 17 and model.speech.stride == 17  # SALMONN: round(1500 * 0.333333 / 30)


def test_speech_tokens_of_a_clip_do_not_depend_on_batch_padding(model):
    frames, mask = model.encoders(_waves(2.0, 0.5))
    alone_frames, alone_mask = model.encoders(_waves(0.5))
    with torch.no_grad():
        batched, bmask, _ = model.speech(frames, mask)
        alone, _, _ = model.speech(alone_frames, alone_mask)
    n = int(bmask[1].sum())
    torch.testing.assert_close(batched[1, :n], alone[0, :n], atol=2e-4, rtol=1e-3)


def test_speech_tokens_are_spliced_at_the_placeholder(model):
    batch = _batch(model)
    with torch.no_grad():
        tokens, token_mask, _ = model.speech(batch["speech_frames"], batch["frame_mask"])
        embeds, mask = model.splice(tokens, token_mask, batch["before_ids"], batch["before_mask"],
                                    batch["after_ids"], batch["after_mask"])
    embed = model.llm.get_input_embeddings()
    for row, variant in enumerate((0, 4)):
        before, after = prompt_pieces(model.tokenizer, model.templates[variant])
        n = int(token_mask[row].sum())
        total = len(before) + n + len(after)
        assert int(mask[row].sum()) == total and mask[row, -total:].all()  # left-padded
        expected = torch.cat([embed(torch.tensor(before)), tokens[row, :n], embed(torch.tensor(after))])
        torch.testing.assert_close(embeds[row, -total:], expected)


# ---------------------------------------------------------------------- trainability and outputs


def test_only_qformer_projection_lora_and_head_train_and_encoders_are_frozen(model):
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert all("lora_" in n or n.startswith(("speech.", "attribute_head.", "speech_class_head.")) for n in trainable)
    assert any(n.startswith("speech.qformer.") for n in trainable) and "speech.queries" in trainable
    assert any(n.startswith("speech.projection.") for n in trainable)
    assert not any(p.requires_grad for p in model.encoders.parameters())


def test_training_forward_gives_gradients_to_qformer_and_lora(model):
    model.train()
    try:
        out = model(**_batch(model))
        assert out.class_logits.shape == (2, 8) and out.attributes.shape == (2, 3)
        (out.class_logits.logsumexp(-1) - out.class_logits[:, 0]).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        assert grads["speech.queries"] is not None and grads["speech.queries"].abs().sum() > 0
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_" in n)
        assert all(p.grad is None for p in model.encoders.parameters())
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_evaluation_logits_are_whole_answer_log_likelihoods(model):
    """In eval, class_logits = summed log-probs of each answer (with end of turn), as naive scoring gives."""
    batch = _batch(model)
    with torch.no_grad():
        out = model(**batch)
    naive = _naive_scores(model, batch["speech_frames"][:1], batch["frame_mask"][:1], model.templates[0])
    torch.testing.assert_close(out.class_logits[0], naive, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------- voting


def _naive_scores(model, frames, mask, template, transcript=None, first_token=False) -> torch.Tensor:
    """(8,) one clip, one variant: encode alone, then one full forward per answer (no cache, no packing);
    under the isolation mask when the model's speech attention is isolated."""
    from llmser.models.llm.isolated import AFTER, BEFORE, INPUT, isolated_attention_mask

    with torch.no_grad():
        tokens, token_mask, _ = model.speech(frames, mask)
        tokens = tokens[0, : int(token_mask[0].sum())]
        before, after = prompt_pieces(model.tokenizer, template, transcript)
        embed = model.llm.get_input_embeddings()
        prefix = torch.cat([embed(torch.tensor(before)), tokens, embed(torch.tensor(after))])
        segments = [BEFORE] * len(before) + [INPUT] * len(tokens) + [AFTER] * len(after)
        scores = []
        for ids in candidate_token_ids(model.tokenizer, template.candidates):
            ids = ids[:1] if first_token else ids
            full = torch.cat([prefix, embed(torch.tensor(ids))])[None]
            attention = None
            if model.isolated:
                seg = torch.tensor([segments + [AFTER] * len(ids)])
                attention = isolated_attention_mask(torch.ones_like(seg), seg, full.dtype)
            logp = model.llm(inputs_embeds=full, attention_mask=attention).logits[0].float().log_softmax(-1)
            positions = torch.arange(len(prefix) - 1, len(prefix) + len(ids) - 1)
            scores.append(logp[positions, torch.tensor(ids)].sum())
        return torch.stack(scores)


def test_shared_encoding_voting_equals_naive_per_variant_scoring(model):
    frames, mask = model.encoders(_waves(1.5, 0.7))
    templates = [model.templates[i] for i in (0, 2, 4)]  # three verbalisations, two label orders
    probs = model.vote_probabilities(frames, mask, templates)  # (K, B, 8)
    assert probs.shape == (3, 2, 8)
    for k, template in enumerate(templates):
        for b in range(2):
            n = int(mask[b].sum())
            naive = _naive_scores(model, frames[b:b + 1, :n], mask[b:b + 1, :n], template).softmax(-1)
            np.testing.assert_allclose(probs[k, b], naive.numpy(), atol=1e-5)
    vote = model.vote(frames, mask, templates)
    assert vote.votes.shape == (2, 3) and vote.probs.shape == (2, 8)
    np.testing.assert_allclose(vote.probs, probs.mean(0), atol=1e-6)


def test_instruction_cache_is_dropped_when_weights_can_change(model):
    """Voting keeps each variant's instruction states; training mode or loading weights drops them."""
    frames, mask = model.encoders(_waves(1.0))
    model.vote_probabilities(frames, mask)
    assert len(model.prefix_cache) == len({tuple(prompt_pieces(model.tokenizer, t)[0]) for t in model.templates})
    model.train()
    assert len(model.prefix_cache) == 0
    model.eval()
    model.vote_probabilities(frames, mask)
    model.load_state_dict(model.state_dict())
    assert len(model.prefix_cache) == 0


def test_prompts_starting_with_the_speech_are_scored_without_the_cache(model):
    """No text before the speech (no chat template): nothing to cache, the whole prompt runs; same scores."""
    frames, mask = model.encoders(_waves(1.0))
    tokens, token_mask, _ = model.speech(frames, mask)
    after = model.tokenizer("which emotion is it", add_special_tokens=False)["input_ids"]
    answers = candidate_token_ids(model.tokenizer, model.templates[0].candidates)
    with torch.no_grad():
        scores = model.score_prompts(tokens, token_mask, [[]], [after], [answers], torch.zeros(1, dtype=torch.long))
        embed = model.llm.get_input_embeddings()
        prompt = torch.cat([tokens[0, : int(token_mask[0].sum())], embed(torch.tensor(after))])
        for c, ids in enumerate(answers):
            logp = model.llm(inputs_embeds=torch.cat([prompt, embed(torch.tensor(ids))])[None]).logits[0].log_softmax(-1)
            expected = logp[torch.arange(len(prompt) - 1, len(prompt) + len(ids) - 1), torch.tensor(ids)].sum()
            torch.testing.assert_close(scores[0, c], expected, atol=1e-4, rtol=1e-4)


def test_answer_calibration_divides_out_the_dev_prior_at_inference_only(model):
    batch = _batch(model, variants=(0, 0))
    batch["variant_index"] = torch.tensor([0, 0])
    with torch.no_grad():
        raw = model(**batch).class_logits.softmax(-1)
    prior = torch.tensor([0.5, 0.2, 0.1, 0.05, 0.05, 0.04, 0.03, 0.03])
    model.calibration.fit(prior[None].expand(4, -1).numpy(), variant=0)
    try:
        assert model.calibration.fitted
        with torch.no_grad():
            calibrated = model(**batch).class_logits.softmax(-1)
        expected = raw / prior
        torch.testing.assert_close(calibrated, expected / expected.sum(-1, keepdim=True), atol=1e-5, rtol=1e-4)
        frames, mask = batch["speech_frames"], batch["frame_mask"]
        voted = model.vote_probabilities(frames, mask, model.templates[:1])[0]
        uncalibrated = model.vote_probabilities(frames, mask, model.templates[:1], calibrated=False)[0]
        np.testing.assert_allclose(voted, calibrated.numpy(), atol=1e-5)
        np.testing.assert_allclose(uncalibrated, raw.numpy(), atol=1e-5)
        model.train()
        trained = model(**batch).class_logits  # training reads the raw first-token scores
        assert trained.requires_grad
        assert "calibration.log_prior" in model.trained_modules().state_dict()
    finally:
        model.calibration.log_prior.zero_()
        model.eval()


def test_speech_plus_transcript_prompts_read_the_transcript():
    torch.manual_seed(0)
    m = AudioLLMEmotionModel.from_config(_config(inputs="speech+transcript")).eval()
    assert m.templates and all(t.inputs == "speech+transcript" for t in m.templates)
    frames, mask = m.encoders(_waves(1.0, 1.0))
    probs = m.vote_probabilities(frames, mask, transcripts=["i am so happy", "leave me alone"])
    naive = _naive_scores(m, frames[1:], mask[1:], m.templates[0], "leave me alone").softmax(-1)
    np.testing.assert_allclose(probs[0, 1], naive.numpy(), atol=1e-5)


def test_prompts_for_other_inputs_are_refused():
    with pytest.raises(ValueError, match="do not read 'speech'"):
        AudioLLMEmotionModel.from_config(_config(prompts=["speech_plain", "speech_transcript"]))


# ---------------------------------------------------------------------- isolated speech attention


@pytest.fixture(scope="module")
def isolated():
    torch.manual_seed(0)
    return _with_random_lora(AudioLLMEmotionModel.from_config(_config(speech_attention="isolated", inputs="speech+transcript")))


def test_isolated_voting_equals_full_prompt_scoring_under_the_isolation_mask(isolated):
    """Speech run once per clip, instructions moved by a RoPE rotation: the same scores as each full prompt."""
    frames, mask = isolated.encoders(_waves(1.5, 0.7))
    texts = ["i am so happy", "leave me alone now please"]  # tails of different lengths
    templates = [isolated.templates[i] for i in (0, 2, 4)]
    probs = isolated.vote_probabilities(frames, mask, templates, transcripts=texts)
    for k, template in enumerate(templates):
        for b in range(2):
            n = int(mask[b].sum())
            naive = _naive_scores(isolated, frames[b:b + 1, :n], mask[b:b + 1, :n], template, texts[b])
            np.testing.assert_allclose(probs[k, b], naive.softmax(-1).numpy(), atol=1e-5)
    causal = AudioLLMEmotionModel.from_config(_config(inputs="speech+transcript")).eval()
    causal.load_state_dict(isolated.state_dict())
    assert np.abs(causal.vote_probabilities(frames, mask, templates, transcripts=texts) - probs).max() > 1e-3


def test_isolated_voting_runs_the_recipe_prompts_in_one_forward(monkeypatch):
    """The recipes' speech_last_* prompts: every clip's speech once and each variant's chat tail, one forward."""
    recipe_prompts = ["speech_last_plain", "speech_last_definitions", "speech_last_short"]
    torch.manual_seed(1)
    m = AudioLLMEmotionModel.from_config(_config(speech_attention="isolated", prompts=recipe_prompts)).eval()
    frames, mask = m.encoders(_waves(1.2, 0.5))
    import llmser.models.audio_llm.model as audio_model

    calls, original = [], audio_model.score_isolated_input
    monkeypatch.setattr(audio_model, "score_isolated_input",
                        lambda *args, **kw: calls.append(args[2].shape) or original(*args, **kw))
    probs = m.vote_probabilities(frames, mask)
    assert calls == [(2, 4, m.llm.get_base_model().config.hidden_size)]  # one forward, the speech of 2 clips once
    for k, template in enumerate(m.templates):
        for b in range(2):
            n = int(mask[b].sum())
            naive = _naive_scores(m, frames[b:b + 1, :n], mask[b:b + 1, :n], template)
            np.testing.assert_allclose(probs[k, b], naive.softmax(-1).numpy(), atol=1e-5)


def test_isolated_evaluation_reads_what_training_reads(isolated):
    """answer_scoring first_token: the no-grad evaluation scores equal the training forward's first-token scores."""
    from llmser.models.audio_llm.model import pad_pieces

    frames, mask = isolated.encoders(_waves(2.0, 0.5))
    texts = ["you did it", "no"]
    variants = (1, 3)
    pieces = [prompt_pieces(isolated.tokenizer, isolated.templates[v], t) for v, t in zip(variants, texts)]
    batch = dict(zip(["before_ids", "before_mask", "after_ids", "after_mask"], pad_pieces(isolated.tokenizer, pieces)),
                 speech_frames=frames, frame_mask=mask,
                 candidate_index=torch.tensor([isolated.candidate_index[v] for v in variants]))
    isolated.config.answer_scoring = "first_token"
    try:
        with torch.no_grad():
            evaluated = isolated(**batch).class_logits
        with torch.enable_grad():
            trained = isolated(**batch).class_logits
        assert trained.requires_grad
        torch.testing.assert_close(evaluated, trained.detach(), atol=1e-4, rtol=1e-4)
        n = int(mask[1].sum())
        naive = _naive_scores(isolated, frames[1:, :n], mask[1:, :n], isolated.templates[3], texts[1], True)
        torch.testing.assert_close(evaluated[1], naive, atol=1e-4, rtol=1e-4)
    finally:
        isolated.config.answer_scoring = "whole"


def test_shifted_cached_keys_equal_keys_computed_at_the_shifted_positions(isolated):
    from llmser.models.llm.isolated import rotary_embedding, shift_keys
    from llmser.models.llm.scoring import cache_of

    llm = isolated.llm
    ids = torch.tensor([[5, 9, 2, 7]])
    with torch.no_grad():
        at_zero = cache_of(llm(input_ids=ids, use_cache=True)).layers
        at_six = cache_of(llm(input_ids=ids, position_ids=torch.arange(6, 10)[None], use_cache=True)).layers
    rotary = rotary_embedding(llm)
    for zero, six in zip(at_zero, at_six):  # hidden states depend on relative positions only
        torch.testing.assert_close(shift_keys(rotary, zero.keys, 6), six.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(zero.values, six.values, atol=1e-5, rtol=1e-4)


def test_isolated_attention_options_are_checked():
    with pytest.raises(ValueError, match="speech_attention must be"):
        _config(speech_attention="bidirectional")
    with pytest.raises(ValueError, match="answer_scoring must be"):
        _config(answer_scoring="last")


# ---------------------------------------------------------------------- save / load


def test_save_load_round_trip_and_plain_peft_loading(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmser.models.llm.loading import load_causal_lm

    base_dir = tmp_path / "base"
    tiny = load_causal_lm("tiny")
    tiny.model.save_pretrained(base_dir)
    tiny.tokenizer.save_pretrained(base_dir)
    torch.manual_seed(0)
    model = AudioLLMEmotionModel.from_config(_config(llm=str(base_dir)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or name.startswith("speech.projection"):
                param.normal_(0, 0.05)
    model.eval()
    batch = _batch(model)
    with torch.no_grad():
        expected = model(**batch)
    saved = model.save_pretrained(tmp_path / "trained")
    assert {"adapter_config.json", "adapter_model.safetensors", "speech_modules.safetensors",
            "llmser_config.json"} <= {p.name for p in saved.iterdir()}
    assert json.loads((saved / "llmser_config.json").read_text())["branch"] == "audio_llm"
    assert json.loads((saved / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir)

    again = AudioLLMEmotionModel.from_pretrained(saved).eval()
    with torch.no_grad():
        got = again(**batch)
    torch.testing.assert_close(got.class_logits, expected.class_logits)
    torch.testing.assert_close(got.attributes, expected.attributes)

    fresh = AudioLLMEmotionModel.from_config(_config(llm=str(base_dir))).eval()
    fresh.load_trained_weights(saved)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).class_logits, expected.class_logits)

    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(saved)).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, model.llm(input_ids=ids).logits)


def test_missing_folder_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="llmser_config.json"):
        AudioLLMEmotionModel.from_pretrained(tmp_path)


def test_second_encoder_frames_are_concatenated_per_frame():
    torch.manual_seed(0)
    m = AudioLLMEmotionModel.from_config(_config(second_encoder="wavlm-tiny")).eval()
    frames, mask = m.encoders(_waves(1.0, 0.4))
    assert frames.shape == (2, 50, 64 + 64) and mask.sum(-1).tolist() == [50, 20]
    tokens, token_mask, _ = m.speech(frames, mask)
    assert token_mask.sum(-1).tolist() == [3, 2]


# ---------------------------------------------------------------------- SALMONN import


def _fake_salmonn_state(model: AudioLLMEmotionModel) -> dict[str, torch.Tensor]:
    """A state dict with SALMONN's key names and this model's (tiny) shapes."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, tensor in model.speech.state_dict().items():
        key = name.replace("qformer.layernorm.", "speech_Qformer.bert.embeddings.LayerNorm.")
        key = key.replace("qformer.encoder.", "speech_Qformer.bert.encoder.")
        key = key.replace(".attention.attention.", ".attention.self.").replace(".crossattention.attention.",
                                                                                ".crossattention.self.")
        key = {"queries": "speech_query_tokens"}.get(key, key)
        key = key.replace("ln_speech.", "ln_speech.").replace("ln_second.", "ln_audio.")
        key = key.replace("projection.", "speech_llama_proj.")
        state[key] = torch.randn(tensor.shape, generator=gen)
    for name, tensor in model.llm.state_dict().items():
        if "lora_" in name:
            state["llama_model." + name] = torch.randn(tensor.shape, generator=gen)
    state["speech_Qformer.bert.embeddings.position_ids"] = torch.arange(4)[None]
    state["speech_encoder.layers.0.fc1.weight"] = torch.zeros(2, 2)
    return state


def test_salmonn_mapping_loads_every_tensor(model):
    from llmser.models.audio_llm.salmonn import load_salmonn_into, map_salmonn_state_dict

    state = _fake_salmonn_state(model)
    assert "speech_Qformer.bert.encoder.layer.0.crossattention.self.key.weight" in state
    assert any(k.startswith("llama_model.base_model.model.") and ".lora_A.default." in k for k in state)
    weights = map_salmonn_state_dict(state)
    assert sorted(weights.ignored) == ["speech_Qformer.bert.embeddings.position_ids", "speech_encoder.layers.0.fc1.weight"]
    load_salmonn_into(model, state)
    torch.testing.assert_close(model.speech.queries.data, state["speech_query_tokens"])
    torch.testing.assert_close(model.speech.qformer.encoder.layer[1].crossattention.attention.value.weight.data,
                               state["speech_Qformer.bert.encoder.layer.1.crossattention.self.value.weight"])
    torch.testing.assert_close(model.speech.projection.bias.data, state["speech_llama_proj.bias"])
    lora = {n: p for n, p in model.llm.named_parameters() if "lora_A" in n}
    name = next(iter(lora))
    torch.testing.assert_close(lora[name].data, state["llama_model." + name])


def test_salmonn_unknown_keys_and_shape_mismatches_are_reported(model):
    from llmser.models.audio_llm.salmonn import load_salmonn_into, map_salmonn_state_dict, salmonn_config

    state = _fake_salmonn_state(model)
    with pytest.raises(ValueError, match="no llmser counterpart"):
        map_salmonn_state_dict({**state, "mystery.weight": torch.zeros(1)})
    state["speech_llama_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="speech.projection.weight"):
        load_salmonn_into(model, state)
    config = salmonn_config()
    assert (config.qformer_hidden, config.qformer_heads, config.lora_r, config.lora_alpha) == (768, 12, 8, 32)
    assert config.lora_target_modules == ["q_proj", "v_proj"] and config.num_queries == 1


def test_salmonn_with_beats_imports_into_a_whisper_only_model():
    from llmser.models.audio_llm.salmonn import load_salmonn_into

    torch.manual_seed(0)
    with_second = AudioLLMEmotionModel.from_config(_config(second_encoder="wavlm-tiny"))
    state = _fake_salmonn_state(with_second)
    whisper_only = AudioLLMEmotionModel.from_config(_config())
    load_salmonn_into(whisper_only, state, drop_second=True)
    key = "speech_Qformer.bert.encoder.layer.0.crossattention.self.key.weight"
    torch.testing.assert_close(whisper_only.speech.qformer.encoder.layer[0].crossattention.attention.key.weight.data,
                               state[key][:, :64])


# ---------------------------------------------------------------------- recipes and the engine


@pytest.fixture
def registered():
    yield  # every branch is registered in llmser.models.registry


def test_shipped_audio_recipes_parse(registered):
    from llmser.models.registry import branch_config, load_recipe

    for path in sorted((ROOT / "adapters").glob("audio_*.yaml")):
        recipe = load_recipe(path)
        config = branch_config(recipe)
        assert isinstance(config, AudioLLMBranchConfig) and recipe.branch == "audio_llm", path


def _tiny_corpus(root: Path) -> Path:
    from tests.corpus_factory import transcribed_corpus

    return transcribed_corpus(root)


def test_short_engine_run_changes_trainable_weights(tmp_path, registered):
    from llmser.models.registry import branch_config, load_recipe
    from llmser.training.engine import Trainer

    corpus_dir = _tiny_corpus(tmp_path / "corpus")
    recipe = load_recipe(ROOT / "adapters" / "audio_tiny.yaml",
                         [f"data.corpus={corpus_dir}", f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2",
                          "train.eval_every=2", "train.save_every=2", "data.batch_size=4",
                          f"data.cache_dir={tmp_path / 'cache'}", "model.inputs=speech+transcript"])
    from accelerate import Accelerator

    from llmser.data.msp_podcast import MSPPodcast
    from llmser.models.audio_llm.branch import predict_with_voting, prepare

    corpus = MSPPodcast.from_folder(corpus_dir)
    torch.manual_seed(0)
    setup = prepare(recipe, branch_config(recipe), corpus, Accelerator(cpu=True))
    before = {n: p.detach().clone() for n, p in setup.model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in setup.model.encoders.named_parameters()}
    trainer = Trainer(recipe, setup.model, setup.train_set, setup.eval_set, setup.collate_fn,
                      class_counts=setup.class_counts, accelerator=Accelerator(cpu=True))
    state = trainer.fit()
    assert state["step"] == 2 and (tmp_path / "run" / "best" / "speech_modules.safetensors").is_file()
    after = dict(setup.model.named_parameters())
    changed = [n for n, p in before.items() if not torch.equal(after[n].detach(), p)]
    assert any(n.startswith("speech.qformer.") for n in changed) and any("lora_B" in n for n in changed)
    assert all(torch.equal(p, frozen[n]) for n, p in setup.model.encoders.named_parameters())
    _check_every_variant_is_calibrated_on_dev(trainer, setup, tmp_path / "run" / "best")
    predictions, vote = predict_with_voting(setup.model, setup.test_utterances, setup.test_set.cache, progress=False)
    assert len(predictions.file_names) == 3 and predictions.attributes.shape == (3, 3)
    assert vote.probs.shape == (3, 8)


def _check_every_variant_is_calibrated_on_dev(trainer, setup, best_dir):
    """Each variant's prior is its own mean uncalibrated answer distribution on the dev split."""
    from llmser.training.run import calibrate_on_dev

    model = setup.model
    calibrate_on_dev(trainer, model, setup, best_dir)
    assert setup.eval_set.variant == 0
    batch = setup.collate_fn([setup.eval_set[i] for i in range(len(setup.eval_set))])
    texts = [setup.eval_set.utterances[i].transcript for i in range(len(setup.eval_set))]
    raw = model.vote_probabilities(batch["speech_frames"], batch["frame_mask"], transcripts=texts, calibrated=False)
    mean = torch.as_tensor(raw.mean(1), dtype=torch.float32)  # (K, 8)
    torch.testing.assert_close(model.calibration.log_prior.softmax(-1), mean / mean.sum(-1, keepdim=True),
                               atol=1e-4, rtol=1e-3)


def test_stage_one_trains_only_the_speech_front_end_and_lowers_its_loss(tmp_path, registered):
    """speech_warmup_steps: the Q-Former side and the speech heads learn alone (LoRA, the LLM and the encoders
    do not move), every LLM parameter keeps requires_grad for stage 2, and the stage-1 loss falls."""
    from accelerate import Accelerator

    from llmser.data.msp_podcast import MSPPodcast
    from llmser.models.audio_llm.branch import prepare
    from llmser.models.registry import branch_config, load_recipe
    from llmser.training.warmup import warm_up

    corpus_dir = _tiny_corpus(tmp_path / "corpus")
    recipe = load_recipe(ROOT / "adapters" / "audio_tiny.yaml",
                         [f"data.corpus={corpus_dir}", f"train.output_dir={tmp_path / 'run'}", "data.batch_size=4",
                          f"data.cache_dir={tmp_path / 'cache'}", "model.speech_warmup_steps=30",
                          "model.speech_warmup_lr=0.01", "model.dropout=0.0"])
    torch.manual_seed(0)
    setup = prepare(recipe, branch_config(recipe), MSPPodcast.from_folder(corpus_dir), Accelerator(cpu=True))
    assert setup.warmup_steps == 30
    model = setup.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def stage_one_loss() -> float:
        from llmser.training.losses import MultiTaskLoss

        batch = setup.collate_fn([setup.train_set[i] for i in range(len(setup.train_set))])
        model.eval()
        with torch.no_grad():
            out = model.warmup_outputs(**batch)
        return float(MultiTaskLoss(recipe.loss, setup.class_counts)(out.class_logits, out.attributes, batch)["loss"])

    first = stage_one_loss()
    result = warm_up(setup, recipe, progress=False)
    assert result["warmup_seconds"] > 0 and stage_one_loss() < first
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert any(n.startswith("speech.qformer.") for n in changed)
    assert any(n.startswith("attribute_head.") for n in changed) and any(n.startswith("speech_class_head.") for n in changed)
    assert not any("lora_" in n or n.startswith(("encoders.", "llm.", "calibration.")) for n in changed), changed
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable


def test_stage_one_needs_a_speech_head():
    with pytest.raises(ValueError, match="speech_warmup_steps"):
        AudioLLMBranchConfig(llm="tiny", whisper="tiny", speech_warmup_steps=10, attribute_head=False,
                             speech_class_head=False)
