"""``llmser import-salmonn``: a checkpoint laid out as SALMONN releases it, at tiny sizes, becomes a working model.

The fixture is written from SALMONN's own model code (github.com/bytedance/SALMONN, branch ``salmonn``:
``models/salmonn.py``, ``models/Qformer.py``, ``runner.py``), not from llmser's names: runner.py saves
``{"model": state_dict minus frozen parameters, "config": ..., "optimizer": ..., "epoch": ...}`` with
``torch.save``; the state dict keeps SALMONN's module paths (``speech_Qformer.bert...`` of a BERT
``BertLMHeadModel`` whose word/position embeddings and text FFN were set to None, ``speech_query_tokens``,
``ln_speech``, ``ln_audio``, ``speech_llama_proj``, and peft's LoRA inside ``llama_model`` with adapter
name ``default``) and buffers of frozen modules (``position_ids``, LLaMA's ``rotary_emb.inv_freq``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from llmser.cli import main
from llmser.models.llm.loading import TINY_LLAMA
from llmser.models.whisper.loading import TINY_WHISPER


def salmonn_release_state(*, whisper: int, beats: int = 0, qformer: int = 32, ffn: int = 48, layers: int = 2,
                          queries: int = 1, rank: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """SALMONN's checkpoint "model" dict for a Whisper of width ``whisper`` (+ BEATs ``beats``) and the tiny LLaMA."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen) * 0.2  # noqa: E731
    state: dict[str, torch.Tensor] = {"speech_query_tokens": rand(1, queries, qformer)}
    bert = "speech_Qformer.bert."
    state[bert + "embeddings.position_ids"] = torch.arange(512)[None]  # a buffer: kept by runner.py
    state[bert + "embeddings.LayerNorm.weight"], state[bert + "embeddings.LayerNorm.bias"] = 1 + rand(qformer), rand(qformer)
    width = whisper + beats  # encoder_width: Whisper's d_model (+ BEATs' encoder_embed_dim)
    for n in range(layers):  # cross_attention_freq = 1: cross-attention in every layer
        layer = f"{bert}encoder.layer.{n}."
        for block, kv_width in (("attention", qformer), ("crossattention", width)):
            state[f"{layer}{block}.self.query.weight"], state[f"{layer}{block}.self.query.bias"] = \
                rand(qformer, qformer), rand(qformer)
            for proj in ("key", "value"):
                state[f"{layer}{block}.self.{proj}.weight"] = rand(qformer, kv_width)
                state[f"{layer}{block}.self.{proj}.bias"] = rand(qformer)
            state[f"{layer}{block}.output.dense.weight"] = rand(qformer, qformer)
            state[f"{layer}{block}.output.dense.bias"] = rand(qformer)
            state[f"{layer}{block}.output.LayerNorm.weight"] = 1 + rand(qformer)
            state[f"{layer}{block}.output.LayerNorm.bias"] = rand(qformer)
        state[f"{layer}intermediate_query.dense.weight"] = rand(ffn, qformer)
        state[f"{layer}intermediate_query.dense.bias"] = rand(ffn)
        state[f"{layer}output_query.dense.weight"], state[f"{layer}output_query.dense.bias"] = rand(qformer, ffn), rand(qformer)
        state[f"{layer}output_query.LayerNorm.weight"] = 1 + rand(qformer)
        state[f"{layer}output_query.LayerNorm.bias"] = rand(qformer)
    state["ln_speech.weight"], state["ln_speech.bias"] = 1 + rand(whisper), rand(whisper)
    if beats:
        state["ln_audio.weight"], state["ln_audio.bias"] = 1 + rand(beats), rand(beats)
    hidden = TINY_LLAMA["hidden_size"]
    state["speech_llama_proj.weight"], state["speech_llama_proj.bias"] = rand(hidden, qformer), rand(hidden)
    head_dim = hidden // TINY_LLAMA["num_attention_heads"]
    out = {"q_proj": hidden, "v_proj": TINY_LLAMA["num_key_value_heads"] * head_dim}
    for n in range(TINY_LLAMA["num_hidden_layers"]):  # peft's default LLaMA targets: q_proj, v_proj
        attn = f"llama_model.base_model.model.model.layers.{n}.self_attn."
        for proj, size in out.items():
            state[f"{attn}{proj}.lora_A.default.weight"] = rand(rank, hidden)
            state[f"{attn}{proj}.lora_B.default.weight"] = rand(size, rank)
        state[f"{attn}rotary_emb.inv_freq"] = torch.rand(head_dim // 2, generator=gen)  # a frozen buffer
    return state


def _save_release(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """As SALMONN's runner.save_checkpoint writes it."""
    settings = {"lora": True, "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.1, "second_per_window": 0.333333,
                "second_stride": 0.333333, "prompt_template": "USER: {}\nASSISTANT:"}
    torch.save({"model": state, "config": {"model": settings, "run": {"epoch_based": False}},
                "optimizer": {"state": {}, "param_groups": [{"lr": 3e-5, "params": [0, 1]}]}, "scaler": None,
                "epoch": 3}, path)
    return path


def _import(tmp_path: Path, checkpoint: Path, *extra: str) -> int:
    return main(["import-salmonn", str(checkpoint), "--out", str(tmp_path / "imported"), "--llm", "tiny",
                 "--whisper", "tiny", "--dtype", "float32", *extra])


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("salmonn")
    state = salmonn_release_state(whisper=TINY_WHISPER["d_model"])
    assert _import(tmp, _save_release(tmp / "checkpoint_best.pth", state)) == 0
    return {"dir": tmp / "imported", "state": state}


def test_import_writes_a_safetensors_folder_that_loads_with_every_tensor(imported):
    from llmser.models.audio_llm.model import AudioLLMEmotionModel
    from llmser.utils.weights import pickle_files

    folder, state = imported["dir"], imported["state"]
    assert not pickle_files(folder)
    assert {"speech_modules.safetensors", "adapter_model.safetensors", "adapter_config.json",
            "llmser_config.json"} <= {p.name for p in folder.iterdir()}
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 16 and sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]

    model = AudioLLMEmotionModel.from_pretrained(folder).eval()
    assert model.config.partial_window == "drop" and model.config.qformer_hidden == 32
    assert model.config.qformer_intermediate == 48 and model.config.qformer_layers == 2
    torch.testing.assert_close(model.speech.queries.data, state["speech_query_tokens"])
    layer = model.speech.qformer.encoder.layer[1]
    torch.testing.assert_close(layer.crossattention.attention.key.weight.data,
                               state["speech_Qformer.bert.encoder.layer.1.crossattention.self.key.weight"])
    torch.testing.assert_close(layer.output_query.dense.weight.data,
                               state["speech_Qformer.bert.encoder.layer.1.output_query.dense.weight"])
    torch.testing.assert_close(model.speech.qformer.layernorm.weight.data,
                               state["speech_Qformer.bert.embeddings.LayerNorm.weight"])
    torch.testing.assert_close(model.speech.ln_speech.bias.data, state["ln_speech.bias"])
    torch.testing.assert_close(model.speech.projection.weight.data, state["speech_llama_proj.weight"])
    lora = dict(model.llm.named_parameters())
    torch.testing.assert_close(lora["base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight"],
                               state["llama_model.base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight"])


def test_imported_model_predicts_a_wav_through_salmonns_prompt_and_window_count(imported, tmp_path):
    from llmser.data.msp_podcast import Utterance
    from llmser.models.audio_llm.branch import predict_data
    from llmser.models.audio_llm.model import AudioLLMEmotionModel

    model = AudioLLMEmotionModel.from_pretrained(imported["dir"]).eval()
    template = model.templates[0]
    assert template.name == "speech_salmonn"
    text = template.render(model.tokenizer)
    assert "USER: <Speech><|speech|></Speech> Recognize the emotion" in text and text.endswith("\nASSISTANT:")
    wav = tmp_path / "clip.wav"
    t = np.arange(32000) / 16000
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(3 * t))).astype(np.float32), 16000)
    utt = Utterance(file_name=wav.name, audio_path=wav, split="predict", emo_class=None, arousal=None, valence=None,
                    dominance=None, speaker="", gender="", transcript=None)
    dataset, collate = predict_data(model, None, [utt])
    batch = collate([dataset[0]])
    with torch.no_grad():
        out = model(**batch)
        _, token_mask, _ = model.speech(batch["speech_frames"], batch["frame_mask"])
    assert int(token_mask.sum()) == 5  # 100 frames, 17-frame windows: SALMONN's 5 (keeping the partial one: 6)
    probs = out.class_logits.softmax(-1)
    assert probs.shape == (1, 8) and torch.isfinite(probs).all() and out.attributes is None


