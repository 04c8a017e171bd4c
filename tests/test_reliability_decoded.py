"""Inputs that decode but are wrong: control characters and non-UTF-8 transcripts, audio too short for the
model, channels that cancel (docs/reliability.md)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from corpus_factory import tone, write_corpus

from llmser.data.audio import AudioError, load_audio
from llmser.data.text import TranscriptError, clean_text, read_transcript


@pytest.fixture()
def llmser_warnings(caplog):
    logging.getLogger("llmser").addHandler(caplog.handler)
    yield caplog
    logging.getLogger("llmser").removeHandler(caplog.handler)


def test_control_characters_are_replaced_and_the_file_named(tmp_path, llmser_warnings):
    path = tmp_path / "a.txt"
    path.write_bytes("I am \x1b[31mso\x07 happy\x7f today\u0085\n".encode())
    assert read_transcript(path) == "I am [31mso happy today"
    assert str(path) in llmser_warnings.text and "replaced 4 control character(s)" in llmser_warnings.text
    assert clean_text("tab\tand\nline stay") == "tab\tand\nline stay"


@pytest.mark.parametrize("data,match", [
    ("hello there".encode("utf-16-le"), r"holds NUL bytes, so it is UTF-16 without a byte-order mark"),
    ("hello there".encode("utf-16-be"), r"holds NUL bytes"),
    (b"abc\x00def", r"holds NUL bytes"),
    ("café crème".encode("latin-1"), r"is not UTF-8; re-save it as UTF-8 \(byte 0xe9 at position 3"),
])
def test_text_that_is_not_utf8_is_refused_naming_the_file(tmp_path, data, match):
    path = tmp_path / "t.txt"
    path.write_bytes(data)
    with pytest.raises(TranscriptError, match=match) as err:
        read_transcript(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig"])
def test_text_with_a_byte_order_mark_is_read(tmp_path, encoding):
    path = tmp_path / "t.txt"
    path.write_bytes("ça va bien".encode(encoding))
    assert read_transcript(path) == "ça va bien"


def test_corpus_reader_reports_utf16_and_cleans_nul_free_controls(tmp_path):
    from llmser.data.msp_podcast import CorpusError, MSPPodcast, ReaderConfig

    rows = [[f"MSP-PODCAST_0001_000{i}.wav", "A", 4, 4, 4, "1", "Female", "Train"] for i in range(2)]
    root = write_corpus(tmp_path / "c", rows)
    for i in range(2):
        sf.write(root / "Audios" / rows[i][0], tone(), 16000)
    (root / "Transcripts").mkdir(exist_ok=True)
    (root / "Transcripts" / "MSP-PODCAST_0001_0000.txt").write_bytes("so happy".encode("utf-16-le"))
    (root / "Transcripts" / "MSP-PODCAST_0001_0001.txt").write_text("so\x00 angry" .replace("\x00", "\x01"))
    with pytest.raises(CorpusError, match=r"row 2 \(MSP-PODCAST_0001_0000.wav\): transcript .*holds NUL bytes"):
        MSPPodcast.from_folder(root)
    corpus = MSPPodcast.from_folder(root, ReaderConfig(on_error="skip"))
    assert [u.transcript for u in corpus.utterances("train", task="all")] == ["so angry"]


def test_predict_transcripts_folder_refuses_every_bad_file_at_once(tmp_path):
    from llmser.cli.predict import read_transcripts

    (tmp_path / "a.txt").write_bytes("hi".encode("utf-16-le"))
    (tmp_path / "b.txt").write_bytes(b"caf\xe9")
    (tmp_path / "c.txt").write_text("fine\x07")
    with pytest.raises(TranscriptError) as err:
        read_transcripts(str(tmp_path))
    message = str(err.value)
    assert "2 unusable transcript(s)" in message and "a.txt" in message and "b.txt" in message
    (tmp_path / "a.txt").unlink()
    (tmp_path / "b.txt").unlink()
    assert read_transcripts(str(tmp_path)) == {"c": "fine"}


def test_phase_inverted_stereo_uses_one_channel(tmp_path, llmser_warnings):
    wave = tone(1.0)
    path = tmp_path / "inverted.wav"
    sf.write(path, np.stack([wave, -wave], axis=1), 16000, subtype="FLOAT")
    loaded = load_audio(path)
    np.testing.assert_allclose(loaded, wave, atol=1e-6)
    assert "cancel when averaged" in llmser_warnings.text and str(path) in llmser_warnings.text
    normal = tmp_path / "stereo.wav"
    sf.write(normal, np.stack([wave, 0.5 * wave], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(normal), 0.75 * wave, atol=1e-6)  # ordinary stereo: averaged


def test_audio_shorter_than_the_model_needs_is_refused(tmp_path):
    path = tmp_path / "blip.wav"
    sf.write(path, tone(0.01), 16000)  # 160 samples
    assert len(load_audio(path)) == 160
    with pytest.raises(AudioError, match=r"blip.wav: 10.0 ms of audio is too short .* at least 25.0 ms \(400 samples"):
        load_audio(path, min_samples=400)


def test_wavlm_receptive_field_and_predictor_skips_short_clips(tmp_path):
    from llmser.config import save_config
    from llmser.inference.predictor import Predictor
    from llmser.inference.system import build_system
    from llmser.models.wavlm.config import WavLMBranchConfig
    from llmser.models.wavlm.model import WavLMEmotionModel
    from llmser.recipe import Recipe

    section = {"encoder": "tiny", "encoder_mode": "finetune", "head_hidden_size": 16, "dropout": 0.0}
    torch.manual_seed(0)
    model = WavLMEmotionModel.from_config(WavLMBranchConfig(**section))
    assert model.min_samples == 400  # WavLM's conv stack: 25 ms
    best = model.save_pretrained(tmp_path / "run" / "best")
    save_config(Recipe(branch="wavlm", model=section), best / "recipe.yaml")
    system = build_system(tmp_path / "system", {"wavlm": tmp_path / "run"})
    clips = tmp_path / "clips"
    clips.mkdir()
    sf.write(clips / "long.wav", tone(1.0), 16000)
    sf.write(clips / "short.wav", tone(0.02), 16000)
    predictor = Predictor.from_pretrained(system)
    result = predictor([clips / "long.wav", clips / "short.wav"], batch_size=2, progress=False)  # in a batch
    assert result.predictions.file_names == ["long.wav"]
    assert "too short for this model" in result.skipped["short.wav"]
    alone = predictor([clips / "short.wav"], batch_size=1, progress=False)  # alone
    assert len(alone.predictions) == 0 and "too short" in alone.skipped["short.wav"]


def test_user_transcripts_are_cleaned_before_the_prompt():
    from llmser.inference.predictor import Predictor

    predictor = Predictor([], "average")
    found = predictor.transcripts_for([Path("a.wav")], {"a": "so\x00 happy\x1b"})
    assert found == {"a.wav": "so happy"}
