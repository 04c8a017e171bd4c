"""The audio-LLM's head mode (``model.mode: head``): class/attribute heads on the speech and on the LLM's state.

Why two heads that add up. On the demo corpus the audio-LLM that answers with label tokens stayed below a
linear head on the very same frozen Whisper encoder (dev macro-F1 0.305 vs 0.727): 30 LLM steps do not
teach SmolLM2 to read speech tokens well enough, and the Q-Former sees only the encoder's last layer.
Here the class logits (and the attributes before their bounding sigmoid) are

    speech head(attentive statistics of the layer-weighted encoder frames)   # the speech branch's head
  + LLM head(the LLM's last hidden state after the prompt variant)           # zero at the start

The speech head trains first, in stage 1 (no LLM forward, cheap), so the model starts stage 2 knowing what
its encoder knows; the LLM head's output layers start at zero, so the first LLM step starts from exactly
that model, and what the LLM learns can only be added to it. Each prompt variant gives its own LLM state,
hence its own probabilities: the variants still vote.
"""

from __future__ import annotations

import torch
from torch import nn

from llmser.models.layers import (
    AttentiveStatisticsPooling,
    EmotionHeads,
    bounded_attributes,
    unbounded_attributes,
)
from llmser.models.readout import RidgeReadout


class SpeechLLMHeads(nn.Module):
    """``speech`` head on pooled encoder frames + ``llm`` head on the LLM's last state; both standardise their input.

    With ``readout_size`` (``attribute_readout: ridge``) the speech side's attributes come from a closed-form ridge
    ``readout`` of the clip-mean encoder features instead of the speech head's MLP, which then predicts classes only.
    """

    def __init__(self, speech_size: int, llm_size: int, hidden: int, dropout: float, attributes: bool,
                 pooling_attention_size: int, readout_size: int | None = None):
        super().__init__()
        self.pooling = AttentiveStatisticsPooling(speech_size, pooling_attention_size)
        self.readout = RidgeReadout(readout_size) if attributes and readout_size else None
        self.speech = EmotionHeads(self.pooling.output_size, hidden, dropout,
                                   attributes=attributes and self.readout is None, standardize_inputs=True)
        self.llm = EmotionHeads(llm_size, hidden, dropout, attributes=attributes, standardize_inputs=True)
        for mlp in (self.llm.class_head, self.llm.attribute_head):
            if mlp is not None:  # the LLM head adds nothing until it has learned something
                nn.init.zeros_(mlp[-1].weight)
                nn.init.zeros_(mlp[-1].bias)

    def pool(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, D) layer-weighted encoder frames -> (B, 2D) attentive mean and standard deviation."""
        return self.pooling(frames, frame_mask)

    def speech_only(self, pooled: torch.Tensor, readout_inputs: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stage 1's outputs: class logits (B, 8) and attributes (B, 3) from the speech alone."""
        logits, raw = self.speech.raw(pooled)
        raw = self._speech_attributes(raw, readout_inputs)
        return logits, bounded_attributes(raw) if raw is not None else None

    def forward(self, pooled: torch.Tensor, state: torch.Tensor, readout_inputs: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pooled speech (N, 2D), LLM states (N, H) [and the readout's clip means (N, F)] -> class logits (N, 8),
        attributes (N, 3) or None."""
        speech_logits, speech_raw = self.speech.raw(pooled)
        speech_raw = self._speech_attributes(speech_raw, readout_inputs)
        llm_logits, llm_raw = self.llm.raw(state)
        attributes = bounded_attributes(speech_raw + llm_raw) if speech_raw is not None else None
        return speech_logits + llm_logits, attributes

    def _speech_attributes(self, head_raw: torch.Tensor | None, readout_inputs: torch.Tensor | None
                           ) -> torch.Tensor | None:
        """The speech side's attributes before the bounding sigmoid: the head's, or the readout's mapped onto it."""
        if self.readout is None:
            return head_raw
        if readout_inputs is None:
            raise ValueError("these heads read their attributes from the ridge readout: pass readout_inputs, the clip "
                             "means of the cached encoder frames (AudioLLMEmotionModel.readout_inputs)")
        return unbounded_attributes(self.readout(readout_inputs))

    def embedding(self, pooled: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """(N, 2D + H): both inputs as the heads see them (running statistics), for fusion downstream."""
        return torch.cat([self.speech.standardized(pooled), self.llm.standardized(state)], dim=-1)
