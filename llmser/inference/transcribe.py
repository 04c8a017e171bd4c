"""Transcripts for audio that has none, with Whisper (``smol`` = tiny.en, offline; ``large-v3`` for real use).

    from llmser.inference.transcribe import transcribe
    texts = transcribe(["a.wav", "b.wav"], model="smol")

The text and speech+transcript branches read transcripts; MSP-Podcast ships them, a user's own audio
usually does not. The work is done in ``llmser.models.whisper.asr`` (so training, which may not import
this layer, fills missing transcripts with the same code and cache); this module is the inference
entry point: clips are read at 16 kHz mono, files longer than Whisper's 30-s window are transcribed
window by window, decoding is greedy, in batches, without timestamps.
"""

from __future__ import annotations

from llmser.models.whisper.asr import TranscriptCache, fill_transcripts, transcribe

__all__ = ["transcribe", "fill_transcripts", "TranscriptCache"]
