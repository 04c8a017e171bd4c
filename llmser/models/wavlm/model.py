"""The speech-SSL emotion model: encoder -> layer-weighted sum -> attentive statistics pooling -> heads.

Three ways to train the encoder, chosen by ``WavLMBranchConfig.encoder_mode``:

- ``frozen``: only the layer weights, pooling and heads train; the encoder's hidden states can be
  cached on disk once per file (``llmser.data.feature_cache``) so later epochs skip it.
- ``finetune``: the transformer layers train too (the CNN front end stays frozen by default).
- ``lora``: peft LoRA adapters on the encoder's attention projections.

The pooled embedding is exposed (``EmotionOutput.embedding``) for the fusion adapter.

Saved layout (``save_pretrained``): ``config.json``, ``model.safetensors`` (layer weights, pooling,
heads), plus ``encoder/`` (transformers format) when the encoder weights trained or were random, or
``encoder_adapter/`` (standard PEFT adapter) in LoRA mode.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from llmser.models import presets
from llmser.models.layers import AttentiveStatisticsPooling, EmotionHeads, EmotionOutput, LayerWeightedSum
from llmser.models.wavlm.config import ENCODER_PRESETS, WHISPER_ENCODER_PRESETS, WavLMBranchConfig
from llmser.utils.logging import get_logger

logger = get_logger(__name__)

WEIGHTS_NAME = "model.safetensors"
ENCODER_DIR = "encoder"
ADAPTER_DIR = "encoder_adapter"


def build_encoder(config: WavLMBranchConfig, encoder_path: str | Path | None = None) -> nn.Module:
    """Load (or, for a preset, randomly initialise) the SSL encoder with ``AutoModel``; a Whisper
    encoder is wrapped in :class:`WhisperSpeechEncoder` (log-mel front end, real-audio frames only)."""
    from transformers import AutoModel, WavLMConfig, WavLMModel

    if config.is_whisper:
        from llmser.models.wavlm.whisper_encoder import WhisperSpeechEncoder

        name = WHISPER_ENCODER_PRESETS.get(config.encoder, config.encoder)
        return WhisperSpeechEncoder.load(name, revision=config.revision, window_seconds=config.window_seconds)
    if encoder_path is None and config.is_preset:
        return WavLMModel(WavLMConfig(**ENCODER_PRESETS[config.encoder]))
    if encoder_path is not None:
        return _load_saved_encoder(Path(encoder_path))
    # use_safetensors: llmser never unpickles weights. For a Hub repo without safetensors, pass the
    # revision of its safetensors conversion PR (e.g. revision: refs/pr/N) or convert it locally.
    name = presets.hub_id(str(config.encoder), "speech")  # wavlm-large -> microsoft/wavlm-large
    return AutoModel.from_pretrained(name, revision=config.revision, use_safetensors=True)


def _load_saved_encoder(folder: Path) -> nn.Module:
    """An encoder llmser saved (``encoder/``): every tensor must be in the file, finite and of its shape;
    ``from_pretrained`` alone would initialise a missing one at random with only a log line."""
    from transformers import AutoModel

    from llmser.utils.weights import WeightsError, nonfinite_tensors

    try:
        encoder, info = AutoModel.from_pretrained(str(folder), use_safetensors=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{folder}: the saved encoder cannot be loaded ({str(exc).splitlines()[0]}); save or "
                           "download the model folder again") from None
    problems = [f"{kind.replace('_', ' ')}: {sorted(map(str, keys))[:5]}" for kind, keys in info.items()
                if kind in ("missing_keys", "unexpected_keys", "mismatched_keys") and keys]
    bad = nonfinite_tensors(encoder.state_dict())
    if bad:
        problems.append(f"NaN or infinite values in {bad[:5]}")
    if problems:
        raise WeightsError(f"{folder} does not hold a complete encoder ({'; '.join(problems)}); llmser will not fill "
                           "the gaps with random weights. Save or download the model folder again")
    return encoder


_BYPASSED_ATTENTION_PROJECTIONS = {"q_proj", "k_proj", "v_proj", "out_proj"}


def _check_lora_targets(encoder: nn.Module, targets: list[str]) -> None:
    """Refuse LoRA targets that WavLM never calls as modules (its attention uses their raw weights)."""
    if encoder.config.model_type != "wavlm":
        return
    bypassed = sorted(set(targets) & _BYPASSED_ATTENTION_PROJECTIONS)
    if bypassed:
        raise ValueError(
            f"lora_target_modules {bypassed} would have no effect on WavLM: its attention passes the q/k/v/out "
            "weights to F.multi_head_attention_forward instead of calling the Linear modules. Target the "
            "feed-forward layers instead: lora_target_modules: [intermediate_dense, output_dense]")


class WavLMEmotionModel(nn.Module):
    """WavLM-branch classifier/regressor. Build with ``from_config``; reload with ``from_pretrained``."""

    def __init__(self, config: WavLMBranchConfig, encoder: nn.Module):
        super().__init__()
        self.config = config
        hidden = encoder.config.hidden_size
        num_layers = encoder.config.num_hidden_layers + 1  # + the embedding output
        self.encoder = encoder
        self.layer_weights = LayerWeightedSum(num_layers) if config.layer_weighting else None
        self.pooling = AttentiveStatisticsPooling(hidden, config.pooling_attention_size)
        self.heads = EmotionHeads(self.pooling.output_size, config.head_hidden_size, config.dropout,
                                  classes=config.class_head, attributes=config.attribute_head,
                                  standardize_inputs=config.head_standardize)
        self._set_encoder_trainability()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, config: WavLMBranchConfig) -> WavLMEmotionModel:
        model = cls(config, build_encoder(config))
        if config.encoder_mode == "lora":
            model._wrap_encoder_with_lora()
        return model

    def _wrap_encoder_with_lora(self, adapter_dir: Path | None = None) -> None:
        from peft import LoraConfig, PeftModel, get_peft_model

        _check_lora_targets(self.encoder, self.config.lora_target_modules)
        if adapter_dir is not None:
            from llmser.models.llm.adapter import adapter_state

            self.encoder = PeftModel.from_pretrained(self.encoder, str(adapter_dir), is_trainable=True)
            adapter_state(self.encoder, adapter_dir)  # every LoRA tensor present, of its shape, finite
        else:
            lora = LoraConfig(r=self.config.lora_r, lora_alpha=self.config.lora_alpha,
                              lora_dropout=self.config.lora_dropout,
                              target_modules=list(self.config.lora_target_modules))
            self.encoder = get_peft_model(self.encoder, lora)

    def _set_encoder_trainability(self) -> None:
        mode = self.config.encoder_mode
        for param in self.encoder.parameters():
            param.requires_grad = mode == "finetune"
        if mode == "finetune" and self.config.freeze_feature_extractor:
            self.encoder.freeze_feature_encoder()

    @property
    def encoder_is_frozen(self) -> bool:
        return self.config.encoder_mode == "frozen"

    @property
    def normalises_waveforms(self) -> bool:
        """WavLM/HuBERT/wav2vec2 read unit-variance waves; Whisper's log-mel front end reads raw amplitude."""
        return not self.config.is_whisper

    def train(self, mode: bool = True) -> WavLMEmotionModel:
        super().train(mode)
        if self.encoder_is_frozen:
            self.encoder.eval()  # a frozen encoder keeps dropout off, so cached features stay valid
        return self

    # ------------------------------------------------------------------ forward

    def frame_mask(self, attention_mask: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Sample-level mask (B, S) -> frame-level mask (B, T) after the CNN front end."""
        base = self._base_encoder()
        lengths = base._get_feat_extract_output_lengths(attention_mask.sum(-1)).long()
        return torch.arange(num_frames, device=lengths.device)[None, :] < lengths[:, None]

    def encode(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms (B, S) -> all hidden states (L, B, T, H) and the frame mask (B, T)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_values, dtype=torch.long)
        context = torch.no_grad() if self.encoder_is_frozen else torch.enable_grad()
        with context:
            out = self.encoder(input_values=input_values, attention_mask=attention_mask,
                               output_hidden_states=True)
        hidden = torch.stack(out.hidden_states, dim=0)  # (L, B, T, H)
        return hidden, self.frame_mask(attention_mask, hidden.shape[2])

    def forward_hidden(self, hidden_states: torch.Tensor, frame_mask: torch.Tensor) -> EmotionOutput:
        """Heads on precomputed hidden states (L, B, T, H): the path cached features take."""
        if self.layer_weights is not None:
            frames = self.layer_weights(hidden_states)
        else:
            frames = hidden_states[-1]
        embedding = self.pooling(frames, frame_mask)
        logits, attributes = self.heads(embedding)
        return EmotionOutput(class_logits=logits, attributes=attributes, embedding=self.heads.standardized(embedding))

    def forward(self, input_values: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                hidden_states: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None,
                **_: object) -> EmotionOutput:
        if hidden_states is None:
            if input_values is None:
                raise ValueError("pass input_values (waveforms) or cached hidden_states")
            hidden_states, frame_mask = self.encode(input_values, attention_mask)
        elif frame_mask is None:
            raise ValueError("cached hidden_states need their frame_mask")
        return self.forward_hidden(hidden_states, frame_mask)

    @property
    def min_samples(self) -> int:
        """Samples the encoder's convolutions need for one frame (400 = 25 ms for WavLM/HuBERT/wav2vec 2.0):
        a shorter clip has no frame to pool, so it is refused (and skipped by the predictor) instead."""
        kernels = getattr(self.encoder.config, "conv_kernel", None) or [1]
        strides = getattr(self.encoder.config, "conv_stride", None) or [1] * len(kernels)
        field, jump = 1, 1
        for kernel, stride in zip(kernels, strides):
            field += (kernel - 1) * jump
            jump *= stride
        return field

    # ------------------------------------------------------------------ save / load

    def _base_encoder(self) -> nn.Module:
        return self.encoder.get_base_model() if hasattr(self.encoder, "get_base_model") else self.encoder

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    def save_pretrained(self, directory: str | Path) -> Path:
        from llmser.utils.weights import save_safetensors

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory)
        save_safetensors(self.head_state_dict(), directory / WEIGHTS_NAME)
        if self.config.encoder_mode == "lora":
            self.encoder.save_pretrained(str(directory / ADAPTER_DIR))
        elif self.config.encoder_mode == "finetune" or self.config.is_preset:
            self.encoder.save_pretrained(str(directory / ENCODER_DIR), safe_serialization=True)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, revision: str | None = None) -> WavLMEmotionModel:
        """Rebuild from a folder saved by ``save_pretrained`` or a Hub id (offline from the HF cache too)."""
        from llmser.config import check_branch
        from llmser.utils.hub import resolve_pretrained
        from llmser.utils.weights import WeightsError, load_state_checked

        directory = resolve_pretrained(directory, revision)
        check_branch(directory, "wavlm", "a WavLM-branch model")
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"{directory} has no config.json; is it a folder saved by "
                                    "WavLMEmotionModel.save_pretrained?")
        config = WavLMBranchConfig.load(directory)
        encoder_dir = directory / ENCODER_DIR
        if not encoder_dir.is_dir() and (config.encoder_mode == "finetune" or config.is_preset):
            raise WeightsError(f"{encoder_dir} is missing: this model's encoder was trained ({config.encoder_mode} of "
                               f"{config.encoder!r}), so its weights are only there; llmser will not replace them "
                               "with the untrained ones. Copy the whole model folder again")
        encoder = build_encoder(config, encoder_dir if encoder_dir.is_dir() else None)
        model = cls(config, encoder)
        if config.encoder_mode == "lora":
            model._wrap_encoder_with_lora(directory / ADAPTER_DIR)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing; the folder is incomplete")
        load_state_checked(model, weights, optional=("encoder.",))  # the encoder came from encoder/ or its source
        return model
