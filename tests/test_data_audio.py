"""Audio loading: any rate/channels/format in, 16 kHz mono float32 out; bad files get AudioError."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from llmser.data.audio import AudioError, audio_duration, load_audio, load_audio_chunks
from tests.corpus_factory import tone


@pytest.mark.parametrize(("rate", "channels", "subtype"), [(8000, 1, "PCM_16"), (48000, 1, "PCM_16"),
                                                          (16000, 2, "PCM_16"), (22050, 1, "PCM_24"),
                                                          (44100, 2, "FLOAT")])
def test_any_format_becomes_16k_mono_float32(tmp_path, rate, channels, subtype):
    path = tmp_path / "a.wav"
    sf.write(path, tone(1.5, rate, channels=channels), rate, subtype=subtype)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 24000) <= 2
    assert 0.15 < np.sqrt(np.mean(wave ** 2)) < 0.25  # a 0.3-amplitude sine has RMS 0.212


def test_bad_files_are_named(tmp_path):
    cases = {
        "missing.wav": None,
        "text.wav": b"this is not audio at all",
        "empty.wav": np.zeros(0, np.float32),
        "silent.wav": np.zeros(16000, np.float32),
        "nan.wav": np.full(16000, np.nan, np.float32),
    }
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            sf.write(path, content, 16000, subtype="FLOAT")
        with pytest.raises(AudioError, match=name):
            load_audio(path)


def test_truncated_wav(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, tone(1.0), 16000)
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(AudioError, match="cut.wav"):
        load_audio(path)


def test_long_file_is_cropped_while_reading_or_refused(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, tone(60.0, 16000), 16000)
    assert audio_duration(path) == pytest.approx(60.0)
    assert len(load_audio(path, max_seconds=2.5)) == 40000
    with pytest.raises(AudioError, match="longer than max_seconds"):
        load_audio(path, max_seconds=2.5, on_long="error")
    chunks = load_audio_chunks(path, chunk_seconds=25)
    assert [len(c) for c in chunks] == [400000, 400000, 160000]


@settings(max_examples=20, deadline=None)
@given(rate=st.sampled_from([8000, 11025, 16000, 22050, 32000, 44100, 48000]), channels=st.integers(1, 3),
       frames=st.integers(800, 30000))
def test_output_length_follows_the_resampling_ratio(tmp_path_factory, rate, channels, frames):
    path = tmp_path_factory.mktemp("h") / "x.wav"
    data = np.random.default_rng(frames).uniform(-0.5, 0.5, (frames, channels)).astype(np.float32)
    sf.write(path, data, rate, subtype="FLOAT")
    wave = load_audio(path)
    assert abs(len(wave) - frames * 16000 / rate) <= 1
