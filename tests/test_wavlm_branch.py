"""The WavLM branch: which weights train in each encoder mode, save/load, plain-peft adapters, cache."""

from __future__ import annotations

import time

import pytest
import torch

from llmser.data.feature_cache import FeatureCache, encoder_fingerprint
from llmser.models.wavlm import WavLMBranchConfig, WavLMEmotionModel
from llmser.models.wavlm.config import ENCODER_PRESETS


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    """A tiny WavLM saved like a Hub checkpoint: what frozen and LoRA modes load in real use."""
    from transformers import WavLMConfig, WavLMModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wavlm-checkpoint")
    WavLMModel(WavLMConfig(**ENCODER_PRESETS["tiny"])).save_pretrained(path)
    return str(path)


def _batch(n=3, seconds=1.0):
    torch.manual_seed(1)
    samples = int(16000 * seconds)
    values = torch.randn(n, samples)
    mask = torch.ones(n, samples, dtype=torch.long)
    if n > 1:
        mask[1, samples // 2:] = 0
    return values, mask


def _step(model):
    values, mask = _batch()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    out = model(input_values=values, attention_mask=mask)
    (out.class_logits.logsumexp(-1).mean() + out.attributes.mean()).backward()
    optimizer.step()
    return {k for k, v in model.named_parameters() if not torch.equal(v.detach(), before[k])}


def test_preset_requires_finetune():
    with pytest.raises(ValueError, match="encoder_mode: finetune"):
        WavLMBranchConfig(encoder="tiny", encoder_mode="frozen")


def test_outputs_and_padding_invariance():
    model = WavLMEmotionModel.from_config(WavLMBranchConfig(encoder="tiny", encoder_mode="finetune", dropout=0.0)).eval()
    values, mask = _batch()
    out = model(input_values=values, attention_mask=mask)
    assert out.class_logits.shape == (3, 8) and out.attributes.shape == (3, 3)
    assert out.embedding.shape == (3, 2 * model.encoder.config.hidden_size)
    assert ((out.attributes >= 1) & (out.attributes <= 7)).all()
    # the padded example scores the same alone, unpadded
    alone = model(input_values=values[1:2, :8000], attention_mask=mask[1:2, :8000])
    torch.testing.assert_close(alone.class_logits, out.class_logits[1:2], atol=1e-4, rtol=1e-4)


def test_frozen_mode_trains_only_heads(pretrained_dir):
    model = WavLMEmotionModel.from_config(WavLMBranchConfig(encoder=pretrained_dir, encoder_mode="frozen"))
    changed = _step(model)
    assert changed and not any(k.startswith("encoder.") for k in changed)
    assert "layer_weights.logits" in changed


def test_finetune_mode_keeps_cnn_frozen(pretrained_dir):
    model = WavLMEmotionModel.from_config(WavLMBranchConfig(encoder=pretrained_dir, encoder_mode="finetune"))
    changed = _step(model)
    assert any(k.startswith("encoder.encoder.layers") for k in changed)
    assert not any(k.startswith("encoder.feature_extractor") for k in changed)


def test_lora_mode_trains_only_adapters_and_saves_plain_peft(pretrained_dir, tmp_path):
    from peft import PeftModel
    from transformers import WavLMModel

    model = WavLMEmotionModel.from_config(WavLMBranchConfig(encoder=pretrained_dir, encoder_mode="lora", lora_r=4))
    changed = _step(model)
    encoder_changed = [k for k in changed if k.startswith("encoder.")]
    assert encoder_changed and all("lora_" in k for k in encoder_changed)
    model.save_pretrained(tmp_path / "out")
    assert (tmp_path / "out/encoder_adapter/adapter_config.json").is_file()
    assert (tmp_path / "out/encoder_adapter/adapter_model.safetensors").is_file()
    assert not (tmp_path / "out/encoder").exists()  # the base stays on the Hub / in its folder
    plain = PeftModel.from_pretrained(WavLMModel.from_pretrained(pretrained_dir), str(tmp_path / "out/encoder_adapter"))
    lora_keys = [k for k in plain.state_dict() if "lora_B" in k]
    assert lora_keys and any(plain.state_dict()[k].abs().sum() > 0 for k in lora_keys)
    reloaded = WavLMEmotionModel.from_pretrained(tmp_path / "out").eval()
    values, mask = _batch()
    torch.testing.assert_close(reloaded(input_values=values, attention_mask=mask).class_logits,
                               model.eval()(input_values=values, attention_mask=mask).class_logits)


def test_lora_on_wavlm_attention_is_refused(pretrained_dir):
    config = WavLMBranchConfig(encoder=pretrained_dir, encoder_mode="lora", lora_target_modules=["q_proj", "v_proj"])
    with pytest.raises(ValueError, match="no effect on WavLM"):
        WavLMEmotionModel.from_config(config)


def test_finetuned_tiny_round_trip(tmp_path):
    model = WavLMEmotionModel.from_config(WavLMBranchConfig(encoder="tiny", encoder_mode="finetune"))
    _step(model)
    model.save_pretrained(tmp_path)
    reloaded = WavLMEmotionModel.from_pretrained(tmp_path).eval()
    values, mask = _batch()
    torch.testing.assert_close(reloaded(input_values=values, attention_mask=mask).attributes,
                               model.eval()(input_values=values, attention_mask=mask).attributes)
    assert not list(tmp_path.rglob("*.bin"))


def test_cached_hidden_states_give_the_same_outputs(pretrained_dir, tmp_path):
    import soundfile as sf

    model = WavLMEmotionModel.from_config(WavLMBranchConfig(encoder=pretrained_dir, encoder_mode="frozen")).eval()
    wav = tmp_path / "a.wav"
    values, _ = _batch(1)
    sf.write(wav, values[0].numpy() * 0.1, 16000)
    cache = FeatureCache(tmp_path / "cache", encoder_fingerprint(model.encoder), {"max_seconds": 4})
    assert cache.get(wav) is None
    hidden, mask = model.encode(values, torch.ones_like(values, dtype=torch.long))
    cache.put(wav, {"hidden": hidden[:, 0]})
    cached = cache.get(wav)["hidden"].unsqueeze(1)
    direct = model(input_values=values)
    from_cache = model(hidden_states=cached, frame_mask=mask)
    torch.testing.assert_close(direct.class_logits, from_cache.class_logits)
    # invalidation: new audio content (mtime/size), other encoder weights, other preprocessing
    old = cache.path_for(wav)
    time.sleep(0.01)
    sf.write(wav, values[0].numpy()[:8000] * 0.1, 16000)
    assert cache.path_for(wav) != old and cache.get(wav) is None
    other = WavLMEmotionModel.from_config(WavLMBranchConfig(encoder="tiny", encoder_mode="finetune"))
    assert encoder_fingerprint(other.encoder) != encoder_fingerprint(model.encoder)
    assert FeatureCache(tmp_path / "cache", "x", {"max_seconds": 8}).path_for(wav) != \
        FeatureCache(tmp_path / "cache", "x", {"max_seconds": 4}).path_for(wav)


def test_encoder_fingerprint_is_the_same_at_any_thread_count_and_sees_one_changed_weight():
    """The cache key must not depend on torch's thread count (a float sum of the weights did: OMP_NUM_THREADS=1 and
    2 gave two keys and the corpus was encoded twice), and it must still see a single changed value."""
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(2000, 2000), torch.nn.Linear(2000, 8).to(torch.bfloat16))
    threads = torch.get_num_threads()
    try:
        keys = set()
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            keys.add(encoder_fingerprint(encoder))
    finally:
        torch.set_num_threads(threads)
    assert len(keys) == 1
    with torch.no_grad():
        encoder[0].weight[1234, 567] += 1e-3  # not on any sampled stride
    assert encoder_fingerprint(encoder) not in keys
