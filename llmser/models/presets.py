"""The one table of named models: every preset a recipe, a loader or ``llmser plan`` can name.

Modelled on litgpt's ``Config.from_name``: a preset is a short name (``llama3-8b``, ``smol``, ``tiny``) of a
kind (``llm``, ``whisper``, ``speech``, ``qformer``), the Hub id it mirrors, and its architecture written out
(copied from that Hub repo's ``config.json``, cited in ``source``), so the planner can build it on the meta
device without a download and the loaders know which Hub model a name stands for::

    from_name("llama3-8b", "llm").hub_id        # meta-llama/Meta-Llama-3-8B-Instruct
    from_name("smol", "whisper").to_hf()        # a WhisperConfig of openai/whisper-tiny.en
    resolve_config("runs/base_model")            # a local folder's config.json

``tiny`` presets have no Hub id: they are random models built locally for tests (their weights are seeded).
Presets with ``recipe=False`` are not names a recipe may write: the QLoRA paper's LLaMA-1 (kept so the planner
can be checked against published figures) and SALMONN's Whisper large-v2 (what ``import-salmonn`` reads). Importing this module is cheap: transformers is imported on use.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmser.config import ConfigError

Kind = Literal["llm", "whisper", "speech", "qformer"]


@dataclass(frozen=True)
class Preset:
    name: str  # what a recipe writes (model.llm: llama3-8b)
    kind: Kind
    hub_id: str | None  # the Hub repo the preset mirrors; None: random weights built locally
    model_type: str  # transformers model_type: llama, whisper, wavlm, blip_2_qformer
    config: dict[str, Any]
    source: str  # where the values are copied from
    published_params: int | None = None  # total parameters as published (model card / paper)
    published_note: str = ""
    aliases: tuple[str, ...] = ()
    recipe: bool = True  # a name recipes may write (else only planned or named by its Hub id)

    @property
    def model_id(self) -> str:
        """The name a trained model records for this base: the Hub id, or the preset's name when random."""
        return self.hub_id or self.name

    def to_hf(self, **overrides: Any) -> Any:
        """The transformers ``PretrainedConfig`` (imported lazily: transformers is slow to import)."""
        from transformers import AutoConfig

        return AutoConfig.for_model(self.model_type, **{**self.config, **overrides})


_LLAMA = dict(hidden_act="silu", attention_bias=False, rms_norm_eps=1e-5)

