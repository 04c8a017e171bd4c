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

from llmser.config import load_config
from llmser.data.augment import AugmentConfig
from llmser.schema import ATTRIBUTES


@dataclass
class DataConfig:
    corpus: str = "demo_corpus"
    train_split: str = "train"
    eval_split: str = "dev"
    test_split: str = "test"
    task: Literal["class", "attributes", "all"] = "all"
    max_seconds: float = 6.0  # longer clips are cropped; keeps memory bounded
    batch_size: int = 8  # per process; the global batch is batch_size x processes
    eval_batch_size: int = 16
    num_workers: int = 0
    balanced_sampler: bool = False  # class-balanced batches against MSP-Podcast's imbalance
    sampler_power: float = 0.0  # 0 = uniform over classes, 1 = natural frequencies
    sampler_unlabelled_share: float = 0.1  # share of balanced batches drawn from X/O files (attributes only)
    on_error: Literal["raise", "skip"] = "raise"  # bad corpus rows/files: stop, or skip and report
    feature_cache: bool = True  # cache a frozen encoder's hidden states on disk
    cache_dir: str = ".cache/llmser/features"
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class LossConfig:
    """Which losses a recipe trains with, and how they are weighted.

    ``class_loss``: "ce", "weighted_ce" (inverse-frequency weights, the baseline), "focal" (alpha = the
    same weights when class counts are known), "soft_ce" or "soft_kl" (annotator distributions; rows
    without one fall back to the one-hot hard label). ``attribute_loss``: "ccc" (1 - CCC per attribute),
    "mse", or "ccc+mse". The total is ``class_weight * class + attribute_weight * attribute``, where the
    attribute term is the ``attribute_weights``-weighted mean over arousal, valence, dominance.
    A model that also returns ``auxiliary_class_logits`` (a training-only head, e.g. the audio-LLM's class
    head on its speech tokens) adds ``auxiliary_class_weight`` times the same class loss on them.
    """

    class_loss: Literal["ce", "weighted_ce", "focal", "soft_ce", "soft_kl"] = "weighted_ce"
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    weight_smoothing: float = 0.0
    attribute_loss: Literal["ccc", "mse", "ccc+mse"] = "ccc"
    class_weight: float = 1.0
    attribute_weight: float = 1.0
    attribute_weights: tuple[float, ...] = (1.0, 1.0, 1.0)
    auxiliary_class_weight: float = 0.5

    def __post_init__(self) -> None:
        issues = []
        if len(self.attribute_weights) != len(ATTRIBUTES):
            issues.append(f"attribute_weights needs {len(ATTRIBUTES)} numbers ({', '.join(ATTRIBUTES)}), "
                          f"got {list(self.attribute_weights)}")
        elif any(w < 0 for w in self.attribute_weights) or sum(self.attribute_weights) <= 0:
            issues.append(f"attribute_weights must be non-negative with a positive sum, got "
                          f"{list(self.attribute_weights)}")
        if self.auxiliary_class_weight < 0:
            issues.append(f"auxiliary_class_weight must be >= 0, got {self.auxiliary_class_weight}")
        if self.class_weight < 0 or self.attribute_weight < 0:
            issues.append(f"class_weight and attribute_weight must be >= 0, got {self.class_weight} and "
                          f"{self.attribute_weight}")
        if not 0.0 <= self.label_smoothing < 1.0:
            issues.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.weight_smoothing <= 1.0:
            issues.append(f"weight_smoothing must be in [0, 1], got {self.weight_smoothing}")
        if self.focal_gamma < 0:
            issues.append(f"focal_gamma must be >= 0, got {self.focal_gamma}")
        if issues:
            raise ValueError("; ".join(issues))


@dataclass
class OptimConfig:
    lr: float = 1e-4
    encoder_lr: float | None = None  # a lower rate for a fine-tuned encoder; None = lr
    weight_decay: float = 0.01
    schedule: Literal["cosine", "exponential", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine floor / exponential end point, as a fraction of lr
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    gradient_accumulation_steps: int = 1


@dataclass
class ScheduleConfig:
    max_steps: int = 1000  # optimiser steps
    eval_every: int = 100
    save_every: int = 100
    log_every: int = 10
    early_stopping_patience: int = 0  # evaluations without improvement before stopping; 0 = off
    metric_for_best: Literal["macro_f1", "ccc_mean", "combined"] = "combined"  # combined = mean of the two
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "auto"  # auto: bf16 where the GPU has it
    output_dir: str = "runs/train"
    keep_checkpoints: int = 2
    log_with: list[str] = field(default_factory=list)  # e.g. [tensorboard]; skipped if not installed
    ddp_find_unused_parameters: bool = True  # WavLM has parameters no forward uses (e.g. masked_spec_embed)
    predict_test: bool = True  # after training, predict the test split with the best model


@dataclass
class Recipe:
    branch: str = "wavlm"
    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: ScheduleConfig = field(default_factory=ScheduleConfig)


def read_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """The shared sections typed; the ``model:`` section stays a mapping, typed by its branch's config class
    (``llmser.models.registry.load_recipe`` reads and validates both)."""
    return load_config(Recipe, path, overrides)
