"""The text branch's lower-layer cache: the cached forward is the same model as the full one, and training on
it moves only LoRA and heads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from llmser.models.llm.layer_cache import (
    LayerStateCache,
    fill_layer_cache,
    frozen_fingerprint,
    pad_states,
    tuned_split,
)
from llmser.models.text_llm.config import TextLLMBranchConfig
from llmser.models.text_llm.data import collate_cached_states
from llmser.models.text_llm.model import TextLLMEmotionModel

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["short one", "a much longer transcript that needs many more tokens than the first", "mid length words"]


def _model(**kw) -> TextLLMEmotionModel:
    base = {"llm": "tiny", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "head_hidden_size": 16,
            "dropout": 0.0, "lora_top_layers": 1}
    torch.manual_seed(0)
    model = TextLLMEmotionModel.from_config(TextLLMBranchConfig(**{**base, **kw}))
    with torch.no_grad():  # non-zero LoRA B, so the tuned layer really differs from the base
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model


def _batch(model, texts):
    return model.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt")


def test_split_is_the_first_tuned_layer():
    assert tuned_split(30, 8) == 22 and tuned_split(30, None) is None and tuned_split(2, 2) is None
    model = _model()
    assert model.cache_split == 1
    tuned = {int(n.split("layers.")[1].split(".")[0]) for n, p in model.named_parameters()
             if p.requires_grad and "lora_" in n}
    assert tuned == {1}


def test_lower_states_are_the_decoder_hidden_states_entering_the_split():
    model = _model().eval()
    enc = _batch(model, TEXTS)
    full = model.decoder()(**enc, output_hidden_states=True, use_cache=False,
                           position_ids=(enc["attention_mask"].cumsum(-1) - 1).clamp(min=0))
    lower = model.lower_states(enc["input_ids"], enc["attention_mask"])
    real = enc["attention_mask"].bool()
    torch.testing.assert_close(lower[real], full.hidden_states[1][real], atol=1e-5, rtol=1e-5)


def test_cached_forward_equals_full_forward_padding_and_batching_included(tmp_path):
    model = _model().eval()
    enc = _batch(model, TEXTS)
    full = model(**enc)
    # Cache each prompt's real tokens alone, then re-batch them in another order: padding changes.
    cache = LayerStateCache(tmp_path, frozen_fingerprint(model.decoder(), model.cache_split))
    rows = [[int(t) for t, m in zip(ids, mask) if m] for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
    assert fill_layer_cache(model.decoder(), rows, cache, model.cache_split, pad_token_id=0, batch_size=2,
                            progress=False) == 3
    order = [2, 0, 1]
    hidden, mask = pad_states([cache.get(rows[i]) for i in order])
    cached = model(lower_hidden=hidden, attention_mask=mask)
    torch.testing.assert_close(cached.class_logits, full.class_logits[order], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cached.attributes, full.attributes[order], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cached.embedding, full.embedding[order], atol=1e-4, rtol=1e-4)
    assert fill_layer_cache(model.decoder(), rows, cache, model.cache_split, pad_token_id=0, progress=False) == 0


def test_a_step_on_cached_states_moves_lora_and_heads_only():
    model = _model().train()
    enc = _batch(model, TEXTS)
    lower = model.lower_states(enc["input_ids"], enc["attention_mask"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(lower_hidden=lower, attention_mask=enc["attention_mask"])
    loss = torch.nn.functional.cross_entropy(out.class_logits, torch.tensor([0, 1, 2])) + out.attributes.mean()
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any("lora_B" in n for n in changed) and any(n.startswith("heads.") for n in changed)
    assert all(("lora_" in n and "layers.1." in n) or n.startswith("heads.") for n in changed), changed
    assert not any("layers.0." in n or "embed_tokens" in n for n in changed)


def test_fingerprint_follows_the_frozen_part_only():
    model = _model()
    decoder = model.decoder()
    first = frozen_fingerprint(decoder, 1)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n).add_(1.0)
        next(p for n, p in decoder.layers[1].named_parameters() if "lora_" not in n).add_(1.0)
    assert frozen_fingerprint(decoder, 1) == first  # LoRA and the tuned layer do not enter it
    with torch.no_grad():
        decoder.layers[0].mlp.down_proj.weight.add_(1.0)
    assert frozen_fingerprint(decoder, 1) != first
    assert frozen_fingerprint(decoder, 1) != frozen_fingerprint(decoder, 2)


def test_cached_forward_without_lora_top_layers_is_refused():
    model = _model(lora_top_layers=None)
    with pytest.raises(ValueError, match="lora_top_layers"):
        model(lower_hidden=torch.zeros(1, 3, 64), attention_mask=torch.ones(1, 3, dtype=torch.long))


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is needed for the demo corpus")
def test_prepare_serves_every_variant_from_the_cache_and_matches_the_prompt_path(tmp_path):
    from accelerate import PartialState

    from llmser.data.demo_corpus import DemoCorpusConfig, make_demo_corpus
    from llmser.data.msp_podcast import MSPPodcast
    from llmser.models.llm.votes import collect_votes, votes
    from llmser.models.registry import branch_config, load_recipe
    from llmser.models.text_llm.branch import prepare
    from llmser.models.text_llm.data import CachedStatesCollator, CachedStatesDataset, PromptCollator

    corpus_dir = tmp_path / "corpus"
    make_demo_corpus(corpus_dir, DemoCorpusConfig(n=24, seed=5, n_speakers=6, workers=2), progress=False)
    recipe = load_recipe(ROOT / "adapters/text_tiny.yaml", [f"data.corpus={corpus_dir}", "model.lora_top_layers=1",
                                                             f"data.cache_dir={tmp_path / 'cache'}"])
    corpus = MSPPodcast.from_folder(corpus_dir)
    setup = prepare(recipe, branch_config(recipe), corpus, PartialState())
    assert isinstance(setup.train_set, CachedStatesDataset) and isinstance(setup.collate_fn, CachedStatesCollator)
    variants = len(setup.train_set.prompts.templates)
    assert len(setup.train_set.all_prompt_ids()) == variants * len(setup.train_set)
    model = setup.model.eval()
    cached_files = lambda: len(list((tmp_path / "cache").rglob("*.safetensors")))  # noqa: E731
    assert cached_files() == 0  # filled on first access: a set never read costs nothing
    examples = [setup.eval_set[i] for i in range(3)]
    assert cached_files() == len({tuple(p) for p in setup.eval_set.all_prompt_ids()})
    setup.train_set[0]
    assert cached_files() == len({tuple(p) for s in (setup.train_set, setup.eval_set) for p in s.all_prompt_ids()})
    cached = model(**collate_cached_states(examples))
    full = model(**PromptCollator(model.tokenizer)(examples))
    torch.testing.assert_close(cached.class_logits, full.class_logits, atol=1e-4, rtol=1e-4)
    # The test report and collect-outputs vote through the same setup (the whole LLM per file, every variant).
    assert votes(model, setup.test_set) and setup.eval_set.utterances == setup.eval_set.prompts.utterances
    voted = collect_votes(model, setup.test_set, setup.collate_fn, batch_size=4, progress=False)
    assert voted.variant_probs.shape == (len(setup.test_set), len(model.voting_variants), 8)
    # Off: the plain prompt path.
    recipe_off = load_recipe(ROOT / "adapters/text_tiny.yaml", [f"data.corpus={corpus_dir}", "model.lora_top_layers=1",
                                                                 "model.cache_lower_layers=false"])
    assert isinstance(prepare(recipe_off, branch_config(recipe_off), corpus, PartialState()).collate_fn, PromptCollator)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is needed for the demo corpus")
def test_llmser_train_with_the_cache_writes_the_voting_test_report(tmp_path):
    """The whole `llmser train` path with cached lower layers: training on the cache, then the vote on dev and
    test through the whole LLM (the demo's text stage; it once crashed reading the cached dev set)."""
    import json

    from llmser.data.demo_corpus import DemoCorpusConfig, make_demo_corpus
    from llmser.training.run import run

    corpus_dir = tmp_path / "corpus"
    make_demo_corpus(corpus_dir, DemoCorpusConfig(n=24, seed=5, n_speakers=6, workers=2), progress=False)
    out = tmp_path / "run"
    result = run(ROOT / "adapters/text_tiny.yaml", [f"data.corpus={corpus_dir}", "model.lora_top_layers=1",
                                                     f"data.cache_dir={tmp_path / 'cache'}", f"train.output_dir={out}",
                                                     "train.max_steps=2", "train.eval_every=2", "train.save_every=2"])
    assert result["step"] == 2 and (out / "test" / "report.md").is_file()
    voting = json.loads((out / "test" / "voting.json").read_text())
    assert {"dev", "test"} <= set(voting)


def test_frozen_fingerprint_is_the_same_at_any_thread_count():
    """The states' cache key hashes the frozen weights' bytes, so torch's thread count cannot change it (a float
    sum of the weights did)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=4000, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    decoder = LlamaForCausalLM(config).model
    threads = torch.get_num_threads()
    try:
        keys = set()
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            keys.add(frozen_fingerprint(decoder, 1))
    finally:
        torch.set_num_threads(threads)
    assert len(keys) == 1
    with torch.no_grad():
        decoder.layers[0].mlp.up_proj.weight[7, 11] += 1e-3
    assert frozen_fingerprint(decoder, 1) not in keys
    assert frozen_fingerprint(decoder, 2) != frozen_fingerprint(decoder, 1)
