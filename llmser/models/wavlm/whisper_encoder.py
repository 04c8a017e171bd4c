"""Whisper's encoder as the speech branch's frozen encoder: waveforms in, per-layer frame states out.

No WavLM/HuBERT weights can be had offline, but Whisper tiny.en's pretrained encoder is installed for the
audio-LLM (``llmser.models.whisper.loading``), and a frozen *pretrained* encoder is what makes a speech
branch learn on a small corpus (a random tiny WavLM trained from scratch stays near chance).

:class:`WhisperSpeechEncoder` gives the branch the same interface a WavLM has: ``forward(input_values,
attention_mask, output_hidden_states=True)`` returns every layer's states, ``config.hidden_size`` /
``config.num_hidden_layers`` size the layer weighting, and ``_get_feat_extract_output_lengths`` turns
sample counts into frame counts. Two things differ from WavLM:

- **Input**: raw 16-kHz waveforms (not normalised to unit variance): Whisper's log-mel front end
  expects the amplitude it was trained on, and loudness is an arousal cue that per-utterance
  normalisation would erase.
- **The 30-s window**: real Whisper checkpoints read exactly 3000 mel frames (30 s). By default every
  clip is padded with silence to 30 s, as Whisper was trained, and only the frames that cover the real
  audio (50 per second) are returned: the pooling never sees the padding, and the cache stores only
  real frames. ``window_seconds`` crops the window instead (the first positions of the position table
  kept, as whisper.cpp's ``audio_ctx``): several times faster, but an input length Whisper never saw
  in training; the recipe chooses on dev.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from llmser.models.whisper.loading import FRAMES_PER_SECOND, HOP_LENGTH, log_mel

SAMPLES_PER_FRAME = 2 * HOP_LENGTH  # 320 samples = 20 ms per encoder frame, as WavLM


class WhisperSpeechEncoder(nn.Module):
    """A (frozen) ``WhisperEncoder`` + its feature extractor, behind the WavLM encoder interface."""

    def __init__(self, encoder: nn.Module, feature_extractor: Any, name: str):
        super().__init__()
        self.encoder = encoder
        self.feature_extractor = feature_extractor
        self.name = name  # canonical name (openai/whisper-tiny.en), for logs and fingerprints

    @classmethod
    def load(cls, name_or_path: str, *, revision: str | None = None,
             window_seconds: float | None = None) -> WhisperSpeechEncoder:
        """Load by Whisper preset (``smol`` = tiny.en, ``large-v3``), Hub id or folder."""
        from llmser.models.whisper.loading import load_whisper_encoder

        loaded = load_whisper_encoder(name_or_path, revision=revision, window_seconds=window_seconds)
        return cls(loaded.encoder, loaded.feature_extractor, loaded.name)

    @property
    def config(self) -> Any:
        return self.encoder.config  # WhisperConfig maps hidden_size -> d_model, num_hidden_layers -> encoder_layers

    @property
    def max_frames(self) -> int:
        return int(self.encoder.config.max_source_positions)

    def _get_feat_extract_output_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Encoder frames that cover ``num_samples`` of audio (at least 1, at most the window)."""
        frames = torch.div(num_samples + SAMPLES_PER_FRAME - 1, SAMPLES_PER_FRAME, rounding_mode="floor")
        return frames.clamp(1, self.max_frames)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = True, **_: Any) -> BaseModelOutput:
        """Waveforms (B, S) -> ``hidden_states``: (layers + 1) tensors (B, T, H), T = frames of the longest clip."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_values, dtype=torch.long)
        lengths = attention_mask.sum(-1).long()
        waves = [np.asarray(w[: int(n)].detach().cpu().float().numpy()) for w, n in zip(input_values, lengths)]
        features, _ = log_mel(self.feature_extractor, waves)  # (B, mels, 2 * max_frames), silence-padded
        param = next(self.encoder.parameters())
        out = self.encoder(features.to(param.device, param.dtype), output_hidden_states=True)
        frames = int(self._get_feat_extract_output_lengths(lengths).max())
        hidden = tuple(h[:, :frames] for h in out.hidden_states)  # only frames that cover real audio
        return BaseModelOutput(last_hidden_state=hidden[-1], hidden_states=hidden)

    @property
    def seconds(self) -> float:
        """The audio one pass covers (30 s for real checkpoints, less when the window is cropped)."""
        return self.max_frames / FRAMES_PER_SECOND
