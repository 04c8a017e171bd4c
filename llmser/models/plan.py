"""What a branch asks ``llmser plan`` to size: ``PlanSpec``, filled by each branch's own ``plan.py`` from its typed
config (registered with the branch, ``BranchSpec.plan``), so the planner never re-reads recipe keys itself.

The LLM branches share :func:`llm_fields` (base model, quantisation, LoRA from ``LLMConfig.lora_config()``,
evaluation and voting sizes); each branch adds what only it knows (the text prompt, the audio encoders).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from llmser.config import ConfigError
from llmser.models import presets
from llmser.recipe import Recipe

#: How the main body trains (llmser.planning.memory.METHODS describes each).
METHOD_NAMES = ("full", "lora", "qlora", "lora-8bit", "frozen")
BRANCH_METHODS: dict[str, list[str]] = {
    "text_llm": ["full", "lora", "qlora"],
    "audio_llm": ["full", "lora", "qlora"],
    # 4-bit Linear layers cannot stand in for WavLM's attention projections (it passes their raw
    # weights to F.multi_head_attention_forward), so QLoRA is not offered for the WavLM branch.
    "wavlm": ["frozen", "full", "lora"],
}
#: Tokens of a prompt around its transcript (system turn, instruction, label list, chat tail): the shipped
#: variants are 150-550 characters, ~150 LLaMA-3 tokens with the chat template.
PROMPT_TOKENS = 160
INSTRUCTION_TOKENS = 140  # of which before the transcript: cached once per variant when voting
GENERATION_TOKENS = 8  # new tokens of a free answer (llmser.models.llm.generation.generate_answers' default)


@dataclass
class PlanSpec:
    """What to plan: a branch's models, how its body trains, and the workload per process."""

    name: str
    branch: Literal["text_llm", "audio_llm", "wavlm"]
    llm: str | None = None  # text_llm / audio_llm: the LLM
    whisper: str | None = None  # audio_llm: the (frozen) Whisper encoder
    wavlm: str | None = None  # wavlm: the encoder; audio_llm: optional frozen second encoder
    method: str = "lora"  # the recipe's choice, marked with * in the table
    lora_r: int = 8  # hand-made specs only: a recipe's plan reads its branch's config
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "v_proj"])
    lora_layers: list[int] | None = None  # layers that get LoRA (lora_top_layers); None: all
    qformer_layers: int = 2
    qformer_hidden_size: int = 768
    qformer_heads: int = 12
    qformer_intermediate: int = 3072
    window_seconds: float = 1 / 3  # SALMONN: one window per 0.33 s (17 Whisper frames)
    queries_per_window: int = 1
    trim_audio_padding: bool = False  # False: windows cover Whisper's whole 30-s padded input (SALMONN)
    freeze_feature_extractor: bool = True  # wavlm full fine-tuning keeps the CNN front end frozen
    encoder_window_seconds: float | None = None  # Whisper's input window when cropped below 30 s (None: 30 s)
    layer_weighting: bool = True
    pooling_attention_size: int = 128
    ridge_readout: bool = False  # audio_llm head mode, attribute_readout: ridge (no speech attribute MLP to train)
    freeze_speech_head: bool = False  # audio_llm head mode: the speech head, pooling, layer weights train in stage 1 only
    # The ridge readout's closed-form fit (host memory) reads every train and dev clip at once. An assumption of
    # MSP-Podcast's scale unless the user gives theirs (llmser plan --train-clips / --dev-clips).
    train_clips: int = 85_000
    dev_clips: int = 30_000
    head_hidden_size: int = 256
    batch_size: int = 8  # per process
    seq_len: int = 512  # text tokens per example (prompt + answer)
    audio_seconds: float = 15.0  # per example
    gradient_checkpointing: bool | None = None  # None: estimate both
    # Phases other than the training step (LLM branches): evaluation, voting / label scoring, generation
    llm_mode: Literal["head", "sft", "answer"] = "head"  # head: heads read the last hidden state (no logits);
    # sft: LM loss; answer (the audio-LLM's answer-token route): logits, loss on the answer tokens
    encoder_hidden_states: int = 1  # audio_llm: Whisper hidden states per frame (encoder_layers: all -> layers + 1)
    eval_batch_size: int = 16  # data.eval_batch_size: files per evaluation / voting forward
    eval_max_tokens: int | None = None  # data.eval_max_tokens: rows x padded tokens of one such forward
    vote_variants: int = 5  # prompt variants that vote (K rows per file)
    prefix_tokens: int = 0  # the instruction before the transcript, cached once per variant when voting
    answer_tokens: int = 0  # packed answer tokens read per row when scoring labels (0: first-token scoring)
    generation_tokens: int = GENERATION_TOKENS  # new tokens of a free answer (the generation phase)

    def __post_init__(self) -> None:
        issues = []
        if self.branch not in BRANCH_METHODS:
            issues.append(f"branch {self.branch!r} is not one of {', '.join(BRANCH_METHODS)}")
        elif self.method not in METHOD_NAMES:
            issues.append(f"method {self.method!r} is not one of {', '.join(METHOD_NAMES)}")
        elif self.branch == "wavlm" and self.method in ("qlora", "lora-8bit"):
            issues.append("the WavLM branch cannot be quantised: WavLM's attention reads its projection "
                          "weights directly; use encoder_mode finetune, lora or frozen")
        elif self.whisper_speech_encoder and self.method != "frozen":
            issues.append("a Whisper encoder in the speech branch is used frozen (its features are cached); "
                          "use encoder_mode: frozen")
        needs = {"text_llm": ("llm",), "audio_llm": ("llm", "whisper"), "wavlm": ("wavlm",)}.get(self.branch, ())
        issues += [f"branch {self.branch} needs a {key} model" for key in needs if not getattr(self, key)]
        for key in ("batch_size", "lora_r", "qformer_layers", "queries_per_window", "train_clips"):
            if getattr(self, key) < 1:
                issues.append(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.dev_clips < 0:
            issues.append(f"dev_clips must be >= 0, got {self.dev_clips}")
        if self.seq_len < 0 or self.audio_seconds <= 0 or self.window_seconds <= 0:
            issues.append("seq_len must be >= 0, audio_seconds and window_seconds > 0")
        if issues:
            raise ConfigError(f"plan {self.name!r}: " + "; ".join(issues))

    @property
    def whisper_speech_encoder(self) -> bool:
        """The speech branch on a Whisper encoder (the CPU preset's tiny.en, or large-v3) instead of WavLM."""
        from llmser.models.wavlm.config import is_whisper_encoder

        return self.branch == "wavlm" and bool(self.wavlm) and is_whisper_encoder(str(self.wavlm))

    @property
    def methods(self) -> list[str]:
        if self.whisper_speech_encoder:
            return ["frozen"]
        methods = list(BRANCH_METHODS[self.branch])
        if self.method not in methods:
            methods.append(self.method)
        return methods


def pretrained(name: str, kind: presets.Kind, field_name: str) -> str:
    """The Hub id (or folder) the planner sizes for a model name; a random ``tiny`` preset is refused: its
    size says nothing about a real run."""
    preset = presets.find(name, kind)
    if preset is not None and preset.hub_id is None:
        raise ConfigError(f"{field_name} {name!r} is a random test model; the planner sizes real ones - name a "
                          f"preset ({', '.join(n for n in presets.names(kind) if n != 'tiny')}), a Hub id or a "
                          f"folder in {field_name}")
    return preset.hub_id if preset is not None else name


def llm_fields(recipe: Recipe, config: Any) -> dict[str, Any]:
    """PlanSpec fields every LLM branch shares, from its typed ``LLMConfig`` and the recipe's ``data:``."""
    llm = pretrained(config.llm, "llm", "model.llm")
    depth = None
    if config.lora_top_layers is not None:
        depth = presets.resolve_config(llm, "llm").num_hidden_layers
    lora = config.lora_config(num_layers=depth)  # what training attaches
    targets = lora.target_modules if isinstance(lora.target_modules, str) else sorted(lora.target_modules)
    method = {"none": "lora", "4bit": "qlora", "8bit": "lora-8bit"}[config.quantization]
    return dict(llm=llm, method=method, lora_r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                lora_target_modules=targets, lora_layers=lora.layers_to_transform,
                gradient_checkpointing=config.gradient_checkpointing, batch_size=recipe.data.batch_size,
                eval_batch_size=recipe.data.eval_batch_size, eval_max_tokens=recipe.data.eval_max_tokens,
                vote_variants=len(config.voting.select(list(config.prompts))),
                # packed answer tokens when whole answers are scored: label words are 2-4 tokens
                answer_tokens=3 if config.answer_scoring == "whole" else 0)
