"""The speech branch on a frozen Whisper encoder (the ``smol`` preset): frames of real audio only, raw amplitude
in, the cached path equal to the direct one, only the heads train."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from llmser.data.examples import collate_hidden, collate_waveforms
from llmser.models.wavlm.config import WavLMBranchConfig, is_whisper_encoder
from llmser.models.wavlm.model import WavLMEmotionModel
from llmser.models.wavlm.whisper_encoder import WhisperSpeechEncoder
from llmser.models.whisper.loading import build_tiny_whisper_encoder, feature_extractor_for

ROOT = Path(__file__).resolve().parents[1]


def _model(**kw) -> WavLMEmotionModel:
    """The branch with a seeded random tiny Whisper encoder (6-s window) in place of tiny.en."""
    encoder = build_tiny_whisper_encoder().requires_grad_(False)
    config = WavLMBranchConfig(**{"encoder": "smol", "encoder_mode": "frozen", "head_hidden_size": 16,
                                  "pooling_attention_size": 8, "dropout": 0.0, **kw})
    torch.manual_seed(0)
    return WavLMEmotionModel(config, WhisperSpeechEncoder(encoder, feature_extractor_for(encoder.config), "tiny"))


def _waves(seconds=(1.0, 2.5, 0.7)) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"wave": (0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32), "label": i % 8,
             "soft_label": np.zeros(8, np.float32), "attributes": np.full(3, 4.0, np.float32), "index": i}
            for i, s in enumerate(seconds)]


def test_config_knows_whisper_encoders_and_refuses_what_it_cannot_do(tmp_path):
    assert is_whisper_encoder("smol") and is_whisper_encoder("openai/whisper-tiny.en")
    assert not is_whisper_encoder("microsoft/wavlm-large") and not is_whisper_encoder("tiny")
    (tmp_path / "config.json").write_text('{"model_type": "whisper"}')
    assert is_whisper_encoder(str(tmp_path))
    with pytest.raises(ValueError, match="frozen"):
        WavLMBranchConfig(encoder="smol", encoder_mode="finetune")
    with pytest.raises(ValueError, match="window_seconds"):
        WavLMBranchConfig(encoder="microsoft/wavlm-large", window_seconds=8)


def test_frames_cover_the_real_audio_only_and_batching_does_not_change_them():
    model = _model().eval()
    examples = _waves()
    batch = collate_waveforms(examples, normalise=model.normalises_waveforms)
    hidden, mask = model.encode(batch["input_values"], batch["attention_mask"])  # (L, B, T, H), (B, T)
    assert hidden.shape[:3] == (3, 3, 125)  # 2 layers + embeddings; 2.5 s = 125 frames of 20 ms
    assert mask.sum(-1).tolist() == [50, 125, 35]
    alone, alone_mask = model.encode(collate_waveforms(examples[:1], normalise=False)["input_values"])
    assert alone.shape[2] == 50 and alone_mask.all()
    torch.testing.assert_close(alone[:, 0], hidden[:, 0, :50], atol=1e-5, rtol=1e-5)


def test_whisper_reads_raw_amplitude_so_loudness_reaches_the_states():
    model = _model().eval()
    assert model.normalises_waveforms is False
    quiet = _waves((1.0,))
    loud = [{**quiet[0], "wave": quiet[0]["wave"] * 8}]
    a, _ = model.encode(collate_waveforms(quiet, normalise=False)["input_values"])
    b, _ = model.encode(collate_waveforms(loud, normalise=False)["input_values"])
    assert not torch.allclose(a, b, atol=1e-3)
    assert WavLMEmotionModel.from_config(WavLMBranchConfig(encoder="tiny", encoder_mode="finetune")).normalises_waveforms


def test_cached_hidden_states_give_the_direct_forward():
    model = _model().eval()
    examples = _waves()
    batch = collate_waveforms(examples, normalise=False)
    direct = model(**batch)
    hidden, mask = model.encode(batch["input_values"], batch["attention_mask"])
    cached = [{**e, "hidden": hidden[:, i, : int(mask[i].sum())].to(torch.float16)} for i, e in enumerate(examples)]
    out = model(**collate_hidden(cached))
    torch.testing.assert_close(out.class_logits, direct.class_logits, atol=2e-2, rtol=2e-2)  # float16 cache
    torch.testing.assert_close(out.attributes, direct.attributes, atol=2e-2, rtol=2e-2)


def test_only_layer_weights_pooling_and_heads_train():
    model = _model(head_standardize=True).train()
    assert not model.encoder.encoder.training  # the frozen encoder stays in eval mode
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer_weights", "pooling", "heads"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = collate_waveforms(_waves(), normalise=False)
    out = model(**batch)
    loss = torch.nn.functional.cross_entropy(out.class_logits, batch["label"]) + out.attributes.mean()
    loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("heads.") for n in changed) and "layer_weights.logits" in changed
    assert not any(n.startswith("encoder.") for n in changed)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is needed for the demo corpus")
def test_smol_recipe_trains_with_the_cache_and_reloads(tmp_path):
    """The shipped recipe with the real Whisper tiny.en: features cached once, a few steps, from_pretrained."""
    from llmser.data.demo_corpus import DemoCorpusConfig, make_demo_corpus
    from llmser.training.run import run

    corpus = tmp_path / "corpus"
    make_demo_corpus(corpus, DemoCorpusConfig(n=24, seed=2, n_speakers=6, workers=2), progress=False)
    out = tmp_path / "run"
    overrides = [f"data.corpus={corpus}", f"train.output_dir={out}", "train.max_steps=4", "train.eval_every=2",
                 "train.save_every=2", f"data.cache_dir={tmp_path / 'cache'}", "model.window_seconds=8"]
    result = run(ROOT / "adapters/wavlm_smol.yaml", overrides)
    assert result["step"] == 4 and "macro_f1" in result["test"]["metrics"]
    assert not (out / "best" / "encoder").exists()  # the frozen pretrained encoder is not copied
    model = WavLMEmotionModel.from_pretrained(out / "best").eval()
    assert isinstance(model.encoder, WhisperSpeechEncoder) and model.encoder.seconds == 8
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 24
