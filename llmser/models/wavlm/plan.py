"""The speech branch's plan: what ``llmser plan`` sizes for a recipe of this branch (see ``llmser.models.plan``)."""

from __future__ import annotations

from llmser.models import presets
from llmser.models.plan import PlanSpec
from llmser.models.wavlm.config import WHISPER_ENCODER_PRESETS, WavLMBranchConfig
from llmser.recipe import Recipe

MODES = {"finetune": "full", "frozen": "frozen", "lora": "lora"}


def plan_spec(recipe: Recipe, config: WavLMBranchConfig, name: str) -> PlanSpec:
    """The encoder (a WavLM-like model, or a frozen Whisper encoder over its window) and the trained layer
    weighting, pooling and heads; the branch has no checkpointing switch, so both columns are planned."""
    if config.is_whisper:
        encoder = presets.hub_id(WHISPER_ENCODER_PRESETS.get(config.encoder, config.encoder), "whisper")
    else:
        encoder = presets.hub_id(config.encoder, "speech")
    return PlanSpec(name=name, branch="wavlm", wavlm=encoder, method=MODES[config.encoder_mode],
                    lora_r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                    lora_target_modules=list(config.lora_target_modules),
                    freeze_feature_extractor=config.freeze_feature_extractor,
                    encoder_window_seconds=config.window_seconds, layer_weighting=config.layer_weighting,
                    pooling_attention_size=config.pooling_attention_size, head_hidden_size=config.head_hidden_size,
                    batch_size=recipe.data.batch_size, audio_seconds=recipe.data.max_seconds,
                    eval_batch_size=recipe.data.eval_batch_size, eval_max_tokens=recipe.data.eval_max_tokens)
