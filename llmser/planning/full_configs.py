"""The configs of the full-size models llmser is designed for, written out so no download is needed.

``llmser plan`` builds these models on the ``meta`` device (shapes, no storage) to count their
parameters and size their memory. Each entry mirrors a public ``config.json`` on the Hugging Face Hub
and cites it; only the fields that set a shape (and a few that set behaviour) are copied, the rest
are the transformers defaults, which match those files.

``resolve_config`` turns what a recipe names into a transformers config, in this order:

1. a local folder holding ``config.json`` (or the path of a ``config.json``),
2. a name below (Hub id or short alias, case-insensitive), or a WavLM-branch preset (``tiny``),
3. a Hub id already in the local Hugging Face cache (read with ``local_files_only=True``).

Anything else is an error that lists the known names: the planner never downloads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmser.config import ConfigError


@dataclass(frozen=True)
class FullConfig:
    """One model's config, the Hub file it mirrors, and its published size for cross-checks."""

    hub_id: str
    model_type: str  # transformers model_type: llama, whisper, wavlm, blip_2_qformer
    kwargs: dict[str, Any]
    source: str  # the config.json (or paper) the values are copied from
    published_params: int | None = None  # total parameters as published (model card / paper)
    published_note: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def to_hf(self) -> Any:
        """The transformers ``PretrainedConfig`` (imported lazily: transformers is slow to import)."""
        from transformers import AutoConfig

        return AutoConfig.for_model(self.model_type, **self.kwargs)


# --------------------------------------------------------------------------------------------------
# LLMs

LLAMA3_8B_INSTRUCT = FullConfig(
    hub_id="meta-llama/Meta-Llama-3-8B-Instruct",
    model_type="llama",
    kwargs=dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                rope_theta=500000.0, rms_norm_eps=1e-5, hidden_act="silu", attention_bias=False,
                tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128009),
    source="https://huggingface.co/meta-llama/Meta-Llama-3-8B-Instruct/blob/main/config.json",
    published_params=8_030_261_248,
    published_note="model card / safetensors index: 8.03 B",
    aliases=("llama3-8b", "llama-3-8b", "meta-llama-3-8b-instruct", "meta-llama/meta-llama-3-8b"),
)

SMOLLM2_135M_INSTRUCT = FullConfig(
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    model_type="llama",
    kwargs=dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                rope_theta=100000.0, rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=True,
                bos_token_id=1, eos_token_id=2, pad_token_id=2),
    source="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/main/config.json",
    published_params=134_515_008,
    published_note="134.5 M (the demo's GGUF, dequantised, has exactly this many)",
    aliases=("smollm2-135m", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m"),
)

# LLaMA-1 7B and 65B are not used by llmser; they are here because the QLoRA paper's memory figures
# (Dettmers et al., 2023) are for them, so the planner can be checked against published numbers.
LLAMA1_7B = FullConfig(
    hub_id="huggyllama/llama-7b",
    model_type="llama",
    kwargs=dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
                rms_norm_eps=1e-6, tie_word_embeddings=False),
    source="https://huggingface.co/huggyllama/llama-7b/blob/main/config.json (LLaMA paper, Touvron et al. 2023)",
    published_params=6_738_415_616,
    published_note="LLaMA paper: 6.7 B",
    aliases=("llama-7b", "llama1-7b"),
)

LLAMA1_65B = FullConfig(
    hub_id="huggyllama/llama-65b",
    model_type="llama",
    kwargs=dict(vocab_size=32000, hidden_size=8192, intermediate_size=22016, num_hidden_layers=80,
                num_attention_heads=64, num_key_value_heads=64, max_position_embeddings=2048,
                rms_norm_eps=1e-5, tie_word_embeddings=False),
    source="https://huggingface.co/huggyllama/llama-65b/blob/main/config.json (LLaMA paper, Touvron et al. 2023)",
    published_params=65_285_660_672,
    published_note="LLaMA paper: 65.2 B",
    aliases=("llama-65b", "llama1-65b"),
)

# --------------------------------------------------------------------------------------------------
# Speech encoders

WHISPER_LARGE_V3 = FullConfig(
    hub_id="openai/whisper-large-v3",
    model_type="whisper",
    kwargs=dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=128,
                vocab_size=51866, max_source_positions=1500, max_target_positions=448,
                activation_function="gelu", scale_embedding=False, bos_token_id=50257, eos_token_id=50257,
                pad_token_id=50256, decoder_start_token_id=50258),
    source="https://huggingface.co/openai/whisper-large-v3/blob/main/config.json",
    published_params=1_543_490_560,
    published_note="model card: 1550 M (encoder + decoder); encoder alone ~635 M",
    aliases=("whisper-large-v3",),
)

