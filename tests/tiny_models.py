"""Tiny, randomly initialised models of every branch, built the one way the tests share.

Each branch's *model section* (what a recipe's ``model:`` holds) lives here once, sized so a forward
runs in milliseconds on a CPU; tests build configs, models and saved run folders from it instead of
repeating their own copies. Everything goes through the branch registry, as the engine does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from llmser.config import save_config
from llmser.models.registry import get_branch
from llmser.recipe import Recipe

#: Recipe ``model:`` sections of the tiny branches (random WavLM / LLaMA / Whisper presets).
SECTIONS: dict[str, dict[str, Any]] = {
    "wavlm": {"encoder": "tiny", "encoder_mode": "finetune", "head_hidden_size": 16, "dropout": 0.0},
    "text_llm": {"llm": "tiny", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "head_hidden_size": 16,
                 "dropout": 0.0},
    "audio_llm": {"llm": "tiny", "whisper": "tiny", "max_audio_seconds": 6.0, "qformer_hidden": 32, "lora_r": 4,
                  "lora_alpha": 8, "lora_dropout": 0.0, "head_hidden_size": 16, "dropout": 0.0},
    "fusion": {"streams": ["text_llm", "wavlm"], "hidden": 16, "heads": 2, "head_hidden_size": 16,
               "stream_sizes": {"wavlm": 128, "text_llm": 64}, "sequence_sizes": {"wavlm": 64}},
}


def section(branch: str, **overrides: Any) -> dict[str, Any]:
    return {**SECTIONS[branch], **overrides}


def config(branch: str, **overrides: Any) -> Any:
    """The branch's typed config for its tiny section (plus ``overrides``)."""
    return get_branch(branch).config_cls(**section(branch, **overrides))


def build(branch: str, seed: int = 0, **overrides: Any) -> Any:
    """A tiny model of ``branch`` in eval mode; LLM branches get a non-zero LoRA so round trips mean something."""
    torch.manual_seed(seed)
    model_cls = get_branch(branch).model_cls
    cfg = config(branch, **overrides)
    model = model_cls(cfg) if branch == "fusion" else model_cls.from_config(cfg)
    return with_random_lora(model)


def with_random_lora(model: Any) -> Any:
    """A non-trivial adapter (LoRA B starts at zero), so scoring and save/load checks mean something."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model.eval()


def save_run(root: Path, name: str, model: Any, branch: str, model_section: dict[str, Any] | None = None) -> Path:
    """A run folder as ``llmser train`` leaves it (``best/`` with the weights and ``recipe.yaml``)."""
    best = root / name / "best"
    model.save_pretrained(best)
    save_config(Recipe(branch=branch, model=model_section or section(branch)), best / "recipe.yaml")
    return root / name


def write_clips(folder: Path, seconds: tuple[float, ...] = (1.0, 1.25, 1.5), seed: int = 0) -> list[Path]:
    """Noise clips at 16 kHz, one per length."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, length in enumerate(seconds):
        path = folder / f"clip{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(16000 * length))).astype(np.float32), 16000)
        paths.append(path)
    return paths


def tiny_llama_folder(path: Path, *, layers: int = 1, vocab_size: int = 64, hidden_size: int = 32, seed: int = 0) -> Path:
    """A random LlamaForCausalLM saved as a base-model folder (what adapters and QLoRA load)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    heads = max(2, hidden_size // 16)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                         max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(path)
    return path