def test_plain_peft_loads_the_imported_adapter(imported):
    from peft import PeftModel

    from llmser.models.llm.loading import load_causal_lm

    base = load_causal_lm("tiny", dtype="float32").model
    model = PeftModel.from_pretrained(base, str(imported["dir"]))
    got = dict(model.named_parameters())["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"]
    torch.testing.assert_close(got, imported["state"]["llama_model.base_model.model.model.layers.0.self_attn."
                                                      "q_proj.lora_A.default.weight"])


def test_a_checkpoint_that_needs_full_unpickling_is_refused(tmp_path, capsys):
    state = salmonn_release_state(whisper=TINY_WHISPER["d_model"])
    path = tmp_path / "salmonn_v1.pth"
    torch.save({"model": state, "args": argparse.Namespace(ckpt="x")}, path)
    assert _import(tmp_path, path) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "weights_only=True" in err and "argparse.Namespace" in err
    assert not (tmp_path / "imported").exists()


def test_a_beats_checkpoint_needs_drop_beats_and_then_imports_whisper_only(tmp_path, capsys):
    from llmser.models.audio_llm.model import AudioLLMEmotionModel

    width = TINY_WHISPER["d_model"]
    state = salmonn_release_state(whisper=width, beats=24)
    path = _save_release(tmp_path / "salmonn_v1.pth", state)
    assert _import(tmp_path, path) == 2
    assert "--drop-beats" in capsys.readouterr().err
    assert _import(tmp_path, path, "--drop-beats") == 0
    model = AudioLLMEmotionModel.from_pretrained(tmp_path / "imported")
    key = "speech_Qformer.bert.encoder.layer.0.crossattention.self.value.weight"
    torch.testing.assert_close(model.speech.qformer.encoder.layer[0].crossattention.attention.value.weight.data,
                               state[key][:, :width])
