"""The audio-LLM's plan: what ``llmser plan`` sizes for a recipe of this branch (see ``llmser.models.plan``)."""

from __future__ import annotations

from llmser.models import presets
from llmser.models.audio_llm.config import AudioLLMBranchConfig
from llmser.models.plan import PROMPT_TOKENS, PlanSpec, llm_fields, pretrained
from llmser.recipe import Recipe


def plan_spec(recipe: Recipe, config: AudioLLMBranchConfig, name: str) -> PlanSpec:
    """Whisper (and an optional second encoder) frozen over their window, the window Q-Former at the config's
    sizes (its defaults derived from Whisper's width, as the model builds it), the prompt around the speech."""
    whisper = pretrained(config.whisper, "whisper", "model.whisper")
    second = presets.hub_id(config.second_encoder, "speech") if config.second_encoder else None
    whisper_config = presets.resolve_config(whisper, "whisper")
    hidden = config.qformer_hidden or whisper_config.d_model
    # encoder_layers: all caches and reads every hidden state (embedding output + each layer) side by side
    states = whisper_config.encoder_layers + 1 if config.encoder_layers == "all" else 1
    text = PROMPT_TOKENS + (config.max_transcript_tokens if config.inputs == "speech+transcript" else 0)
    return PlanSpec(name=name, branch="audio_llm", **llm_fields(recipe, config), whisper=whisper, wavlm=second,
                    qformer_layers=config.qformer_layers, qformer_hidden_size=hidden,
                    qformer_heads=config.qformer_heads or max(1, hidden // 64),
                    qformer_intermediate=config.qformer_intermediate or 4 * hidden,
                    window_seconds=config.window_seconds, queries_per_window=config.num_queries,
                    encoder_window_seconds=config.encoder_window_seconds, seq_len=text,
                    llm_mode="head" if config.mode == "head" else "answer", encoder_hidden_states=states,
                    head_hidden_size=config.head_hidden_size, pooling_attention_size=config.pooling_attention_size,
                    ridge_readout=config.attribute_readout == "ridge",
                    freeze_speech_head=config.mode == "head" and config.freeze_speech_head,
                    audio_seconds=min(recipe.data.max_seconds, config.max_audio_seconds))
