"""Transcripts for audio that has none, with Whisper (``smol`` = tiny.en, offline; ``large-v3`` for real use).

    from llmser.inference.transcribe import transcribe
    texts = transcribe(["a.wav", "b.wav"], model="smol")

The text and speech+transcript branches read transcripts; MSP-Podcast ships them, a user's own audio
usually does not. Clips are read at 16 kHz mono and cropped to Whisper's 30-s window (podcast
segments are shorter); decoding is greedy, in batches, without timestamps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def transcribe(paths: Sequence[str | Path], *, model: str = "smol", batch_size: int = 8, progress: bool = True,
               max_new_tokens: int = 128, whisper: tuple[Any, Any] | None = None) -> list[str]:
    """One stripped transcript per audio file, in order.

    ``whisper`` passes an already loaded ``(model, processor)`` pair (e.g. to transcribe several lists).
    """
    import torch
    from tqdm.auto import tqdm

    from llmser.data.audio import load_audio
    from llmser.models.whisper.loading import SAMPLE_RATE, load_whisper_for_transcription

    net, processor = whisper or load_whisper_for_transcription(model)
    device = next(net.parameters()).device
    seconds = processor.feature_extractor.chunk_length
    texts: list[str] = []
    with tqdm(total=len(paths), desc="transcribing", disable=not progress, leave=False) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            waves = [load_audio(p, max_seconds=seconds) for p in chunk]
            features = processor.feature_extractor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt")
            with torch.no_grad():
                ids = net.generate(features.input_features.to(device, net.dtype), max_new_tokens=max_new_tokens,
                                   do_sample=False)
            texts += [t.strip() for t in processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]
            bar.update(len(chunk))
    return texts
