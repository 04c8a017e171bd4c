"""Long recordings at prediction time: windows averaged by length (default), crop, or a refusal naming the file."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from llmser.config import save_config
from llmser.inference.predictor import LongAudioError, Predictor, audio_windows
from llmser.inference.system import build_system
from llmser.recipe import Recipe


def _system(tmp: Path, name: str, model, branch: str, section: dict, recipe: dict | None = None) -> Path:
    model.save_pretrained(tmp / name / "best")
    save_config(Recipe(branch=branch, model=section, **(recipe or {})), tmp / name / "best" / "recipe.yaml")
    return build_system(tmp / f"{name}_system", {name: tmp / name}, method="average")


@pytest.fixture(scope="module")
def wavlm_system(tmp_path_factory):
    from llmser.models.wavlm.config import WavLMBranchConfig
    from llmser.models.wavlm.model import WavLMEmotionModel

    torch.manual_seed(0)
    section = {"encoder": "tiny", "encoder_mode": "finetune", "head_hidden_size": 16}
    model = WavLMEmotionModel.from_config(WavLMBranchConfig(**section))
    return _system(tmp_path_factory.mktemp("long"), "wavlm", model, "wavlm", section, {"data": {"max_seconds": 6.0}})


@pytest.fixture(scope="module")
def audio_llm_system(tmp_path_factory):
    from llmser.models.audio_llm.config import AudioLLMBranchConfig
    from llmser.models.audio_llm.model import AudioLLMEmotionModel

    torch.manual_seed(0)
    section = {"llm": "tiny", "whisper": "tiny", "max_audio_seconds": 6.0, "qformer_hidden": 32, "lora_r": 4,
               "lora_alpha": 8, "lora_dropout": 0.0, "head_hidden_size": 16, "dropout": 0.0, "prompts": ["speech_plain"]}
    model = AudioLLMEmotionModel.from_config(AudioLLMBranchConfig(**section))
    return _system(tmp_path_factory.mktemp("long_llm"), "audio_llm", model, "audio_llm", section)


def _long_file(folder: Path, seconds: float) -> tuple[Path, np.ndarray]:
    """A recording whose loudness and pitch drift, so its windows differ; returned as written (PCM 16)."""
    t = np.arange(int(16000 * seconds)) / 16000
    rng = np.random.default_rng(1)
    wave = (0.2 + 0.15 * np.sin(t / 3)) * np.sin(2 * np.pi * (150 + 4 * t) * t) + 0.02 * rng.standard_normal(len(t))
    path = folder / "long.wav"
    sf.write(path, wave.astype(np.float32), 16000)
    return path, sf.read(path, dtype="float32")[0]


def _windows_as_files(folder: Path, wave: np.ndarray, window: float) -> tuple[list[Path], list[float]]:
    paths, lengths = [], []
    for k, (start, seconds) in enumerate(audio_windows(len(wave) / 16000, window)):
        piece = wave[int(round(start * 16000)): int(round(start * 16000)) + int(round(seconds * 16000))]
        paths.append(folder / f"window{k}.wav")
        sf.write(paths[-1], piece, 16000)
        lengths.append(len(piece) / 16000)
    return paths, lengths


def _weighted(values: np.ndarray, lengths: list[float]) -> np.ndarray:
    w = np.asarray(lengths)[:, None]
    return (values * w).sum(0) / w.sum()


def test_audio_windows_cover_the_file_and_drop_only_a_short_sliver():
    assert audio_windows(60.0, 6.0) == [(6.0 * k, 6.0) for k in range(10)]
    assert audio_windows(57.3, 6.0)[-1] == pytest.approx((54.0, 3.3))
    assert len(audio_windows(12.3, 6.0)) == 2  # a 0.3-s tail carries nothing
    assert audio_windows(0.3, 6.0) == [(0.0, 0.3)]


def test_a_60_s_file_is_predicted_in_windows_averaged_by_length(wavlm_system, tmp_path, caplog):
    predictor = Predictor.from_pretrained(wavlm_system)
    path, wave = _long_file(tmp_path, 57.3)  # nine 6-s windows and a 3.3-s one
    member = predictor.members[0]
    pieces, owner, weight = predictor._pieces(member, [_utterance(path)], [0], {})
    assert len(pieces) == 10 and owner == [0] * 10 and weight[-1] == pytest.approx(3.3)
    with caplog.at_level(logging.INFO, logger="llmser"):
        result = predictor([path], progress=False)
    assert "1 file(s) longer than its 6-s window: predicted in 10 windows" in caplog.text

    windows, lengths = _windows_as_files(tmp_path, wave, 6.0)
    per_window = predictor(windows, progress=False).predictions
    assert lengths[-1] == pytest.approx(3.3) and len(per_window) == 10
    assert not np.allclose(per_window.probs[0], per_window.probs[-1])  # the windows differ: the average means something
    np.testing.assert_allclose(result.predictions.probs[0], _weighted(per_window.probs, lengths), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.predictions.attributes[0], _weighted(per_window.attributes, lengths), rtol=1e-4)


def test_crop_reads_the_first_window_and_error_refuses_naming_the_file(wavlm_system, tmp_path, capsys):
    from llmser.cli import main

    path, wave = _long_file(tmp_path, 20.0)
    first = tmp_path / "first.wav"
    sf.write(first, wave[: 6 * 16000], 16000)
    cropped = Predictor.from_pretrained(wavlm_system, long_audio="crop")([path], progress=False).predictions
    alone = Predictor.from_pretrained(wavlm_system)([first], progress=False).predictions
    np.testing.assert_allclose(cropped.probs, alone.probs, rtol=1e-5, atol=1e-7)

    with pytest.raises(LongAudioError, match=r"longer than the model.s 6-s window: .*long\.wav: 20\.0 s"):
        Predictor.from_pretrained(wavlm_system, long_audio="error")([first, path], progress=False)
    out = tmp_path / "preds.csv"
    assert main(["predict", "--model", str(wavlm_system), "--audio", str(path), "--out", str(out),
                 "--long-audio", "error"]) == 2
    assert "long.wav: 20.0 s" in capsys.readouterr().err and not out.exists()


def test_the_audio_llm_reads_windows_of_a_long_file_too(audio_llm_system, tmp_path):
    predictor = Predictor.from_pretrained(audio_llm_system)
    path, wave = _long_file(tmp_path, 14.0)  # 6 + 6 + 2 s
    result = predictor([path], progress=False).predictions
    windows, lengths = _windows_as_files(tmp_path, wave, 6.0)
    per_window = predictor(windows, progress=False).predictions
    assert lengths == pytest.approx([6.0, 6.0, 2.0])
    np.testing.assert_allclose(result.probs[0], _weighted(per_window.probs, lengths), rtol=1e-4, atol=1e-6)


def _utterance(path: Path):
    from llmser.inference.predictor import _utterance as make

    return make(path, None)
