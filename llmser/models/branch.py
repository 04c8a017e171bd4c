"""The contract between the training engine and a branch: what every branch folder implements.

Each branch (``models/<name>/``) has the same files, as peft's tuners do: ``config.py`` (its typed
model config, the recipe's ``model:`` section), ``model.py`` (an :class:`EmotionModel`) and
``branch.py`` (a module satisfying :class:`Branch`). The engine (``llmser.training``) and the
predictor (``llmser.inference``) depend on these two protocols and on ``models/registry.py``, never
on a branch's internals, as torchtune's runner depends on its recipe interface.

One step, in the engine's words: ``prepare`` builds the model, the datasets and the collate function
(batches); ``model(**batch)`` runs the forward; the engine's ``MultiTaskLoss`` turns the output's
``class_logits`` / ``attributes`` into the loss; after training, the same outputs are the
predictions (``predict_data`` feeds raw audio files to a trained model for ``llmser predict``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class EmotionModel(Protocol):
    """A trainable branch model.

    ``model(**batch)`` returns an object with ``class_logits`` (B, 8) and/or ``attributes`` (B, 3)
    (and optionally ``auxiliary_class_logits``, a training-only head); ``save_pretrained(dir)`` writes a
    folder that the class's ``from_pretrained(dir_or_hub_id)`` reads back.
    """

    config: Any

    def __call__(self, **batch: Any) -> Any: ...

    def save_pretrained(self, directory: str | Path) -> Path: ...


@dataclass
class BranchSetup:
    """What ``Branch.prepare`` hands the engine: the model, the three datasets and how to batch them."""

    model: Any
    train_set: Any
    eval_set: Any
    test_set: Any
    collate_fn: Any
    test_utterances: list
    class_counts: list[int] | None = None
    train_labels: list[int] | None = None
    # Stage 1, run by the engine before training when > 0: the model's ``warmup_parameters()`` learn from
    # ``warmup_outputs(**batch)`` (an EmotionOutput) on the train set, nothing else moves.
    warmup_steps: int = 0
    warmup_lr: float = 1.0e-3
    # > 0: stage 1 scores ``warmup_outputs`` on eval_set this often and ends on its best state (train.metric_for_best).
    warmup_eval_every: int = 0
    # The model has a closed-form readout (``heads.readout``, ``llmser.models.readout``) that the engine fits on
    # ``readout_inputs`` of the train split (penalty chosen on eval_set) before stage 1 and training.
    fit_readout: bool = False


@runtime_checkable
class Branch(Protocol):
    """A branch's training interface (its ``branch.py`` module satisfies it)."""

    def prepare(self, recipe: Any, config: Any, corpus: Any, accelerator: Any) -> BranchSetup:
        """Model, datasets (train/eval/test from the recipe's splits) and collate function."""
        ...


@runtime_checkable
class PredictsAudio(Protocol):
    """A branch that can also predict raw audio files (every branch but fusion, which reads branch outputs)."""

    def predict_data(self, model: Any, recipe: Any, utterances: Sequence) -> tuple[Any, Callable]:
        """Dataset + collate that feed ``utterances`` (audio, and transcripts where read) to ``model``."""
        ...


@runtime_checkable
class VotesOverPrompts(Protocol):
    """A model whose prompt variants vote (both LLM branches, ``llmser.models.llm.member.LoRAMember``).

    ``vote_batch(**batch)`` returns a ``VotedOutput`` for a batch of the dataset's voting examples
    (``dataset.with_voting(voting_variants)``); ``config.voting`` says which variants vote and by what rule.
    The test report, ``collect-outputs`` and ``llmser predict`` run every such model's vote.
    """

    config: Any

    @property
    def variant_names(self) -> list[str]: ...

    @property
    def voting_variants(self) -> list[str]: ...

    def vote_batch(self, **batch: Any) -> Any: ...


@runtime_checkable
class ReloadsWeights(Protocol):
    """A model that loads a saved folder's trained weights in place, without rebuilding what is frozen
    (the LLM branches reload their adapter, not the base LLM)."""

    def load_trained_weights(self, directory: str | Path) -> None: ...
