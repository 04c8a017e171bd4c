"""Training recipes: the YAML files under ``adapters/`` mapped onto typed dataclasses.

A recipe names the branch to train, its model config (parsed by that branch's own dataclass), and
the shared data / optimiser / loss / schedule sections. Any field can be overridden on the command
line::

    llmser train adapters/wavlm_tiny.yaml optim.lr=5e-4 train.max_steps=200
    accelerate launch -m llmser train adapters/wavlm_tiny.yaml data.batch_size=4
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmser.config import check_ranges, load_config
from llmser.data.augment import AugmentConfig
from llmser.schema import ATTRIBUTES


@dataclass
class DataConfig:
    corpus: str = field(default="demo_corpus", metadata={"help": "corpus folder in the MSP-Podcast layout (Labels/, Audios/, Transcripts/)"})
    train_split: str = field(default="train", metadata={"help": "split the model trains on (train, dev, test1 ... or the release's Split_Set names)"})
    eval_split: str = field(default="dev", metadata={"help": "split scored every eval_every steps: picks the best checkpoint and the answer calibration; empty = none"})
    test_split: str = field(default="test", metadata={"help": "split predicted once after training with the best model; empty = none"})
    allow_test_fit: bool = field(default=False, metadata={"help": "let train_split/eval_split be (or overlap) test: a deliberate final refit, loudly logged and recorded in metrics.json and the model card"})
    task: Literal["class", "attributes", "all"] = field(default="all", metadata={"help": "class: task 1 only (X/O files dropped); attributes: task 2 only; all: both heads"})
    max_seconds: float = field(default=6.0, metadata={"help": "longer clips are cropped; keeps memory bounded", "gt": 0})
    batch_size: int = field(default=8, metadata={"help": "per process; the global batch is batch_size x processes", "min": 1})
    eval_batch_size: int = field(default=16, metadata={"help": "examples per process when scoring", "min": 1})
    eval_max_tokens: int | None = field(default=None, metadata={"help": "token budget of one evaluation / voting / scoring forward (rows x padded length, K rows per file when voting); a larger batch is split, results unchanged. None: eval_batch_size alone (llmser plan shows each phase's peak)", "min": 1})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes (0 = load in the training process)", "min": 0})
    balanced_sampler: bool = field(default=False, metadata={"help": "class-balanced batches against MSP-Podcast's imbalance"})
    sampler_power: float = field(default=0.0, metadata={"help": "0 = uniform over classes, 1 = natural frequencies", "min": 0})
    sampler_unlabelled_share: float = field(default=0.1, metadata={"help": "share of balanced batches drawn from X/O files (attributes only)", "min": 0, "lt": 1})
    missing_transcripts: Literal["error", "asr"] = field(default="error", metadata={"help": "files without a transcript, where a branch reads them: stop naming them, or asr: Whisper makes them (cached under cache_dir/transcripts, never written into the corpus)"})
    asr_model: str = field(default="smol", metadata={"help": "Whisper for missing_transcripts=asr: smol (tiny.en, offline), large-v3, Hub id or folder"})
    on_error: Literal["raise", "skip"] = field(default="raise", metadata={"help": "bad corpus rows/files: stop, or skip and report"})
    extra_splits: list[str] = field(default_factory=list, metadata={"help": "Split_Set names of your own beside the release's (Train, Development, Test1-3); any other name is refused as a likely typo"})
    feature_cache: bool = field(default=True, metadata={"help": "cache a frozen encoder's hidden states on disk"})
    cache_dir: str = field(default=".cache/llmser/features", metadata={"help": "where frozen encoders' features and LLM states are cached"})
    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata={"help": "waveform and label augmentation (noise, reverb, gain, mixing, annotator-label dropout)"})

    def __post_init__(self) -> None:
        check_ranges(self)  # the metadata ranges, for configs built in code too


@dataclass
class LossConfig:
    """Which losses a recipe trains with, and how they are weighted.

    ``class_loss``: "ce", "weighted_ce" (inverse-frequency weights, the baseline), "focal" (alpha = the
    same weights when class counts are known), "soft_ce" or "soft_kl" (annotator distributions; rows
    without one fall back to the one-hot hard label; X/O rows, which have no task-1 label, are left out
    unless ``soft_labels_on_xo``). ``attribute_loss``: "ccc" (1 - CCC per attribute),
    "mse", or "ccc+mse". The total is ``class_weight * class + attribute_weight * attribute``, where the
    attribute term is the ``attribute_weights``-weighted mean over arousal, valence, dominance.
    A model that also returns ``auxiliary_class_logits`` (a training-only head, e.g. the audio-LLM's class
    head on its speech tokens) adds ``auxiliary_class_weight`` times the same class loss on them.
    """

    class_loss: Literal["ce", "weighted_ce", "focal", "soft_ce", "soft_kl"] = field(default="weighted_ce", metadata={"help": "ce, weighted_ce (inverse frequency, the baseline), focal, soft_ce or soft_kl (annotator votes)"})
    focal_gamma: float = field(default=2.0, metadata={"help": "focusing exponent of the focal loss", "min": 0})
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of the class loss, in [0, 1)", "min": 0, "lt": 1})
    weight_smoothing: float = field(default=0.0, metadata={"help": "0 = full inverse-frequency class weights, 1 = uniform", "min": 0, "max": 1})
    attribute_loss: Literal["ccc", "mse", "ccc+mse"] = field(default="ccc", metadata={"help": "ccc (1 - CCC per attribute), mse, or ccc+mse"})
    class_weight: float = field(default=1.0, metadata={"help": "weight of the task-1 loss in the total", "min": 0})
    attribute_weight: float = field(default=1.0, metadata={"help": "weight of the task-2 loss in the total", "min": 0})
    attribute_weights: tuple[float, ...] = field(default=(1.0, 1.0, 1.0), metadata={"help": "weights of arousal, valence, dominance within the task-2 loss", "min": 0})
    auxiliary_class_weight: float = field(default=0.5, metadata={"help": "weight of a training-only class head's loss (e.g. the audio-LLM's speech-token head)", "min": 0})
    soft_labels_on_xo: bool = field(default=False, metadata={"help": "soft_ce/soft_kl: also train the class head on X/O files' annotator votes (task 1 leaves X/O out, so off by default; the log counts them)"})

    def __post_init__(self) -> None:
        check_ranges(self)
        issues = []
        if len(self.attribute_weights) != len(ATTRIBUTES):
            issues.append(f"attribute_weights needs {len(ATTRIBUTES)} numbers ({', '.join(ATTRIBUTES)}), "
                          f"got {list(self.attribute_weights)}")
        elif sum(self.attribute_weights) <= 0:
            issues.append(f"attribute_weights needs a positive sum, got {list(self.attribute_weights)}")
        if self.class_weight + self.attribute_weight <= 0:
            issues.append("class_weight and attribute_weight are both 0, so nothing would train; make one positive")
        if issues:
            raise ValueError("; ".join(issues))


@dataclass
class OptimConfig:
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate of the trained parameters", "gt": 0, "max": 10})
    encoder_lr: float | None = field(default=None, metadata={"help": "a lower rate for a fine-tuned encoder; None = lr", "gt": 0, "max": 10})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not applied to biases and norms)", "min": 0})
    schedule: Literal["cosine", "exponential", "constant"] = field(default="cosine", metadata={"help": "learning-rate schedule after warm-up: cosine, exponential or constant"})
    warmup_steps: int = field(default=0, metadata={"help": "optimiser steps of linear warm-up", "min": 0})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "cosine floor / exponential end point, as a fraction of lr", "min": 0, "max": 1})
    grad_clip: float = field(default=1.0, metadata={"help": "max global grad norm; 0 disables", "min": 0})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches summed per optimiser step (global batch = batch_size x processes x this)", "min": 1})

    def __post_init__(self) -> None:
        check_ranges(self)  # the metadata ranges, for configs built in code too


@dataclass
class ScheduleConfig:
    max_steps: int = field(default=1000, metadata={"help": "optimiser steps", "min": 1})
    eval_every: int = field(default=100, metadata={"help": "optimiser steps between dev evaluations", "min": 1})
    save_every: int = field(default=100, metadata={"help": "optimiser steps between resumable checkpoints", "min": 1})
    log_every: int = field(default=10, metadata={"help": "optimiser steps between log lines", "min": 1})
    early_stopping_patience: int = field(default=0, metadata={"help": "evaluations without improvement before stopping; 0 = off", "min": 0})
    # As transformers' TrainingArguments.eval_on_start: the model before the first step (a staged branch's stage-1
    # model, a warm start) is scored on dev and is a candidate for best/ like any later step.
    eval_on_start: bool = field(default=False, metadata={"help": "score dev before the first step too: the starting model can be the best"})
    metric_for_best: Literal["macro_f1", "ccc_mean", "combined"] = field(default="combined", metadata={"help": "combined = mean of the two"})
    seed: int = field(default=0, metadata={"help": "seed of model initialisation, data order and augmentation", "min": 0, "max": 2**32 - 1})
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = field(default="auto", metadata={"help": "auto: bf16 where the GPU has it"})
    output_dir: str = field(default="runs/train", metadata={"help": "run folder: checkpoints, best/, metrics.json, test report"})
    keep_checkpoints: int = field(default=2, metadata={"help": "resumable checkpoints kept (oldest deleted first)", "min": 1})
    log_with: list[str] = field(default_factory=list, metadata={"help": "e.g. [tensorboard]; skipped if not installed"})
    ddp_find_unused_parameters: bool = field(default=True, metadata={"help": "WavLM has parameters no forward uses (e.g. masked_spec_embed)"})
    predict_test: bool = field(default=True, metadata={"help": "after training, predict the test split with the best model"})

    def __post_init__(self) -> None:
        check_ranges(self)  # the metadata ranges, for configs built in code too


@dataclass
class Recipe:
    branch: str = field(default="wavlm", metadata={"help": "which branch to train: wavlm, text_llm, audio_llm or fusion (models/registry.py)"})
    model: dict[str, Any] = field(default_factory=dict, metadata={"help": "the branch's own model config (see the branch's config.py)"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "corpus, splits, batching and caching"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimiser and learning-rate schedule"})
    loss: LossConfig = field(default_factory=LossConfig, metadata={"help": "task-1 and task-2 losses and their weights"})
    train: ScheduleConfig = field(default_factory=ScheduleConfig, metadata={"help": "steps, evaluation, checkpoints, precision, output folder"})


def read_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """The shared sections typed; the ``model:`` section stays a mapping, typed by its branch's config class
    (``llmser.models.registry.load_recipe`` reads and validates both)."""
    return load_config(Recipe, path, overrides)