PRESETS: tuple[Preset, ...] = (
    # ---------------------------------------------------------------------------------------------- LLMs
    Preset("llama3-8b", "llm", "meta-llama/Meta-Llama-3-8B-Instruct", "llama",
           dict(_LLAMA, vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128009),
           "https://huggingface.co/meta-llama/Meta-Llama-3-8B-Instruct/blob/main/config.json",
           8_030_261_248, "model card / safetensors index: 8.03 B",
           aliases=("llama-3-8b", "meta-llama-3-8b-instruct", "meta-llama/meta-llama-3-8b")),
    Preset("smol", "llm", "HuggingFaceTB/SmolLM2-135M-Instruct", "llama",
           dict(_LLAMA, vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
                tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2),
           "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/main/config.json",
           134_515_008, "134.5 M (the demo's GGUF, dequantised, has exactly this many)",
           aliases=("smollm2-135m", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m")),
    # The vocabulary comes from the offline tokenizer it is built with (llmser.models.llm.tokenizer).
    Preset("tiny", "llm", None, "llama",
           dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=True),
           "llmser's test model: a seeded random LlamaForCausalLM"),
    # LLaMA-1 7B and 65B: the QLoRA paper's memory figures (Dettmers et al., 2023) are for them.
    Preset("llama-7b", "llm", "huggyllama/llama-7b", "llama",
           dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6,
                tie_word_embeddings=False),
           "https://huggingface.co/huggyllama/llama-7b/blob/main/config.json (LLaMA paper, Touvron et al. 2023)",
           6_738_415_616, "LLaMA paper: 6.7 B", aliases=("llama1-7b",), recipe=False),
    Preset("llama-65b", "llm", "huggyllama/llama-65b", "llama",
           dict(vocab_size=32000, hidden_size=8192, intermediate_size=22016, num_hidden_layers=80,
                num_attention_heads=64, num_key_value_heads=64, max_position_embeddings=2048, rms_norm_eps=1e-5,
                tie_word_embeddings=False),
           "https://huggingface.co/huggyllama/llama-65b/blob/main/config.json (LLaMA paper, Touvron et al. 2023)",
           65_285_660_672, "LLaMA paper: 65.2 B", aliases=("llama1-65b",), recipe=False),
    # ------------------------------------------------------------------------------------------ Whisper
    Preset("large-v3", "whisper", "openai/whisper-large-v3", "whisper",
           dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=128,
                vocab_size=51866, max_source_positions=1500, max_target_positions=448, activation_function="gelu",
                scale_embedding=False, bos_token_id=50257, eos_token_id=50257, pad_token_id=50256,
                decoder_start_token_id=50258),
           "https://huggingface.co/openai/whisper-large-v3/blob/main/config.json",
           1_543_490_560, "model card: 1550 M (encoder + decoder); encoder alone ~635 M",
           aliases=("whisper-large-v3",)),
    Preset("large-v2", "whisper", "openai/whisper-large-v2", "whisper",  # SALMONN's encoder (import-salmonn)
           dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=80,
                vocab_size=51865, max_source_positions=1500, max_target_positions=448, bos_token_id=50257,
                eos_token_id=50257, pad_token_id=50257, decoder_start_token_id=50258),
           "https://huggingface.co/openai/whisper-large-v2/blob/main/config.json",
           None, "model card: 1550 M", aliases=("whisper-large-v2",), recipe=False),
    Preset("smol", "whisper", "openai/whisper-tiny.en", "whisper",
           dict(d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6, decoder_attention_heads=6,
                encoder_ffn_dim=1536, decoder_ffn_dim=1536, num_mel_bins=80, vocab_size=51864,
                max_source_positions=1500, max_target_positions=448, bos_token_id=50257, eos_token_id=50256,
                pad_token_id=50256, decoder_start_token_id=50257),
           "https://huggingface.co/openai/whisper-tiny.en/blob/main/config.json",
           39_000_000, "Whisper paper, Table 1: 39 M (rounded)", aliases=("whisper-tiny.en", "whisper-tiny-en")),
    # Same front end (80 mels, 2 convs, stride 2) as the real models; a 6-s window so tests do not pay for 30 s.
    Preset("tiny", "whisper", None, "whisper",
           dict(d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128, decoder_layers=1,
                decoder_attention_heads=2, decoder_ffn_dim=128, num_mel_bins=80, max_source_positions=300,
                max_target_positions=64, vocab_size=256, pad_token_id=0, bos_token_id=1, eos_token_id=0,
                decoder_start_token_id=1),
           "llmser's test model: a seeded random WhisperEncoder"),
    # ----------------------------------------------------------------------------- speech SSL encoders
    Preset("wavlm-large", "speech", "microsoft/wavlm-large", "wavlm",
           dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True, conv_dim=[512] * 7,
                conv_stride=[5, 2, 2, 2, 2, 2, 2], conv_kernel=[10, 3, 3, 3, 3, 2, 2], num_conv_pos_embeddings=128,
                num_conv_pos_embedding_groups=16, num_buckets=320, max_bucket_distance=800, hidden_dropout=0.1,
                attention_dropout=0.1, activation_dropout=0.0, feat_proj_dropout=0.1, layerdrop=0.1,
                apply_spec_augment=True),
           "https://huggingface.co/microsoft/wavlm-large/blob/main/config.json",
           316_620_000, "WavLM paper / SUPERB: 316.62 M"),
    # The class of microsoft/wavlm-large, small enough to train from scratch on 2 CPU cores; the same conv
    # strides (320 samples = 20 ms per frame).
    Preset("tiny", "speech", None, "wavlm",
           dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, conv_dim=[32] * 7,
                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="layer",
                do_stable_layer_norm=True, num_buckets=32, max_bucket_distance=128, apply_spec_augment=False,
                layerdrop=0.0, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                feat_proj_dropout=0.0, final_dropout=0.0),
           "llmser's test model: a random WavLMModel", aliases=("wavlm-tiny",)),
    # --------------------------------------------------------------------------------------- Q-Former
    # The audio-LLM's window-level Q-Former (SALMONN, Tang et al. 2024): BERT-base-sized layers with
    # cross-attention to the speech encoder; encoder_hidden_size is set per plan.
    Preset("window-qformer", "qformer", None, "blip_2_qformer",
           dict(hidden_size=768, num_hidden_layers=2, num_attention_heads=12, intermediate_size=3072,
                encoder_hidden_size=1280, cross_attention_frequency=1, hidden_dropout_prob=0.1,
                attention_probs_dropout_prob=0.1),
           "SALMONN (github.com/bytedance/SALMONN): Blip2QFormer, 2 layers, 1 query per 0.33 s window",
           aliases=("qformer",)),
)


