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

SALMONN ships ``salmonn_v1.pth`` (a pickle). ``llmser import-salmonn CKPT --out DIR`` reads it once with
``torch.load(..., weights_only=True)`` (``llmser.utils.weights.load_torch_weights_only``, the one pickle
read in llmser; a file that needs full unpickling is refused) or reads a safetensors copy, and writes an
llmser audio-LLM folder (``import_salmonn``): safetensors speech modules, a standard PEFT adapter, the
config (Q-Former sizes and LoRA rank read from the tensors; LoRA alpha/dropout and the windows from the
checkpoint's ``config`` when it carries one), ``partial_window: drop`` and SALMONN's prompt layout
(``prompts/speech_salmonn.yaml``)::

    llmser import-salmonn salmonn_v1.pth --out models/salmonn-13b --drop-beats
    AudioLLMEmotionModel.from_pretrained("models/salmonn-13b")
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmser.models import presets
from llmser.models.audio_llm.config import AudioLLMBranchConfig

SALMONN_LLM = "lmsys/vicuna-13b-v1.1"
SALMONN_WHISPER = presets.from_name("large-v2", "whisper").hub_id



class SalmonnImportError(ValueError):
    """A checkpoint that does not import into this model; the message names the tensors and the fix."""


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
        raise SalmonnImportError(f"{len(unknown)} checkpoint keys have no llmser counterpart, e.g. {unknown[:5]}; "
                         "is this a SALMONN (v1) checkpoint? See llmser/models/audio_llm/salmonn.py for the mapping")
    if not weights.speech:
        raise SalmonnImportError("the checkpoint holds no SALMONN Q-Former/projection weights (speech_Qformer.*, "
                         "speech_llama_proj.*); pass the checkpoint's 'model' dict")
    return weights


@dataclass
class SalmonnCheckpoint:
    state: dict[str, torch.Tensor]  # the checkpoint's "model" dict (SALMONN's names)
    settings: dict[str, Any]  # its "config" -> "model" section (lora_alpha, second_per_window ...), if any


def read_salmonn_checkpoint(path: str | Path) -> SalmonnCheckpoint:
    """A SALMONN checkpoint: its ``.pth`` read with ``weights_only=True``, or a safetensors copy of its "model" dict."""
    from llmser.utils.weights import load_safetensors, load_torch_weights_only

    path = Path(path)
    if path.suffix == ".safetensors":
        return SalmonnCheckpoint(load_safetensors(path), {})
    loaded = load_torch_weights_only(path)
    state, settings = loaded, {}
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):  # runner.py: {"model", "config", ...}
        state = loaded["model"]
        config = loaded.get("config")
        settings = dict(config.get("model") or {}) if isinstance(config, dict) else {}
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SalmonnImportError(f"{path}: not a SALMONN checkpoint (expected a dict with a 'model' dict of tensors, as "
                         "SALMONN's runner.py saves it, or that dict itself)")
    return SalmonnCheckpoint(state, settings)


