"""Transcripts made by Whisper for files that have none, cached by audio content and ASR model.

    from llmser.models.whisper.asr import fill_transcripts, transcribe
    texts = transcribe(["a.wav", "b.wav"], model="smol")               # Whisper tiny.en, offline
    utterances = fill_transcripts(utterances, asr="smol", cache_dir=".cache/llmser/features")

The text branch, the audio-LLM with ``speech+transcript``, the TF-IDF baseline and ``predict-prompts``
read transcripts; MSP-Podcast ships them, other corpora may not. With ``missing_transcripts: asr`` (a
recipe's ``data.missing_transcripts``, or ``--missing-transcripts asr``) the missing ones are made here.
They are cached under ``<cache_dir>/transcripts/`` keyed by the audio file's content (sha256) and the
ASR model, so a copy of the corpus, a re-run or ``collect-outputs`` reuses them, and they are never
written into the corpus (``llmser transcribe --corpus C`` does that, when asked). Files longer than
Whisper's 30-s window are transcribed window by window and the texts joined; decoding is greedy.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmser.utils.logging import get_logger

logger = get_logger(__name__)


def transcribe(paths: Sequence[str | Path], *, model: str = "smol", batch_size: int = 8, progress: bool = True,
               max_new_tokens: int = 128, whisper: tuple[Any, Any] | None = None) -> list[str]:
    """One stripped transcript per audio file, in order (long files in 30-s windows, joined).

    ``whisper`` passes an already loaded ``(model, processor)`` pair (e.g. to transcribe several lists).
    """
    import torch
    from tqdm.auto import tqdm

    from llmser.data.audio import audio_duration, iter_audio_chunks, load_audio
    from llmser.models.whisper.loading import SAMPLE_RATE, load_whisper_for_transcription

    net, processor = whisper or load_whisper_for_transcription(model)
    device = next(net.parameters()).device
    seconds = processor.feature_extractor.chunk_length
    pieces: list[tuple[int, Any]] = []  # (file index, 16-kHz wave of one window)
    long_files = 0
    for i, path in enumerate(paths):
        if audio_duration(path) > seconds:
            long_files += 1
            pieces += [(i, wave) for wave in iter_audio_chunks(path, chunk_seconds=seconds)]
        else:
            pieces.append((i, load_audio(path, max_seconds=seconds)))
    if long_files:
        logger.info("%d file(s) longer than Whisper's %d-s window: transcribed window by window", long_files, seconds)
    texts: list[list[str]] = [[] for _ in paths]
    with tqdm(total=len(pieces), desc="transcribing", disable=not progress, leave=False) as bar:
        for start in range(0, len(pieces), batch_size):
            chunk = pieces[start:start + batch_size]
            features = processor.feature_extractor([w for _, w in chunk], sampling_rate=SAMPLE_RATE,
                                                   return_tensors="pt")
            with torch.no_grad():
                ids = net.generate(features.input_features.to(device, net.dtype), max_new_tokens=max_new_tokens,
                                   do_sample=False)
            for (i, _), text in zip(chunk, processor.tokenizer.batch_decode(ids, skip_special_tokens=True)):
                texts[i].append(text.strip())
            bar.update(len(chunk))
    return [" ".join(t for t in parts if t) for parts in texts]


class TranscriptCache:
    """``<cache_dir>/transcripts/<key>.txt``, key = sha256 of (audio content, ASR model): never stale, never in the corpus."""

    def __init__(self, cache_dir: str | Path, asr: str):
        from llmser.models.whisper.loading import canonical_whisper_name

        self.folder = Path(cache_dir) / "transcripts"
        self.asr = canonical_whisper_name(asr)

    def path_for(self, audio_path: str | Path) -> Path:
        content = hashlib.sha256(Path(audio_path).read_bytes()).hexdigest()
        return self.folder / f"{hashlib.sha256(f'{content}|{self.asr}'.encode()).hexdigest()[:32]}.txt"

    def get(self, audio_path: str | Path) -> str | None:
        path = self.path_for(audio_path)
        return path.read_text(encoding="utf-8").rstrip("\n") if path.is_file() else None

    def put(self, audio_path: str | Path, text: str) -> None:
        from llmser.utils.io import atomic_write_text

        atomic_write_text(self.path_for(audio_path), text + "\n")


def fill_transcripts(utterances: Sequence, *, asr: str = "smol", cache_dir: str | Path = ".cache/llmser/features",
                     what: str = "", batch_size: int = 8, progress: bool = True) -> list:
    """The utterances with every missing or empty transcript made by Whisper ``asr`` (cached; see the module doc)."""
    utterances = list(utterances)
    missing = [i for i, u in enumerate(utterances) if not (u.transcript or "").strip()]
    if not missing:
        return utterances
    cache = TranscriptCache(cache_dir, asr)
    texts = {i: cache.get(utterances[i].audio_path) for i in missing}
    todo = [i for i in missing if texts[i] is None]
    if todo:
        made = transcribe([utterances[i].audio_path for i in todo], model=asr, batch_size=batch_size,
                          progress=progress)
        for i, text in zip(todo, made):
            cache.put(utterances[i].audio_path, text)
            texts[i] = text
    logger.info("%s%d of %d transcript(s) missing: made by Whisper (%s), %d now and %d from the cache in %s",
                f"{what}: " if what else "", len(missing), len(utterances), cache.asr, len(todo),
                len(missing) - len(todo), cache.folder)
    for i in missing:
        utterances[i] = dataclasses.replace(utterances[i], transcript=texts[i])
    return utterances