def _index() -> dict[tuple[Kind, str], Preset]:
    table: dict[tuple[Kind, str], Preset] = {}
    for preset in PRESETS:
        for key in (preset.name, *preset.aliases, *([preset.hub_id] if preset.hub_id else [])):
            if (preset.kind, key.lower()) in table:
                raise ValueError(f"preset name {key!r} ({preset.kind}) is listed twice in llmser.models.presets")
            table[(preset.kind, key.lower())] = preset
    return table


_BY_NAME = _index()


def names(kind: Kind) -> tuple[str, ...]:
    """The preset names a recipe may write for ``kind``."""
    return tuple(p.name for p in PRESETS if p.kind == kind and p.recipe)


def find(name: str, kind: Kind | None = None) -> Preset | None:
    """The preset ``name`` (a preset name, alias or Hub id, case-insensitive) stands for, or None.

    Without ``kind`` only a Hub id or an alias unique across kinds matches (``smol`` is an LLM and a Whisper).
    """
    key = str(name).strip().lower()
    if kind is not None:
        return _BY_NAME.get((kind, key))
    found = {p.name + p.kind: p for (k, n), p in _BY_NAME.items() if n == key}
    return next(iter(found.values())) if len(found) == 1 else None


def from_name(name: str, kind: Kind) -> Preset:
    """The preset, or a KeyError that lists the names of that kind (and the closest one)."""
    preset = find(name, kind)
    if preset is None:
        choices = [p.name for p in PRESETS if p.kind == kind]
        close = difflib.get_close_matches(str(name), choices, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise KeyError(f"{name!r} is not a {kind} preset; {hint}choose one of {', '.join(choices)}")
    return preset


def hub_id(name: str, kind: Kind) -> str:
    """What a trained model records as its base: the Hub id a preset name stands for (``tiny`` for the
    random preset); any other name (a Hub id, a folder) unchanged."""
    preset = find(name, kind)
    return preset.model_id if preset else name


def hub_ids(kind: Kind) -> dict[str, str]:
    """Preset name -> the Hub id it mirrors (``tiny`` -> ``tiny``), for ``kind``'s recipe presets."""
    return {p.name: p.model_id for p in PRESETS if p.kind == kind and p.recipe}


def resolve_config(name_or_path: str | Path, kind: Kind | None = None, **overrides: Any) -> Any:
    """A transformers config, downloading nothing: a local folder (or its config.json), a preset (name, alias
    or Hub id; ``kind`` tells ``smol`` the LLM from ``smol`` the Whisper), or a Hub id already in the cache."""
    from transformers import AutoConfig

    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_file() and path.name == "config.json":
        path = path.parent
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path} has no config.json; pass a model folder saved with save_pretrained "
                              f"or a preset ({', '.join(sorted({p.name for p in PRESETS}))})")
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    else:
        preset = find(name, kind)
        if preset is not None:
            config = preset.to_hf()
        else:
            try:
                config = AutoConfig.from_pretrained(name, local_files_only=True)
            except (OSError, ValueError):
                raise ConfigError(
                    f"model {name!r} is neither a local folder with config.json, nor a preset "
                    f"({', '.join(p.hub_id or p.name for p in PRESETS)}), nor in the Hugging Face cache. "
                    "The planner never downloads: pass a folder holding the model's config.json") from None
    for key, value in overrides.items():
        setattr(config, key, value)
    return config
