"""Config of the speech-SSL branch, and the ``tiny`` encoder preset used by tests and the CPU demo."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llmser.config import check_branch, check_ranges, from_dict, to_dict
from llmser.models import presets

#: A randomly initialised WavLMModel of the same class as the real one, small enough to train from scratch on
#: 2 CPU cores (the ``tiny`` speech preset of ``llmser.models.presets``).
TINY_WAVLM = presets.from_name("tiny", "speech").config
WAVLM_LARGE = presets.from_name("wavlm-large", "speech").hub_id

ENCODER_PRESETS: dict[str, dict] = {"tiny": TINY_WAVLM}

#: Pretrained Whisper encoders by preset name (the names of ``llmser.models.whisper.loading``): ``smol`` is
#: Whisper tiny.en, installed offline for the CPU demo (no package ships WavLM weights).
WHISPER_ENCODER_PRESETS: dict[str, str] = {"smol": "smol", "whisper-large-v3": "large-v3"}


def is_whisper_encoder(name: str) -> bool:
    """Whether ``encoder`` names a Whisper encoder: a preset, a Hub id with "whisper" in it, or a folder
    whose config.json says ``model_type: whisper``."""
    if name in WHISPER_ENCODER_PRESETS:
        return True
    config_file = Path(name) / "config.json"
    if config_file.is_file():
        return json.loads(config_file.read_text(encoding="utf-8")).get("model_type") == "whisper"
    return "whisper" in name.lower()


@dataclass
class WavLMBranchConfig:
    """What the WavLM branch is made of and which parts train.

    ``encoder`` is a Hub id (``microsoft/wavlm-large``, ``facebook/hubert-large-ll60k``,
    ``facebook/wav2vec2-large-robust``), a local folder, or a preset name. ``tiny`` has random weights,
    so it must train end to end (``encoder_mode: finetune``); ``frozen`` and ``lora`` are for real
    checkpoints. ``smol`` is Whisper tiny.en's pretrained encoder (the CPU preset), used frozen: the
    layer weighting, pooling and heads train on its cached hidden states (see ``whisper_encoder.py``).
    """

    encoder: str = field(default=WAVLM_LARGE, metadata={"help": "speech encoder: a Hub id (microsoft/wavlm-large ...), a local folder, or a preset (tiny: random WavLM; smol: Whisper tiny.en, frozen)", "presets": (*ENCODER_PRESETS, *WHISPER_ENCODER_PRESETS)})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the encoder"})
    encoder_mode: Literal["frozen", "finetune", "lora"] = field(default="frozen", metadata={"help": "frozen (features cached), finetune (all of it trains) or lora"})
    freeze_feature_extractor: bool = field(default=True, metadata={"help": "the CNN front end stays frozen when the transformer trains"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (encoder_mode: lora)", "min": 1})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)", "gt": 0})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input", "min": 0, "lt": 1})
    # WavLM's attention calls F.multi_head_attention_forward with the raw q/k/v weights, bypassing the
    # Linear modules, so LoRA there would silently do nothing; the feed-forward layers are real modules
    # in WavLM, HuBERT and wav2vec 2.0 alike.
    lora_target_modules: list[str] = field(default_factory=lambda: ["intermediate_dense", "output_dense"], metadata={"help": "encoder modules that get LoRA (WavLM's feed-forward layers; its attention bypasses Linear modules)"})
    window_seconds: float | None = field(default=None, metadata={"help": "Whisper encoders: crop the 30-s input window to this many whole seconds (faster; None pads every clip to 30 s as Whisper was trained)"})
    layer_weighting: bool = field(default=True, metadata={"help": "learned weighted sum over the encoder's hidden layers (else the last layer)"})
    pooling_attention_size: int = field(default=128, metadata={"help": "hidden size of the attentive statistics pooling", "min": 1})
    head_hidden_size: int = field(default=256, metadata={"help": "hidden size of the heads", "min": 1})
    head_standardize: bool = field(default=False, metadata={"help": "per-feature running standardisation of the pooled embedding before the heads (FeatureStandardizer)"})
    dropout: float = field(default=0.2, metadata={"help": "dropout of the heads", "min": 0, "lt": 1})
    class_head: bool = field(default=True, metadata={"help": "predict the 8 classes (task 1)"})
    attribute_head: bool = field(default=True, metadata={"help": "predict arousal, valence, dominance (task 2)"})

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.is_preset and self.encoder_mode != "finetune":
            raise ValueError(
                f"encoder {self.encoder!r} is a randomly initialised preset; set encoder_mode: finetune "
                "(frozen/lora need a pretrained checkpoint: a Hub id or a folder saved with save_pretrained)")
        if self.is_whisper and self.encoder_mode != "frozen":
            raise ValueError(
                f"encoder {self.encoder!r} is a Whisper encoder, which this branch uses frozen only; set "
                "encoder_mode: frozen (the audio-LLM branch is where Whisper's states feed a trained model)")
        if self.window_seconds is not None and not self.is_whisper:
            raise ValueError(f"window_seconds applies to Whisper encoders only, not {self.encoder!r}; remove it")
        if not (self.class_head or self.attribute_head):
            raise ValueError("enable at least one of class_head / attribute_head")

    @property
    def is_preset(self) -> bool:
        """A randomly initialised preset (``tiny``): its weights are saved with the model."""
        return self.encoder in ENCODER_PRESETS

    @property
    def is_whisper(self) -> bool:
        return is_whisper_encoder(self.encoder)

    def save(self, directory: str | Path) -> None:
        from llmser.utils.io import atomic_write_json

        atomic_write_json(Path(directory) / "config.json", {"branch": "wavlm", **to_dict(self)})

    @classmethod
    def load(cls, directory: str | Path) -> WavLMBranchConfig:
        check_branch(directory, "wavlm", "a WavLM-branch model")
        data = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
        data.pop("branch", None)
        return from_dict(cls, data, source=str(Path(directory) / "config.json"))
