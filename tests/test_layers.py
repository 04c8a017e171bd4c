"""The shared head building blocks: feature standardisation for LLM states."""

from __future__ import annotations

import torch

from llmser.models.layers import EmotionHeads, FeatureStandardizer


def test_standardizer_tames_a_massive_activation_feature():
    torch.manual_seed(0)
    x = torch.randn(64, 16)
    x[:, 3] = 500.0 + 50.0 * x[:, 3]  # one feature three orders of magnitude larger, as in LLM states
    norm = FeatureStandardizer(16).train()
    for _ in range(50):
        y = norm(x)
    assert y.mean(0).abs().max() < 1e-4 and (y.std(0) - 1).abs().max() < 0.05
    norm.eval()
    evaluated = norm(x)
    assert evaluated[:, 3].abs().mean() < 2.0  # running statistics learned the feature's scale


def test_standardizer_accepts_a_training_batch_of_one():
    norm = FeatureStandardizer(4).train()
    norm(torch.randn(8, 4))
    before = norm.running_mean.clone()
    out = norm(torch.randn(1, 4))  # the last item of an epoch: BatchNorm1d itself would raise
    assert out.shape == (1, 4) and torch.equal(norm.running_mean, before)


def test_heads_with_standardized_inputs_save_the_statistics():
    heads = EmotionHeads(8, 16, 0.0, standardize_inputs=True)
    assert {"input_norm.running_mean", "input_norm.running_var"} <= set(heads.state_dict())
    logits, attributes = heads(torch.randn(5, 8))
    assert logits.shape == (5, 8) and attributes.shape == (5, 3)
    assert "input_norm.running_mean" not in EmotionHeads(8, 16, 0.0).state_dict()


def test_standardized_embedding_uses_running_statistics_without_updating_them():
    heads = EmotionHeads(4, 8, 0.0, standardize_inputs=True).train()
    heads(torch.randn(16, 4) * 100)
    before = heads.input_norm.running_mean.clone()
    x = torch.randn(3, 4) * 100
    out = heads.standardized(x)
    expected = (x - before) / torch.sqrt(heads.input_norm.running_var + heads.input_norm.eps)
    torch.testing.assert_close(out, expected * heads.input_norm.weight + heads.input_norm.bias)
    assert torch.equal(heads.input_norm.running_mean, before)
    assert torch.equal(EmotionHeads(4, 8, 0.0).standardized(x), x)
