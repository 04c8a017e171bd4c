"""Token budgets split evaluation, voting and scoring batches without changing a result; scoring and its
reference build every index on the model's device; the key/value cache goes under the installed name."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_models  # noqa: E402 - the tests folder is on sys.path under pytest
import torch

from llmser.utils.budget import padded_tokens, split_to_budget


def test_split_to_budget_keeps_order_and_fits_every_group():
    items = [3, 9, 2, 2, 7, 1, 1, 1]

    def size(group):
        return len(group) * max(group)

    groups = split_to_budget(items, size, 12)
    assert [x for g in groups for x in g] == items
    assert all(size(g) <= 12 or len(g) == 1 for g in groups)  # a single long item still runs, alone
    assert split_to_budget(items, size, None) == [items]
    assert len(split_to_budget(items, size, 10**6)) == 1


def test_padded_tokens_reads_the_largest_mask():
    batch = {"input_ids": torch.zeros(4, 9), "attention_mask": torch.ones(4, 9), "vote_attention_mask": torch.ones(20, 7)}
    assert padded_tokens(batch) == 140


def test_label_scorer_gives_the_same_scores_under_a_small_budget():
    from llmser.models.llm.prompts import load_prompts
    from llmser.models.llm.scoring import LabelScorer

    model = tiny_models.build("text_llm")
    llm, tok = model.llm, model.tokenizer
    templates = load_prompts(["text_plain", "text_short"], task="class", inputs="transcript")
    texts = ["so happy today", "i hate this so much, really", "fine", "what"]
    whole = LabelScorer(llm, tok, batch_size=4).variant_log_likelihoods(templates, texts)
    split = LabelScorer(llm, tok, batch_size=4, max_tokens=40).variant_log_likelihoods(templates, texts)
    np.testing.assert_allclose(split, whole, atol=1e-5)
    prompts = [t.render(tok, x) for t in templates for x in texts]
    cands = list(templates[0].candidates)
    np.testing.assert_allclose(LabelScorer(llm, tok, batch_size=8, max_tokens=30).log_likelihoods(prompts, cands),
                               LabelScorer(llm, tok, batch_size=8).log_likelihoods(prompts, cands), atol=1e-5)


def test_votes_are_the_same_under_a_small_budget():
    from llmser.inference.predictor import _utterance
    from llmser.models.llm.votes import collect_votes
    from llmser.models.text_llm.branch import predict_data

    model = tiny_models.build("text_llm")
    from pathlib import Path

    utts = [_utterance(Path(f"clip{i}.wav"), t) for i, t in enumerate(["so happy today", "i hate this", "fine", "ok"])]
    dataset, collate = predict_data(model, None, utts)
    whole = collect_votes(model, dataset, collate, batch_size=4, progress=False)
    calls = []
    original = model.vote_batch
    model.vote_batch = lambda **batch: calls.append(batch["vote_attention_mask"].numel()) or original(**batch)
    width = collate([dataset.with_voting(model.voting_variants)[0]])["vote_attention_mask"].numel()
    split = collect_votes(model, dataset, collate, batch_size=4, progress=False, max_tokens=width)
    assert len(calls) == 4 and max(calls) <= width  # one file per forward under that budget
    np.testing.assert_allclose(split.variant_probs, whole.variant_probs, atol=1e-5)
    assert split.file_names == whole.file_names


class _Recorder(torch.nn.Module):
    """A stand-in LM on the meta device: records the device of every index it is handed."""

    def __init__(self, vocab: int = 11):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, device="meta"))
        self.vocab = vocab

    def forward(self, input_ids):
        assert input_ids.device.type == "meta", f"input ids on {input_ids.device}, the model on meta"
        logits = torch.zeros(*input_ids.shape, self.vocab, device="meta")
        return type("Out", (), {"logits": logits})()


def test_score_naive_builds_every_index_on_the_models_device():
    from llmser.models.llm.scoring import score_naive

    class Tok:
        eos_token_id = 1

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [2 + len(w) % 8 for w in text.split()]}

    # On meta, .item() cannot run: reaching it means every index was on the model's device (before the
    # fix the ids were built on the CPU, which CUDA refused: "index is on cpu, different from ... cuda:0").
    with pytest.raises(RuntimeError, match="meta"):
        score_naive(_Recorder(), Tok(), ["how does this sound"], ["happy", "sad"])


def test_cache_goes_under_the_name_the_installed_forward_takes(monkeypatch):
    import inspect

    from transformers.models.llama.modeling_llama import LlamaModel

    from llmser.models.llm import compat

    name = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"
    assert compat.cache_kwargs("C") == {name: "C"}
    compat.cache_argument.cache_clear()
    monkeypatch.setattr(LlamaModel, "forward", lambda self, input_ids=None, past_key_values=None, **kw: None)
    try:
        assert compat.cache_kwargs("C") == {"past_key_values": "C"}  # transformers 5.17-5.23
    finally:
        compat.cache_argument.cache_clear()
