"""Import the weights released with bytedance/SALMONN into ``AudioLLMEmotionModel`` (mapping written from its model code).

SALMONN (``models/salmonn.py`` in github.com/bytedance/SALMONN, branch ``salmonn``) is: a frozen
Whisper encoder (``openai/whisper-large-v2``, d_model 1280) and a frozen BEATs encoder (768), each
layer-normed and concatenated per frame (2048); a window-level Q-Former (a 2-layer BERT-base with
cross-attention in every layer, 768 wide, 12 heads, FFN 3072, one query per window) over windows of
``round(1500 * 0.333333 / 30) = 17`` Whisper frames with the same stride; a linear projection to
Vicuna-13B (``lmsys/vicuna-13b-v1.1``, hidden 5120) carrying peft LoRA (r 8, alpha 32, dropout 0.1 on
``q_proj``/``v_proj``). SALMONN removes the Q-Former's word/position embeddings and its text-only
feed-forward (``intermediate``/``output``), which is exactly transformers' ``Blip2QFormerModel``.

Key mapping (SALMONN checkpoint ``model`` dict -> llmser)::

    speech_Qformer.bert.embeddings.LayerNorm.*            -> speech.qformer.layernorm.*
    speech_Qformer.bert.encoder.layer.N.attention.self.*  -> speech.qformer.encoder.layer.N.attention.attention.*
    speech_Qformer.bert.encoder.layer.N.attention.output.*          (same name under speech.qformer.)
    speech_Qformer.bert.encoder.layer.N.crossattention.self.*  -> ...layer.N.crossattention.attention.*
    speech_Qformer.bert.encoder.layer.N.crossattention.output.*     (same name)
    speech_Qformer.bert.encoder.layer.N.intermediate_query.*, output_query.*   (same name)
    speech_query_tokens                                   -> speech.queries            (1, 1, 768)
    ln_speech.*                                           -> speech.ln_speech.*        (Whisper frames)
    ln_audio.*                                            -> speech.ln_second.*        (BEATs frames)
    speech_llama_proj.*                                   -> speech.projection.*       (768 -> 5120)
    llama_model.base_model.model.<path>.lora_{A,B}.default.weight
                                                          -> PEFT adapter base_model.model.<path>.lora_{A,B}.weight

Ignored: frozen encoder weights and buffers (``speech_encoder.*``, ``beats.*``, ``*.position_ids``).
Any other key is an error (a different release). Differences that remain: SALMONN always encodes a
30-s window and drops a trailing partial window (88 tokens per 30 s; llmser keeps it), its prompt
format is ``USER: <Speech><SpeechHere></Speech> ...\\nASSISTANT:`` rather than a chat template, and
llmser has no BEATs implementation: run the import with ``second_encoder`` set to a 768-wide encoder
only to fine-tune from SALMONN's Q-Former, or keep SALMONN's BEATs frames out by importing into a
Whisper-only model with ``drop_second=True`` (the Q-Former's key/value columns for BEATs are cut).

SALMONN ships ``salmonn_v1.pth`` (a pickle). llmser reads safetensors only; convert it once with
``torch.load(path, map_location="cpu", weights_only=True)["model"]`` and ``safetensors.torch.save_file``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmser.models.audio_llm.config import AudioLLMBranchConfig

SALMONN_LLM = "lmsys/vicuna-13b-v1.1"
SALMONN_WHISPER = "openai/whisper-large-v2"

_QFORMER = "speech_Qformer.bert."
_LORA = re.compile(r"^llama_model\.base_model\.model\.(.+\.lora_[AB])\.default\.weight$")
_RENAMES = [  # (SALMONN prefix, llmser prefix), first match wins
    (_QFORMER + "embeddings.LayerNorm.", "speech.qformer.layernorm."),
    (_QFORMER + "encoder.", "speech.qformer.encoder."),
    ("speech_query_tokens", "speech.queries"),
    ("ln_speech.", "speech.ln_speech."),
    ("ln_audio.", "speech.ln_second."),
    ("speech_llama_proj.", "speech.projection."),
]
_IGNORED = re.compile(r"^(speech_encoder\.|beats\.|llama_model\.(?!.*lora_))|position_ids$")


def salmonn_config(**overrides: Any) -> AudioLLMBranchConfig:
    """The ``AudioLLMBranchConfig`` of SALMONN-13B v1 (its Vicuna, Whisper, Q-Former and LoRA settings)."""
    settings = dict(llm=SALMONN_LLM, whisper=SALMONN_WHISPER, dtype="float16", max_audio_seconds=30.0,
                    window_seconds=0.333333, stride_seconds=0.333333, num_queries=1, qformer_layers=2,
                    qformer_hidden=768, qformer_heads=12, qformer_intermediate=3072, lora_r=8, lora_alpha=32,
                    lora_dropout=0.1, lora_target_modules=["q_proj", "v_proj"])
    return AudioLLMBranchConfig(**{**settings, **overrides})


@dataclass
class SalmonnWeights:
    speech: dict[str, torch.Tensor]  # llmser names under the model (speech.*)
    lora: dict[str, torch.Tensor]  # PEFT adapter names (as adapter_model.safetensors stores them)
    ignored: list[str] = field(default_factory=list)


def map_salmonn_state_dict(state: dict[str, torch.Tensor]) -> SalmonnWeights:
    """Rename a SALMONN checkpoint's tensors to llmser's names; unknown keys raise, listed all at once."""
    weights = SalmonnWeights({}, {})
    unknown = []
    for key, tensor in state.items():
        lora = _LORA.match(key)
        if lora:
            weights.lora[f"base_model.model.{lora.group(1)}.weight"] = tensor
            continue
        if _IGNORED.search(key):
            weights.ignored.append(key)
            continue
        for old, new in _RENAMES:
            if key.startswith(old):
                name = new + key[len(old):]
                weights.speech[name.replace(".attention.self.", ".attention.attention.")
                               .replace(".crossattention.self.", ".crossattention.attention.")] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} checkpoint keys have no llmser counterpart, e.g. {unknown[:5]}; "
                         "is this a SALMONN (v1) checkpoint? See llmser/models/audio_llm/salmonn.py for the mapping")
    if not weights.speech:
        raise ValueError("the checkpoint holds no SALMONN Q-Former/projection weights (speech_Qformer.*, "
                         "speech_llama_proj.*); pass the checkpoint's 'model' dict")
    return weights


def read_salmonn_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A SALMONN checkpoint converted to safetensors (see the module docstring for the one-time conversion)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: llmser reads safetensors only; convert the .pth once with "
                         "torch.load(path, map_location='cpu', weights_only=True)['model'] and "
                         "safetensors.torch.save_file")
    from llmser.utils.weights import load_safetensors

    return load_safetensors(path)


def load_salmonn_into(model: Any, state: dict[str, torch.Tensor], *, drop_second: bool = False) -> SalmonnWeights:
    """Copy SALMONN's Q-Former, queries, layer norms, projection and LoRA into ``model`` (an AudioLLMEmotionModel).

    ``drop_second`` imports into a Whisper-only model: the BEATs layer norm is skipped and the
    cross-attention key/value weights keep only their Whisper columns.
    """
    from peft import set_peft_model_state_dict

    weights = map_salmonn_state_dict(state)
    speech = dict(weights.speech)
    if drop_second:
        width = model.speech.whisper_size
        speech = {k: (v[:, :width] if re.search(r"crossattention\.attention\.(key|value)\.weight$", k) else v)
                  for k, v in speech.items() if not k.startswith("speech.ln_second.")}
    _check_shapes(model, speech)
    missing = [k for k in model.speech.state_dict() if f"speech.{k}" not in speech]
    if missing:
        raise ValueError(f"the checkpoint lacks {missing[:5]} ({len(missing)} tensors) of the Q-Former/projection")
    model.speech.load_state_dict({k[len("speech."):]: v for k, v in speech.items()})
    if weights.lora:
        result = set_peft_model_state_dict(model.llm, weights.lora)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"LoRA tensors that do not fit the model's adapter: {result.unexpected_keys[:5]}; "
                             "build the model with salmonn_config() (LoRA r 8 on q_proj, v_proj)")
    return weights


def _check_shapes(model: Any, speech: dict[str, torch.Tensor]) -> None:
    own = {f"speech.{k}": v for k, v in model.speech.state_dict().items()}
    issues = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in speech.items()
              if k in own and own[k].shape != v.shape]
    issues += [f"{k}: not in the model" for k in speech if k not in own]
    if issues:
        raise ValueError("SALMONN weights do not fit this model (build it with salmonn_config(), or pass "
                         "drop_second=True for a Whisper-only model):\n" + "\n".join(issues[:10]))
