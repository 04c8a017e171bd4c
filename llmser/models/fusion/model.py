"""The fusion adapter: gated cross-modal attention (or plain concatenation) over cached branch outputs.

Batches carry, per stream ``s`` in ``config.streams``: ``<s>_embedding`` (B, D_s) and, where cached
and ``config.sequences`` is on, ``<s>_sequence`` (B, T_s, D'_s) with ``<s>_sequence_mask`` (B, T_s).

Attention mode, for query stream q and key streams k:

    tokens_s = [pooled_s; frames_s] projected + type_s      # (B, 1 + T_s, H); no sequence -> 1 token
    attended = MHA(tokens_q, concat_k tokens_k)               # (B, T_q, H)
    gate     = sigmoid(W [tokens_q; attended])                # (B, T_q, H) in [0, 1]
    fused    = LayerNorm(tokens_q + gate * attended)          # the gate decides how much to take
    heads(concat[mean_q(fused), tokens_k[:, 0] for each key stream k])

The key streams' pooled tokens go to the heads beside the fused query so that a closed gate never
removes a modality: the worst case is the concat baseline in the hidden space; what the attention
adds is the frames (and speech-token states) the pooled embeddings summarise away. Only the adapter's own
parameters exist here; the branches that produced the inputs are not part of the model.

Saved layout (``save_pretrained``): ``config.json`` (with the input sizes) and ``model.safetensors``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from llmser.models.fusion.config import FusionBranchConfig
from llmser.models.layers import EmotionHeads, EmotionOutput
from llmser.schema import ATTRIBUTE_MAX, ATTRIBUTE_MIN

WEIGHTS_NAME = "model.safetensors"


def embedding_key(stream: str) -> str:
    return f"{stream}_embedding"


def sequence_key(stream: str) -> str:
    return f"{stream}_sequence"


def mask_key(stream: str) -> str:
    return f"{stream}_sequence_mask"


def probs_key(stream: str) -> str:
    return f"{stream}_probs"


def attributes_key(stream: str) -> str:
    return f"{stream}_attributes"


class StreamEncoder(nn.Module):
    """One stream's pooled embedding (and optional sequence) -> tokens in the shared hidden space."""

    def __init__(self, embedding_size: int, sequence_size: int | None, hidden: int, dropout: float):
        super().__init__()
        # LayerNorm first: LLM hidden states and WavLM embeddings differ in scale by orders of magnitude.
        self.embedding = nn.Sequential(nn.LayerNorm(embedding_size), nn.Linear(embedding_size, hidden))
        self.sequence = None
        if sequence_size is not None:
            self.sequence = nn.Sequential(nn.LayerNorm(sequence_size), nn.Linear(sequence_size, hidden))
        self.type_embedding = nn.Parameter(torch.zeros(hidden))  # tells the attention which stream a token is
        self.dropout = nn.Dropout(dropout)

    def forward(self, embedding: torch.Tensor, sequence: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> tokens (B, 1 + T, H) and their mask: the pooled embedding first, then the sequence if any.

        The pooled embedding stays a token beside the frames: it is the branch's own trained summary
        (e.g. WavLM's attentive statistics), which the frames alone do not give back.
        """
        tokens = self.embedding(embedding.float()).unsqueeze(1)  # (B, 1, H)
        token_mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)  # (B, 1)
        if self.sequence is not None and sequence is not None:
            frames = self.sequence(sequence.float())  # (B, T, H)
            if mask is None:
                mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
            tokens = torch.cat([tokens, frames], dim=1)  # (B, 1 + T, H)
            token_mask = torch.cat([token_mask, mask.bool()], dim=1)
        return self.dropout(tokens + self.type_embedding), token_mask


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H), (B, T) -> (B, H) mean over the real tokens."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)  # (B, T, 1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class GatedCrossAttention(nn.Module):
    """Query tokens attend to key tokens; a sigmoid gate per feature mixes the result into the query."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.gate = nn.Linear(2 * hidden, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        # query: (B, Tq, H); keys: (B, Tk, H); key_mask: (B, Tk) True = real token
        attended, _ = self.attention(query, keys, keys, key_padding_mask=~key_mask, need_weights=False)
        gate = torch.sigmoid(self.gate(torch.cat([query, attended], dim=-1)))  # (B, Tq, H)
        return self.norm(query + gate * attended), gate


class FusionEmotionModel(nn.Module):
    """Fusion adapter over cached branch outputs. Build with ``FusionEmotionModel(config)`` once the config's
    input sizes are known (``training.prepare`` reads them from the cache); reload with ``from_pretrained``.
    """

    def __init__(self, config: FusionBranchConfig):
        super().__init__()
        if not config.is_resolved:
            missing = [s for s in config.streams if s not in config.stream_sizes]
            raise ValueError(f"the input sizes of streams {missing} are unknown; build the model with "
                             "llmser.models.fusion.branch.prepare (reads them from the cached outputs) "
                             "or set stream_sizes")
        self.config = config
        if config.mode == "concat":
            self.norms = nn.ModuleDict({s: nn.LayerNorm(config.stream_sizes[s]) for s in config.streams})
            head_input = sum(config.stream_sizes[s] for s in config.streams)
        else:
            use_seq = config.sequences
            self.encoders = nn.ModuleDict({
                s: StreamEncoder(config.stream_sizes[s], config.sequence_sizes.get(s) if use_seq else None,
                                 config.hidden, config.dropout) for s in config.streams})
            self.cross = GatedCrossAttention(config.hidden, config.heads, config.dropout)
            head_input = config.hidden * len(config.streams)  # fused query + one summary per key stream
        self.heads = EmotionHeads(head_input, config.head_hidden_size, config.dropout,
                                  classes=config.class_head, attributes=config.attribute_head)
        if config.residual:
            # softmax(0) = equal weights; zero last layers = no correction yet: step 0 is the average ensemble
            self.stream_class_weights = nn.Parameter(torch.zeros(len(config.streams)))
            self.stream_attribute_weights = nn.Parameter(torch.zeros(len(config.streams)))
            for head in (self.heads.class_head, self.heads.attribute_head):
                if head is not None:
                    nn.init.zeros_(head[-1].weight)
                    nn.init.zeros_(head[-1].bias)

    @property
    def key_streams(self) -> list[str]:
        return [s for s in self.config.streams if s != self.config.query_stream]

    def fuse(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The pooled fused representation (B, F) and, in attention mode, the gate (B, Tq, H)."""
        self._check_inputs(batch)
        if self.config.mode == "concat":
            parts = [self.norms[s](batch[embedding_key(s)].float()) for s in self.config.streams]
            return torch.cat(parts, dim=-1), None
        tokens = {s: self.encoders[s](batch[embedding_key(s)], batch.get(sequence_key(s)), batch.get(mask_key(s)))
                  for s in self.config.streams}
        query, query_mask = tokens[self.config.query_stream]
        keys = torch.cat([tokens[s][0] for s in self.key_streams], dim=1)  # (B, Tk, H)
        key_mask = torch.cat([tokens[s][1] for s in self.key_streams], dim=1)  # (B, Tk)
        fused, gate = self.cross(query, keys, key_mask)
        # Each key stream's pooled token (token 0) goes to the heads directly: a mean over its frames
        # would dilute the branch's own summary 1:T; the frames are reached through the attention.
        summaries = [tokens[s][0][:, 0] for s in self.key_streams]  # K x (B, H)
        return torch.cat([masked_mean(fused, query_mask), *summaries], dim=-1), gate  # (B, (1 + K) H)

    def forward(self, **batch: torch.Tensor) -> EmotionOutput:
        pooled, _ = self.fuse(batch)
        if not self.config.residual:
            logits, attributes = self.heads(pooled)
            return EmotionOutput(class_logits=logits, attributes=attributes, embedding=pooled)
        logits = attributes = None
        if self.heads.class_head is not None:
            log_probs = torch.stack([batch[probs_key(s)].float().clamp_min(1e-8).log()
                                     for s in self.config.streams])  # (S, B, 8)
            weights = torch.log_softmax(self.stream_class_weights, 0).view(-1, 1, 1)
            logits = torch.logsumexp(log_probs + weights, 0) + self.heads.class_head(pooled)  # log mean + correction
        if self.heads.attribute_head is not None:
            stream_attributes = torch.stack([batch[attributes_key(s)].float() for s in self.config.streams])  # (S, B, 3)
            weights = torch.softmax(self.stream_attribute_weights, 0).view(-1, 1, 1)
            average = (weights * stream_attributes).sum(0)  # (B, 3)
            attributes = (average + self.heads.attribute_head(pooled)).clamp(ATTRIBUTE_MIN, ATTRIBUTE_MAX)
        return EmotionOutput(class_logits=logits, attributes=attributes, embedding=pooled)

    def _check_inputs(self, batch: dict) -> None:
        missing = [embedding_key(s) for s in self.config.streams if embedding_key(s) not in batch]
        if self.config.residual:
            missing += [key(s) for s in self.config.streams for key, wanted in
                        ((probs_key, self.config.class_head), (attributes_key, self.config.attribute_head))
                        if wanted and key(s) not in batch]
        if missing:
            raise KeyError(f"the batch has no {missing}; collate cached outputs with "
                           "llmser.models.fusion.data.collate_fusion (residual fusion reads each stream's cached "
                           "probs and attributes: re-collect outputs from branches with both heads)")

    # ------------------------------------------------------------------ save / load

    def save_pretrained(self, directory: str | Path) -> Path:
        from llmser.utils.weights import save_safetensors

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory)
        save_safetensors(self.state_dict(), directory / WEIGHTS_NAME)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: object) -> FusionEmotionModel:
        """Rebuild from a saved folder; ``overrides`` replace config fields that do not change shapes
        (e.g. ``outputs_dir`` when the cache moved)."""
        from llmser.utils.weights import load_state_checked

        directory = Path(directory)
        config = FusionBranchConfig.load(directory)
        if overrides:
            config = replace(config, **overrides)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing; the folder is incomplete")
        model = cls(config)
        load_state_checked(model, weights)
        return model
