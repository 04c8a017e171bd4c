"""Small building blocks shared by the branches: layer weighting, attentive pooling, task heads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmser.schema import ATTRIBUTE_MAX, ATTRIBUTE_MIN, NUM_CLASSES


class LayerWeightedSum(nn.Module):
    """Learned softmax-weighted sum over an encoder's hidden layers (SUPERB-style).

    Emotion lives in middle layers of speech SSL models more than in the last one, so the
    branch learns which layers to listen to instead of taking ``last_hidden_state``.
    """

    def __init__(self, num_layers: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_layers))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # hidden_states: (L, B, T, H) -> (B, T, H)
        weights = torch.softmax(self.logits, dim=0)
        return torch.einsum("l,lbth->bth", weights, hidden_states)


class AttentiveStatisticsPooling(nn.Module):
    """Attention-weighted mean and standard deviation over frames (Okabe et al., 2018).

    The challenge baseline's best pooling: the std captures prosodic variability that plain mean
    pooling averages away. Padded frames get zero attention through ``mask``.
    """

    def __init__(self, hidden_size: int, attention_size: int = 128):
        super().__init__()
        # No bias on the score layer: softmax over frames ignores a constant shift, so a bias would get
        # only float-noise gradients (which AdamW amplifies into random drift).
        self.attention = nn.Sequential(nn.Linear(hidden_size, attention_size), nn.Tanh(),
                                       nn.Linear(attention_size, 1, bias=False))
        self.output_size = 2 * hidden_size

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # frames: (B, T, H); mask: (B, T) with 1 for real frames
        scores = self.attention(frames).squeeze(-1)  # (B, T)
        if mask is not None:
            scores = scores.masked_fill(~mask.bool(), torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1).unsqueeze(-1)  # (B, T, 1)
        mean = (weights * frames).sum(dim=1)  # (B, H)
        var = (weights * (frames - mean.unsqueeze(1)) ** 2).sum(dim=1)
        std = torch.sqrt(var.clamp_min(1e-6))
        return torch.cat([mean, std], dim=-1)  # (B, 2H)


@dataclass
class EmotionOutput:
    """What every branch's forward returns: the engine's losses read the first two, fusion the third."""

    class_logits: torch.Tensor | None  # (B, 8)
    attributes: torch.Tensor | None  # (B, 3) on the 1-7 scale
    embedding: torch.Tensor  # (B, D) pooled, for fusion
    auxiliary_class_logits: torch.Tensor | None = None  # (B, 8) a training-only head (loss.auxiliary_class_weight)


class FeatureStandardizer(nn.BatchNorm1d):
    """Per-feature standardisation of an embedding, with running statistics (BatchNorm1d).

    An LLM's hidden states carry a few "massive activation" features that are orders of magnitude
    larger than the rest (SmolLM2-135M-Instruct, last-token final states of eight short emotion prompts: the
    largest feature's mean |value| is 39.2, 64 times the median feature's 0.61); a LayerNorm does not tame
    them, and an MLP head fed raw states spends its few demo-sized steps on those features. Standardising
    each feature puts them on one scale before the first step.
    A batch of one in training (the last item of an epoch) is normalised with the running statistics.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            return self.with_running_statistics(x)
        return super().forward(x)

    def with_running_statistics(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised with the running statistics whatever the mode (no statistics update)."""
        return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                        training=False, eps=self.eps)


class EmotionHeads(nn.Module):
    """Class logits (8) and attributes (3, in [1, 7]) from one pooled embedding; either head optional.

    ``standardize_inputs`` puts a ``FeatureStandardizer`` in front of both heads (for LLM states).
    """

    def __init__(self, input_size: int, hidden_size: int = 256, dropout: float = 0.2,
                 classes: bool = True, attributes: bool = True, standardize_inputs: bool = False):
        super().__init__()
        if not (classes or attributes):
            raise ValueError("at least one head (classes or attributes) must be enabled")
        self.input_norm = FeatureStandardizer(input_size) if standardize_inputs else None
        self.class_head = _mlp(input_size, hidden_size, NUM_CLASSES, dropout) if classes else None
        self.attribute_head = _mlp(input_size, hidden_size, 3, dropout) if attributes else None

    def standardized(self, embedding: torch.Tensor) -> torch.Tensor:
        """The embedding as the heads see it (running statistics), e.g. for a fusion adapter downstream."""
        return embedding if self.input_norm is None else self.input_norm.with_running_statistics(embedding)

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        logits, raw = self.raw(embedding)
        return logits, bounded_attributes(raw) if raw is not None else None

    def raw(self, embedding: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Class logits (B, 8) and the attributes before their bounding sigmoid (B, 3): what heads that
        add up their outputs (the audio-LLM's speech + LLM heads) sum."""
        if self.input_norm is not None:
            embedding = self.input_norm(embedding)
        logits = self.class_head(embedding) if self.class_head is not None else None
        raw = self.attribute_head(embedding) if self.attribute_head is not None else None
        return logits, raw


def bounded_attributes(raw: torch.Tensor) -> torch.Tensor:
    """(B, 3) head outputs -> attributes on the 1-7 scale the CCC is computed on (a bounded sigmoid)."""
    return ATTRIBUTE_MIN + (ATTRIBUTE_MAX - ATTRIBUTE_MIN) * torch.sigmoid(raw)


def unbounded_attributes(attributes: torch.Tensor, margin: float = 1e-3) -> torch.Tensor:
    """The inverse of ``bounded_attributes``: (B, 3) values on the 1-7 scale -> the raw outputs that give them
    (values at or beyond the scale's ends are taken ``margin`` of the range inside it)."""
    unit = ((attributes - ATTRIBUTE_MIN) / (ATTRIBUTE_MAX - ATTRIBUTE_MIN)).clamp(margin, 1.0 - margin)
    return torch.logit(unit)


def _mlp(input_size: int, hidden_size: int, output_size: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(input_size, hidden_size), nn.GELU(),
                         nn.Dropout(dropout), nn.Linear(hidden_size, output_size))