WHISPER_TINY_EN = FullConfig(
    hub_id="openai/whisper-tiny.en",
    model_type="whisper",
    kwargs=dict(d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6,
                decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536, num_mel_bins=80,
                vocab_size=51864, max_source_positions=1500, max_target_positions=448,
                bos_token_id=50257, eos_token_id=50256, pad_token_id=50256, decoder_start_token_id=50257),
    source="https://huggingface.co/openai/whisper-tiny.en/blob/main/config.json",
    published_params=39_000_000,
    published_note="Whisper paper, Table 1: 39 M (rounded)",
    aliases=("whisper-tiny.en", "whisper-tiny-en"),
)

WAVLM_LARGE = FullConfig(
    hub_id="microsoft/wavlm-large",
    model_type="wavlm",
    kwargs=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True,
                conv_dim=[512] * 7, conv_stride=[5, 2, 2, 2, 2, 2, 2], conv_kernel=[10, 3, 3, 3, 3, 2, 2],
                num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, num_buckets=320,
                max_bucket_distance=800, hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
                feat_proj_dropout=0.1, layerdrop=0.1, apply_spec_augment=True),
    source="https://huggingface.co/microsoft/wavlm-large/blob/main/config.json",
    published_params=316_620_000,
    published_note="WavLM paper / SUPERB: 316.62 M",
    aliases=("wavlm-large",),
)

#: The window-level Q-Former of the audio-LLM (SALMONN, Tang et al. 2024): BERT-base-sized layers
#: with cross-attention to the speech encoder. ``encoder_hidden_size`` is set per plan (1280 for
#: Whisper-large-v3, 1280 + 1024 when WavLM-large features are concatenated frame by frame).
QFORMER_WINDOW = FullConfig(
    hub_id="window-qformer",
    model_type="blip_2_qformer",
    kwargs=dict(hidden_size=768, num_hidden_layers=2, num_attention_heads=12, intermediate_size=3072,
                encoder_hidden_size=1280, cross_attention_frequency=1, hidden_dropout_prob=0.1,
                attention_probs_dropout_prob=0.1),
    source="SALMONN (github.com/bytedance/SALMONN): Blip2QFormer, 2 layers, 1 query per 0.33 s window",
    aliases=("qformer",),
)

FULL_CONFIGS: dict[str, FullConfig] = {
    cfg.hub_id: cfg
    for cfg in (LLAMA3_8B_INSTRUCT, SMOLLM2_135M_INSTRUCT, LLAMA1_7B, LLAMA1_65B, WHISPER_LARGE_V3,
                WHISPER_TINY_EN, WAVLM_LARGE, QFORMER_WINDOW)
}

_ALIASES: dict[str, str] = {}
for _cfg in FULL_CONFIGS.values():
    _ALIASES[_cfg.hub_id.lower()] = _cfg.hub_id
    for _alias in _cfg.aliases:
        _ALIASES[_alias.lower()] = _cfg.hub_id


def get_full_config(name: str) -> FullConfig | None:
    """The written-out config for a Hub id or alias (case-insensitive), or None."""
    hub_id = _ALIASES.get(name.strip().lower())
    return FULL_CONFIGS[hub_id] if hub_id else None


def resolve_config(name_or_path: str, **overrides: Any) -> Any:
    """A transformers config for a local folder / config.json, a known name, or a cached Hub id.

    ``overrides`` are set on the result (e.g. ``encoder_hidden_size`` for the Q-Former).
    """
    config = _resolve(str(name_or_path))
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _resolve(name: str) -> Any:
    from transformers import AutoConfig, WavLMConfig

    path = Path(name).expanduser()
    if path.is_file() and path.name == "config.json":
        path = path.parent
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path} has no config.json; pass a model folder saved with save_pretrained "
                              f"or one of: {', '.join(FULL_CONFIGS)}")
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    known = get_full_config(name)
    if known is not None:
        return known.to_hf()
    from llmser.models.wavlm.config import ENCODER_PRESETS

    if name in ENCODER_PRESETS:
        return WavLMConfig(**ENCODER_PRESETS[name])
    try:
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        raise ConfigError(
            f"model {name!r} is neither a local folder with config.json, nor a known full-size config "
            f"({', '.join(FULL_CONFIGS)}), nor in the Hugging Face cache. The planner never downloads: "
            "pass a folder holding the model's config.json") from None
