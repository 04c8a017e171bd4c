"""Config of the audio-LLM branch: the base LLM and adapter (``LLMConfig``) plus the speech front end."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llmser.config import check_ranges, load_branch_config, save_branch_config
from llmser.models.llm.config import CONFIG_NAME, LLMConfig
from llmser.models.whisper.loading import WHISPER_PRESETS

DEFAULT_SPEECH_PROMPTS = ["speech_plain", "speech_definitions", "speech_shuffled", "speech_annotator", "speech_short"]
SECOND_ENCODERS = {"wavlm-tiny"}  # presets; any other value is a Hub id or folder of a WavLM/HuBERT model


@dataclass
class AudioLLMBranchConfig(LLMConfig):
    """An LLM that hears the speech: frozen encoders, a window-level Q-Former, a projection, LoRA.

    The windows follow SALMONN (bytedance/SALMONN ``models/salmonn.py``): 0.333 s windows with a 0.333 s
    stride (17 of Whisper's 50 frames per second) and one learned query per window, so a clip of d
    seconds becomes about 3*d speech tokens. SALMONN drops a trailing partial window (``F.unfold``); by
    default it is zero-padded and kept here, so the clip's last 0.3 s are heard; ``partial_window: drop``
    counts windows as SALMONN does (a clip shorter than one window still gives one, zero-padded).

    The model returns the eight verbalised answers' log-likelihoods after the sampled prompt variant as
    ``class_logits`` (the first answer token in training; in evaluation the whole answer, or its first
    token with ``answer_scoring: first_token``; see ``model.py``), so the engine's class loss is a loss on the answer tokens normalised over the label
    set, and evaluation uses the same scores that voting does.
    """

    # answer: SALMONN's route - the LLM answers with a label, scored by the answers' log-likelihoods. head: class and
    # attribute heads on the pooled speech plus the LLM's last state after the prompt (models/audio_llm/heads.py).
    mode: Literal["answer", "head"] = field(default="answer", metadata={"help": "answer: score the verbalised labels (SALMONN); head: class/attribute heads on the pooled speech + the LLM's last state"})
    whisper: str = field(default="large-v3", metadata={"help": "large-v3 | smol (tiny.en) | tiny (random) | Hub id | folder", "presets": tuple(WHISPER_PRESETS)})
    whisper_revision: str | None = field(default=None, metadata={"help": "Hub revision of the Whisper encoder"})
    second_encoder: str | None = field(default=None, metadata={"help": "None | wavlm-tiny | Hub id / folder of a WavLM/HuBERT model", "presets": tuple(sorted(SECOND_ENCODERS))})
    max_audio_seconds: float = field(default=30.0, metadata={"help": "audio is cropped here; below 30 s Whisper's window is cropped too", "gt": 0})
    window_seconds: float = field(default=0.333333, metadata={"help": "Q-Former window length in seconds (SALMONN: 0.333 s = 17 Whisper frames)", "gt": 0})
    stride_seconds: float = field(default=0.333333, metadata={"help": "Q-Former window stride in seconds", "gt": 0})
    partial_window: Literal["keep", "drop"] = field(default="keep", metadata={"help": "a trailing partial window: keep it zero-padded, or drop it as SALMONN does (import-salmonn sets drop)"})
    # last: the Q-Former reads Whisper's last layer (SALMONN). all: every hidden state is cached and a learned
    # softmax-weighted sum of them feeds the Q-Former (and the head mode's pooling), as in the speech branch.
    encoder_layers: Literal["last", "all"] = field(default="last", metadata={"help": "last: Whisper's last layer (SALMONN); all: a learned weighted sum of every layer, as the speech branch"})
    num_queries: int = field(default=1, metadata={"help": "learned queries per window (speech tokens per window)", "min": 1})
    qformer_layers: int = field(default=2, metadata={"help": "Q-Former (Blip2QFormerModel) layers", "min": 1})
    qformer_hidden: int | None = field(default=None, metadata={"help": "default: Whisper's d_model (SALMONN: 768, BERT-base)", "min": 1})
    qformer_heads: int | None = field(default=None, metadata={"help": "default: qformer_hidden // 64 (at least 1)", "min": 1})
    qformer_intermediate: int | None = field(default=None, metadata={"help": "default: 4 x qformer_hidden", "min": 1})
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_SPEECH_PROMPTS), metadata={"help": "prompt variants (names under prompts/ or YAML files); training samples one per example, voting uses all"})
    prompt_dir: str | None = field(default=None, metadata={"help": "folder to read prompt variants from (default: the packaged prompts/)"})
    inputs: Literal["speech", "speech+transcript"] = field(default="speech", metadata={"help": "speech only, or speech plus the transcript in the prompt"})
    # causal: ordinary causal attention (SALMONN). isolated: the speech tokens attend only to each other, so
    # their states are the same for every prompt variant and voting runs them once per clip
    # (llmser/models/llm/isolated.py); the text after the speech still sees the instruction and the speech.
    speech_attention: Literal["causal", "isolated"] = field(default="causal", metadata={"help": "causal (SALMONN, the default) or isolated (speech tokens see only each other: cheaper voting)"})
    # What evaluation and voting score: each answer's whole token sequence (end of turn included), or only
    # its first token, which is what training reads (needs answers with distinct first tokens; ~8 fewer
    # tokens per prompt in every scoring forward).
    answer_scoring: Literal["whole", "first_token"] = field(default="whole", metadata={"help": "score whole answers, or only their first tokens (what training reads)"})
    max_transcript_tokens: int = field(default=96, metadata={"help": "transcripts are cut to this many tokens in the prompt", "min": 1})
    attribute_head: bool = field(default=True, metadata={"help": "a small regression head on the mean speech token (task 2)"})
    # Head mode: where the speech side's arousal/valence/dominance come from. head: the speech head's MLP, trained in
    # stage 1. ridge: a ridge regression on the clip means of every cached encoder feature, fitted in closed form
    # before stage 1 with its penalty chosen per attribute on dev (models/readout.py); the LLM head still adds to it.
    # Answer mode (and attribute_head: false) has no speech head: ignored there, so one recipe serves both modes.
    attribute_readout: Literal["head", "ridge"] = field(default="head", metadata={"help": "head mode: attributes from the speech head's MLP (head) or a closed-form ridge readout of the clip-mean encoder features (ridge); ignored in answer mode"})
    # Ridge shrinks toward the mean and CCC punishes that: each attribute's weights are stretched so its leave-one-out
    # predictions on train spread as widely as the targets (models/readout.py). Dev, clip means of all Whisper
    # tiny.en layers, A/V/D CCC: 0.832/0.517/0.403 vs 0.823/0.497/0.313 without (demo), 0.769/0.583/0.511 vs
    # 0.760/0.585/0.434 (corpus 2).
    readout_rescale: bool = field(default=True, metadata={"help": "stretch the ridge readout's predictions for CCC (to the targets' spread, measured out of sample on train)"})
    readout_alphas: list[float] = field(default_factory=lambda: [1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0], metadata={"help": "ridge penalties the readout chooses from per attribute (on dev; leave-one-out on train without dev)"})
    # An auxiliary class head on the mean Q-Former state, trained with weight loss.auxiliary_class_weight: it gives
    # the Q-Former a direct emotion signal instead of only the one that comes back through all LLM layers
    # (speech-only on the demo: 60 steps without it predicted one class). Predictions stay the LLM's answers.
    speech_class_head: bool = field(default=True, metadata={"help": "train an auxiliary class head on the speech tokens (loss.auxiliary_class_weight)"})
    # Stage 1 (before any LLM step): the Q-Former and the speech heads learn the emotion task on the cached encoder
    # frames alone - no LLM forward, ~0.1-0.2 s a step on CPU against ~5 s for a step through SmolLM2 - so the speech
    # tokens the LLM first sees already carry emotion (as SALMONN aligns its connector before instruction tuning).
    speech_warmup_steps: int = field(default=0, metadata={"help": "stage 1: steps training the Q-Former and the speech heads alone on cached frames before the LLM (0 = none; needs attribute_head or speech_class_head)", "min": 0})
    speech_warmup_lr: float = field(default=1.0e-3, metadata={"help": "learning rate of stage 1 (AdamW, constant)", "gt": 0, "max": 10})
    # Stage 1 scored on dev every N steps, ending on its best state (train.metric_for_best), as the engine keeps
    # its best step: stage 2 then starts from (and in head mode, with freeze_speech_head, keeps) that front end.
    speech_warmup_eval_every: int = field(default=0, metadata={"help": "stage 1: score the front end on dev every N steps and keep its best state (0 = keep the last)", "min": 0})
    # Head mode: the speech head, its pooling and the encoder layer weights learn in stage 1 only; stage 2 trains the
    # Q-Former, LoRA and the LLM head, whose output is added to the speech head's - the model keeps stage 1's front end.
    freeze_speech_head: bool = field(default=False, metadata={"help": "head mode: the speech head, its pooling and the layer weights learn in stage 1 only (answer mode has no speech head: ignored)"})
    # After training, fit each answer's prior on the dev split and divide it out at inference (AnswerCalibration).
    calibrate: bool = field(default=True, metadata={"help": "fit each prompt variant's answer prior on the dev split after training and divide it out"})
    pooling_attention_size: int = field(default=64, metadata={"help": "head mode: attention size of the speech head's attentive statistics pooling", "min": 1})
    head_hidden_size: int = field(default=128, metadata={"help": "hidden size of the attribute and auxiliary heads", "min": 1})
    dropout: float = field(default=0.1, metadata={"help": "dropout of the heads", "min": 0, "lt": 1})

    def __post_init__(self) -> None:
        check_ranges(self)
        issues = []
        if not self.prompts:
            issues.append("list at least one prompt variant in model.prompts")
        if self.partial_window not in ("keep", "drop"):
            issues.append(f"partial_window must be 'keep' or 'drop', got {self.partial_window!r}")
        if self.speech_attention not in ("causal", "isolated"):
            issues.append(f"speech_attention must be 'causal' or 'isolated', got {self.speech_attention!r}")
        if self.answer_scoring not in ("whole", "first_token"):
            issues.append(f"answer_scoring must be 'whole' or 'first_token', got {self.answer_scoring!r}")
        if self.mode not in ("answer", "head"):
            issues.append(f"mode must be 'answer' or 'head', got {self.mode!r}")
        if self.encoder_layers not in ("last", "all"):
            issues.append(f"encoder_layers must be 'last' or 'all', got {self.encoder_layers!r}")
        if self.speech_warmup_steps and self.mode == "answer" and not (self.attribute_head or self.speech_class_head):
            issues.append("speech_warmup_steps > 0 trains the speech heads, but attribute_head and speech_class_head are "
                          "both off; turn one on or set speech_warmup_steps=0")
        if self.attribute_readout not in ("head", "ridge"):
            issues.append(f"attribute_readout must be 'head' or 'ridge', got {self.attribute_readout!r}")
        if not self.readout_alphas or min(self.readout_alphas) <= 0:
            issues.append(f"readout_alphas must list positive ridge penalties, got {self.readout_alphas}")
        if self.freeze_speech_head and self.mode == "head" and not self.speech_warmup_steps:
            issues.append("freeze_speech_head keeps the speech head that stage 1 trains, but speech_warmup_steps is 0: it "
                          "would never learn; set model.speech_warmup_steps > 0 or model.freeze_speech_head=false")
        if issues:
            raise ValueError("\n".join(issues))

    @property
    def encoder_window_seconds(self) -> float | None:
        """Whisper's input window: cropped to the audio limit when that is shorter than 30 s."""
        import math

        return float(math.ceil(self.max_audio_seconds)) if self.max_audio_seconds < 30 else None

    def save(self, directory: str | Path, name: str = CONFIG_NAME) -> None:
        save_branch_config(self, Path(directory) / name, "audio_llm")

    @classmethod
    def load(cls, directory: str | Path, name: str = CONFIG_NAME) -> AudioLLMBranchConfig:
        return load_branch_config(cls, Path(directory) / name, "audio_llm", "an audio-LLM model", "an audio-LLM model")
