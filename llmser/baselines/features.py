"""Inputs of the classical baselines: eGeMAPS functionals of the audio and TF-IDF of the transcripts.

eGeMAPS goes through the same disk cache as the neural encoders' outputs
(:class:`llmser.data.feature_cache.FeatureCache`, keyed by the audio file's path, size and
modification time, the openSMILE version and the loading settings), so a re-run or another split
reads 88 numbers per file instead of running openSMILE again. Audio is read by
:func:`llmser.data.audio.load_audio` (16 kHz mono), so every wav llmser accepts works and an
unusable file fails with the same message as everywhere else.

TF-IDF is not cached: its vocabulary is fitted on the training transcripts of each run and
transforming a few thousand sentences takes well under a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmser.baselines import BaselineError
from llmser.baselines.config import ClassicalConfig
from llmser.data.audio import TARGET_SAMPLE_RATE, load_audio
from llmser.utils.logging import get_logger

logger = get_logger(__name__)

EGEMAPS_DIM = 88


def _import_opensmile() -> Any:
    try:
        import opensmile
    except ImportError as exc:
        raise BaselineError(
            "the egemaps baseline needs the `opensmile` package (openSMILE's eGeMAPS features): install it with "
            "`pip install opensmile==2.6.0`, or run only --systems tfidf"
        ) from exc
    return opensmile


class EgemapsExtractor:
    """The 88 eGeMAPS v02 functionals of one 16 kHz mono signal; one openSMILE instance, reused."""

    def __init__(self) -> None:
        opensmile = _import_opensmile()
        self.smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                     feature_level=opensmile.FeatureLevel.Functionals)
        self.names: list[str] = list(self.smile.feature_names)
        # The version is part of the cache key: another openSMILE release may compute other numbers.
        self.cache_id = f"egemaps-v02-functionals-opensmile-{opensmile.__version__}"
        self.calls = 0

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        self.calls += 1
        frame = self.smile.process_signal(wave, TARGET_SAMPLE_RATE)
        vector = frame.to_numpy(dtype=np.float32).reshape(-1)  # (88,)
        if vector.shape != (EGEMAPS_DIM,):
            raise BaselineError(f"openSMILE returned {vector.shape[0]} eGeMAPS values, expected {EGEMAPS_DIM}")
        return vector


def egemaps_matrix(utterances: Sequence, extractor: EgemapsExtractor, cache_dir: str | Path,
                   max_seconds: float | None = None) -> np.ndarray:
    """(N, 88) eGeMAPS of each utterance's audio; files already in the cache are not read again."""
    import torch

    from llmser.data.feature_cache import FeatureCache

    cache = FeatureCache(cache_dir, extractor.cache_id,
                         {"loader": "llmser.data.audio.load_audio", "sample_rate": TARGET_SAMPLE_RATE,
                          "max_seconds": max_seconds})
    rows = []
    for utt in utterances:
        cached = cache.get(utt.audio_path)
        if cached is None:
            vector = extractor(load_audio(utt.audio_path, max_seconds=max_seconds))
            cache.put(utt.audio_path, {"egemaps": torch.tensor(vector)})
        else:
            vector = cached["egemaps"].numpy()
        rows.append(vector)
    logger.info("eGeMAPS: %d file(s) from the cache, %d extracted (cache %s)", cache.hits, cache.misses,
                Path(cache_dir) / extractor.cache_id)
    # openSMILE can leave NaN in a few functionals of very short or unvoiced clips: kept as NaN here
    # and replaced by the training mean inside the model (classical.py), like any missing value.
    matrix = np.stack(rows).astype(np.float64)  # (N, 88)
    matrix[~np.isfinite(matrix)] = np.nan
    return matrix


def transcript_path(utt: Any) -> Path:
    """Where the corpus reader looks for ``utt``'s transcript: CORPUS/Transcripts/<stem>.txt."""
    audios = Path(utt.audio_path)
    for _ in Path(utt.file_name).parts:
        audios = audios.parent
    return audios.parent / "Transcripts" / f"{Path(utt.file_name).stem}.txt"


def transcripts(utterances: Sequence, split: str, policy: str = "error", *, asr: str = "smol",
                cache_dir: str = ".cache/llmser/features") -> list[str]:
    """Each utterance's transcript; a missing or empty one is an error naming the files, empty text, or
    (``policy="asr"``) made by Whisper ``asr`` and cached under ``cache_dir/transcripts``.

    ``policy="error"`` (the default) follows the text branch: a text baseline that quietly read
    nothing would report a number for a system that never saw the words. ``policy="empty"`` scores
    those files as empty text (the classifier then falls back to its intercept) and logs how many.
    """
    if policy == "asr":
        from llmser.models.whisper.asr import fill_transcripts

        utterances = fill_transcripts(utterances, asr=asr, cache_dir=cache_dir, what=split)
        return [(u.transcript or "").strip() for u in utterances]
    missing = [u for u in utterances if not (u.transcript or "").strip()]
    if missing and policy == "error":
        listed = ", ".join(str(transcript_path(u)) for u in missing[:3])
        raise BaselineError(
            f"{len(missing)} of {len(utterances)} {split} utterance(s) have no transcript, e.g. {listed}. The tfidf "
            "baseline reads transcripts: add the files, transcribe the audio with `llmser transcribe --corpus DIR`, "
            "pass --missing-transcripts asr to have Whisper make them (cached; the corpus is not changed), or "
            "--missing-transcripts empty to score them as empty text"
        )
    if missing:
        logger.warning("%s: %d of %d utterance(s) have no transcript; scored as empty text (--missing-transcripts "
                       "empty)", split, len(missing), len(utterances))
    return [(u.transcript or "").strip() for u in utterances]


def tfidf_vectorizer(config: ClassicalConfig) -> Any:
    """Word n-grams (the emotion words) next to character n-grams (inflections, typos, ASR errors)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    # sublinear_tf: a word said twice is not twice the evidence; each block's rows are L2-normalised,
    # so both blocks are already on one scale and need no further standardisation.
    word = TfidfVectorizer(analyzer="word", ngram_range=config.word_ngrams, sublinear_tf=True,
                           token_pattern=r"(?u)\b\w+\b")
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=config.char_ngrams, sublinear_tf=True)
    return FeatureUnion([("word", word), ("char", char)])


def tfidf_matrices(texts: dict[str, list[str]], config: ClassicalConfig) -> dict[str, Any]:
    """Sparse TF-IDF rows per split, the vocabulary fitted on ``texts["train"]`` only."""
    vectorizer = tfidf_vectorizer(config)
    try:
        vectorizer.fit(texts["train"])
    except ValueError as exc:  # "empty vocabulary": every training transcript is empty
        raise BaselineError(f"the training transcripts hold no words ({exc}); the tfidf baseline needs text") from None
    return {role: vectorizer.transform(rows) for role, rows in texts.items()}


__all__ = ["EGEMAPS_DIM", "EgemapsExtractor", "egemaps_matrix", "tfidf_matrices", "tfidf_vectorizer",
           "transcript_path", "transcripts"]
