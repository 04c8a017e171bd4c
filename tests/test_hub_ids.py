"""Every loader that takes a folder also takes a Hub id: the audio-LLM, the text model, predict-prompts' adapter.

The "Hub" is a folder laid out as the Hugging Face cache (``HF_HUB_OFFLINE=1``), as in test_hub.py.
"""

from __future__ import annotations

import pytest
import torch

from tests.test_hub import _populate_cache


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _randomise_lora(model):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model.eval()


def test_text_model_and_predict_prompts_adapter_load_from_a_hub_id(tmp_path, offline_cache):
    from llmser.inference.prompting import load_prompting_model
    from llmser.models.text_llm.config import TextLLMBranchConfig
    from llmser.models.text_llm.model import TextLLMEmotionModel
    from llmser.utils.hub import HubError

    torch.manual_seed(0)
    config = TextLLMBranchConfig(llm="tiny", lora_r=4, lora_alpha=8, lora_dropout=0.0, head_hidden_size=16, dropout=0.0)
    model = _randomise_lora(TextLLMEmotionModel.from_config(config))
    enc = model.tokenizer(["so happy to see you"], return_tensors="pt")
    with torch.no_grad():
        expected = model(**enc).class_logits
    _populate_cache(offline_cache, "org/llmser-text-tiny", model.save_pretrained(tmp_path / "text"))

    again = TextLLMEmotionModel.from_pretrained("org/llmser-text-tiny").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**enc).class_logits, expected)
    scorer, tokenizer, prompts = load_prompting_model(adapter="org/llmser-text-tiny")
    assert prompts == list(config.prompts) and tokenizer.get_vocab() == model.tokenizer.get_vocab()
    lora = {n: p for n, p in scorer.named_parameters() if "lora_B" in n}
    own = {n: p for n, p in model.llm.named_parameters() if "lora_B" in n}
    assert lora and all(torch.equal(lora[n], own[n]) for n in own)
    with pytest.raises(HubError, match="org/missing is not in the Hugging Face cache"):
        TextLLMEmotionModel.from_pretrained("org/missing")


def test_audio_llm_loads_from_a_hub_id(tmp_path, offline_cache):
    from llmser.models.audio_llm.config import AudioLLMBranchConfig
    from llmser.models.audio_llm.model import AudioLLMEmotionModel
    from tests.test_audio_llm import _batch

    torch.manual_seed(0)
    config = AudioLLMBranchConfig(llm="tiny", whisper="tiny", max_audio_seconds=6.0, qformer_hidden=32, lora_r=4,
                                  lora_alpha=8, lora_dropout=0.0, head_hidden_size=16, dropout=0.0)
    model = _randomise_lora(AudioLLMEmotionModel.from_config(config))
    batch = _batch(model)
    with torch.no_grad():
        expected = model(**batch)
    _populate_cache(offline_cache, "org/llmser-audio-tiny", model.save_pretrained(tmp_path / "audio"))

    again = AudioLLMEmotionModel.from_pretrained("org/llmser-audio-tiny").eval()
    with torch.no_grad():
        got = again(**batch)
    torch.testing.assert_close(got.class_logits, expected.class_logits)
    torch.testing.assert_close(got.attributes, expected.attributes)