def salmonn_config_from_checkpoint(checkpoint: SalmonnCheckpoint, **overrides: Any) -> AudioLLMBranchConfig:
    """``salmonn_config()`` with the sizes this checkpoint's tensors have (so a smaller release imports too).

    The Q-Former width, query count, depth and feed-forward size, and the LoRA rank and target modules,
    are read from the tensors; LoRA alpha/dropout and the window/stride from the checkpoint's config when
    it has one (else SALMONN's defaults). The model answers through SALMONN's prompt layout, counts
    windows as SALMONN does and has no llmser-only heads (none were trained).
    """
    state, settings = checkpoint.state, checkpoint.settings
    if "speech_query_tokens" not in state:
        raise SalmonnImportError("the checkpoint has no speech_query_tokens; is it a SALMONN checkpoint?")
    _, queries, hidden = state["speech_query_tokens"].shape
    layers = {int(m.group(1)) for k in state if (m := re.match(re.escape(_QFORMER) + r"encoder\.layer\.(\d+)\.", k))}
    ffn = state.get(f"{_QFORMER}encoder.layer.0.intermediate_query.dense.weight")
    lora = {m.group(1): t for k, t in state.items() if (m := _LORA.match(k))}
    targets = sorted({k.rsplit(".", 2)[-2] for k in lora})
    ranks = {int(t.shape[0]) for k, t in lora.items() if k.endswith("lora_A")}
    if len(ranks) > 1:
        raise SalmonnImportError(f"the checkpoint's LoRA tensors have several ranks {sorted(ranks)}; llmser's adapter has one")
    found: dict[str, Any] = dict(num_queries=int(queries), qformer_hidden=int(hidden),
                                 qformer_layers=max(layers) + 1 if layers else 2,
                                 window_seconds=float(settings.get("second_per_window", 0.333333)),
                                 stride_seconds=float(settings.get("second_stride", 0.333333)),
                                 lora_alpha=int(settings.get("lora_alpha", 32)),
                                 lora_dropout=float(settings.get("lora_dropout", 0.1)),
                                 partial_window="drop", prompts=["speech_salmonn"], attribute_head=False,
                                 speech_class_head=False, calibrate=False)
    if ffn is not None:
        found["qformer_intermediate"] = int(ffn.shape[0])
    found["qformer_heads"] = max(1, int(hidden) // 64)  # BERT-base: 768 / 64 = 12 heads
    if ranks:
        found.update(lora_r=ranks.pop(), lora_target_modules=targets)
    return salmonn_config(**{**found, **overrides})


def has_beats(state: dict[str, torch.Tensor]) -> bool:
    """Whether the checkpoint was trained with BEATs frames beside Whisper's (SALMONN v1 was)."""
    return any(k.startswith("ln_audio.") for k in state)


def import_salmonn(checkpoint: str | Path, out: str | Path, *, drop_beats: bool = False,
                   **overrides: Any) -> tuple[Path, SalmonnWeights]:
    """Convert a SALMONN checkpoint into an llmser audio-LLM folder (``AudioLLMEmotionModel.from_pretrained``).

    ``overrides`` are ``AudioLLMBranchConfig`` fields (``llm``, ``whisper``, ``second_encoder``, ``dtype``
    ...). The base LLM and Whisper are loaded from ``overrides`` (default: SALMONN's Vicuna-13B v1.1 and
    whisper-large-v2) to check every shape; a checkpoint trained with BEATs needs ``second_encoder`` (a
    768-wide encoder standing in for BEATs) or ``drop_beats`` (its columns are cut from the Q-Former).
    """
    from llmser.models.audio_llm.model import AudioLLMEmotionModel

    ckpt = read_salmonn_checkpoint(checkpoint)
    beats = has_beats(ckpt.state)
    if beats and not drop_beats and not overrides.get("second_encoder"):
        raise SalmonnImportError(f"{checkpoint}: was trained with BEATs audio frames (ln_audio.*), which llmser does not "
                         "implement; pass --drop-beats to import it Whisper-only (the Q-Former's BEATs columns are "
                         "cut), or --second-encoder ID for a 768-wide encoder in BEATs' place")
    config = salmonn_config_from_checkpoint(ckpt, **overrides)
    model = AudioLLMEmotionModel.from_config(config)
    weights = load_salmonn_into(model, ckpt.state, drop_second=beats and drop_beats)
    return model.save_pretrained(out), weights


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
        raise SalmonnImportError(f"the checkpoint lacks {missing[:5]} ({len(missing)} tensors) of the Q-Former/projection")
    model.speech.load_state_dict({k[len("speech."):]: v for k, v in speech.items()})
    if weights.lora:
        result = set_peft_model_state_dict(model.llm, weights.lora)
        if getattr(result, "unexpected_keys", None):
            raise SalmonnImportError(f"LoRA tensors that do not fit the model's adapter: {result.unexpected_keys[:5]}; "
                             "build the model with salmonn_config() (LoRA r 8 on q_proj, v_proj)")
        missing_lora = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
        if missing_lora:
            raise SalmonnImportError(f"the checkpoint lacks {len(missing_lora)} LoRA tensors of the model's adapter, e.g. "
                             f"{missing_lora[:3]}; build the model with salmonn_config_from_checkpoint()")
    return weights


def _check_shapes(model: Any, speech: dict[str, torch.Tensor]) -> None:
    own = {f"speech.{k}": v for k, v in model.speech.state_dict().items()}
    issues = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in speech.items()
              if k in own and own[k].shape != v.shape]
    issues += [f"{k}: not in the model" for k in speech if k not in own]
    if issues:
        raise SalmonnImportError("SALMONN weights do not fit this model (build it with salmonn_config(), or pass "
                         "drop_second=True for a Whisper-only model):\n" + "\n".join(issues[:10]))
