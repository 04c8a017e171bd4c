"""Audio loading: any rate, channel count or sample format in; 16 kHz mono float32 out.

soundfile reads the file (PCM 16/24/32-bit, float), channels are averaged, soxr resamples. Long
files are cropped while reading (only the frames needed are read, so memory stays bounded) or
refused, by policy. Every failure is an ``AudioError`` naming the file and the fix.

Two inputs that decode but would be wrong are handled here: channels that cancel when averaged
(a phase-inverted stereo pair sums to silence) fall back to the loudest channel, with a warning;
a clip shorter than ``min_samples`` (what a model needs to give one frame) is refused, so callers
skip it with the reason instead of crashing or predicting from zero frames.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from llmser.utils.logging import get_logger

logger = get_logger(__name__)

TARGET_SAMPLE_RATE = 16000
#: Averaged channels this much quieter than the channels themselves cancel each other (phase inversion).
_CANCEL_RATIO = 0.1


class AudioError(ValueError):
    """An audio file llmser cannot use; the message names the file and what to do."""


class SilentAudioError(AudioError):
    """The audio (or the window read) is silent: a long file's caller may leave that window out and go on."""


def _info(path: Path):
    import soundfile as sf

    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file; give the file itself (or pass the folder where "
                         "a folder is expected, e.g. llmser predict --audio FOLDER)")
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found; check the corpus Audios/ folder or the path given")
    if not os.access(path, os.R_OK):  # soundfile would call it a bad format
        raise AudioError(f"{path}: no permission to read the file; fix its permissions (e.g. chmod a+r) or run "
                         "as a user who can read it")
    try:
        return sf.info(str(path))
    except Exception as exc:  # noqa: BLE001 - soundfile raises several types for bad files
        raise AudioError(f"{path}: not a readable audio file ({exc}); re-export it as WAV "
                         "(e.g. sox in.xxx -r 16000 -c 1 out.wav) or remove it from the corpus") from None


def _check_wav_complete(path: Path) -> None:
    """Refuse a WAV whose data chunk is shorter than its header declares (a cut-off copy or download).

    libsndfile quietly reads what is there, so a half-copied file would otherwise train as a shorter
    clip. Only the chunk headers are read. Streaming writers put 0 or 0xFFFFFFFF in the size field;
    those are left alone.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return  # not a plain RIFF/WAVE file (FLAC, RF64, ...): soundfile checks it
        offset = 12
        while offset + 8 <= size:
            handle.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", handle.read(8))
            if chunk_id == b"data":
                present = size - offset - 8
                if chunk_size not in (0, 0xFFFFFFFF) and present < chunk_size:
                    raise AudioError(f"{path}: the file is truncated (its header declares {chunk_size} bytes of "
                                     f"audio, {present} are present); copy or download it again, or remove it")
                return
            offset += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to an even size


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the header only."""
    info = _info(Path(path))
    return info.frames / info.samplerate


def load_audio(path: str | Path, *, sample_rate: int = TARGET_SAMPLE_RATE, max_seconds: float | None = None,
               on_long: Literal["crop", "error"] = "crop", min_rms: float = 1e-4, min_samples: int = 1,
               offset_seconds: float = 0.0) -> np.ndarray:
    """Read ``path`` as mono float32 at ``sample_rate``; crop (or refuse) beyond ``max_seconds``; refuse a
    clip of fewer than ``min_samples`` samples (at ``sample_rate``).

    ``offset_seconds`` starts reading there (one window of a long file); only the frames read are decoded.
    """
    import soundfile as sf

    path = Path(path)
    info = _info(path)
    _check_wav_complete(path)
    start = min(int(round(offset_seconds * info.samplerate)), info.frames)
    frames = info.frames - start
    if max_seconds is not None and frames > max_seconds * info.samplerate:
        if on_long == "error":
            raise AudioError(f"{path}: {frames / info.samplerate:.1f} s is longer than max_seconds={max_seconds}; "
                             "raise the limit, crop the file, or use load_audio_chunks")
        frames = int(max_seconds * info.samplerate)
    try:
        data, rate = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001
        raise AudioError(f"{path}: the file is corrupt or truncated ({exc}); re-export or remove it") from None
    wave = _to_mono_16k(data, rate, sample_rate, path, min_rms)
    if len(wave) < min_samples:
        raise AudioError(f"{path}: {len(wave) / sample_rate * 1000:.1f} ms of audio is too short for this model, which "
                         f"needs at least {min_samples / sample_rate * 1000:.1f} ms ({min_samples} samples at "
                         f"{sample_rate} Hz) to give one frame; use a longer clip")
    return wave


def load_audio_chunks(path: str | Path, *, chunk_seconds: float, sample_rate: int = TARGET_SAMPLE_RATE,
                      min_rms: float = 1e-4) -> list[np.ndarray]:
    """Cut a long file into ``chunk_seconds`` pieces read block by block; all of them, as a list."""
    return list(iter_audio_chunks(path, chunk_seconds=chunk_seconds, sample_rate=sample_rate, min_rms=min_rms))


def iter_audio_chunks(path: str | Path, *, chunk_seconds: float, sample_rate: int = TARGET_SAMPLE_RATE,
                      min_rms: float = 1e-4) -> Iterator[np.ndarray]:
    """Yield ``chunk_seconds`` pieces one at a time, so memory holds one block however long the file."""
    import soundfile as sf

    path = Path(path)
    info = _info(path)
    _check_wav_complete(path)
    block = int(chunk_seconds * info.samplerate)
    if block <= 0:
        raise AudioError(f"{path}: chunk_seconds={chunk_seconds} gives empty chunks; use a positive length")
    found = False
    for data in sf.blocks(str(path), blocksize=block, dtype="float32", always_2d=True):
        if len(data) < 0.5 * info.samplerate and found:
            continue  # a last sliver under 0.5 s carries no usable emotion
        try:
            chunk = _to_mono_16k(data, info.samplerate, sample_rate, path, min_rms)
        except AudioError:
            continue  # a silent stretch inside a long recording is skipped, not fatal
        found = True
        yield chunk
    if not found:
        raise AudioError(f"{path}: no non-silent audio found; check the recording or remove it")


def _mix_channels(data: np.ndarray, path: Path) -> np.ndarray:
    """The channels' average, or the loudest channel when the average cancels (phase-inverted channels)."""
    if data.shape[1] == 1:
        return data[:, 0]
    wave = data.mean(axis=1)
    channel_rms = np.sqrt(np.mean(data.astype(np.float64) ** 2, axis=0))  # (C,)
    mix_rms = float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))
    if channel_rms.max() > 0 and mix_rms < _CANCEL_RATIO * float(channel_rms.mean()):
        loudest = int(channel_rms.argmax())
        logger.warning("%s: its %d channels cancel when averaged (RMS %.2g vs %.2g per channel; one is probably "
                       "phase-inverted); using channel %d alone", path, data.shape[1], mix_rms,
                       float(channel_rms.mean()), loudest)
        return data[:, loudest]
    return wave


def _to_mono_16k(data: np.ndarray, rate: int, target: int, path: Path, min_rms: float) -> np.ndarray:
    if data.size == 0:
        raise AudioError(f"{path}: the file has no samples (zero length); remove it from the corpus")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: the audio holds NaN or infinite samples; re-export it from the source")
    wave = _mix_channels(data, path)
    if rate != target:
        import soxr

        wave = soxr.resample(wave, rate, target)
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if float(np.sqrt(np.mean(wave.astype(np.float64) ** 2))) < min_rms:
        raise SilentAudioError(f"{path}: the audio is silent (RMS below {min_rms}); check the recording or remove it")
    return wave
