"""Majority voting: over prompt variants of one LLM, and over the members of an ensemble.

The challenge's top systems voted over prompt variants and over models: each voter names its argmax
class, the class with most votes wins, and ties go to the class with the larger summed probability
(a vote between equals is settled by confidence, not by class order). Averaged probabilities are
kept too: they feed stacking and calibrated reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np


@dataclass
class VoteResult:
    voter_names: list[str]
    voter_probs: np.ndarray  # (K, N, C) each voter's probabilities
    votes: np.ndarray  # (N, K) each voter's argmax class index
    labels: np.ndarray  # (N,) the majority class index
    probs: np.ndarray  # (N, C) mean of the voters' probabilities

    def vote_columns(self, codes: Sequence[str], prefix: str = "vote_") -> dict[str, list[str]]:
        """Per-voter votes as prediction-file columns (``vote_<name>`` -> class codes)."""
        return {f"{prefix}{name}": [codes[i] for i in self.votes[:, k]] for k, name in enumerate(self.voter_names)}


def majority_vote(voter_probs: np.ndarray | Sequence[np.ndarray], voter_names: Sequence[str],
                  voter_labels: np.ndarray | Sequence[np.ndarray] | None = None) -> VoteResult:
    """Plurality vote over K voters' (N, C) probability arrays, ties broken by summed probability.

    Each voter names its argmax class unless ``voter_labels`` (K, N) give its own decision: a member that
    is itself a vote (an LLM over prompt variants) casts the class its rule chose, not the argmax of its
    mean probabilities, which can differ.
    """
    probs = np.asarray(voter_probs, dtype=np.float64)  # (K, N, C)
    if probs.ndim != 3 or probs.shape[0] != len(voter_names):
        raise ValueError(f"expected (K={len(voter_names)}, N, C) probabilities, got shape {probs.shape}")
    num_classes = probs.shape[2]
    votes = probs.argmax(axis=2).T if voter_labels is None else np.asarray(voter_labels, dtype=int).T  # (N, K)
    if votes.shape != probs.shape[1::-1]:
        raise ValueError(f"expected (K={probs.shape[0]}, N={probs.shape[1]}) voter labels, got {votes.T.shape}")
    counts = np.stack([np.bincount(row, minlength=num_classes) for row in votes]) if len(votes) else \
        np.zeros((0, num_classes), dtype=int)
    summed = probs.sum(axis=0)  # (N, C)
    # Lexicographic: the vote count first, the summed probability only among the tied classes.
    key = np.where(counts == counts.max(axis=1, keepdims=True), summed, -np.inf)
    labels = key.argmax(axis=1)
    return VoteResult(list(voter_names), probs, votes, labels, summed / probs.shape[0])


VOTING_RULES = ("plurality", "mean")


@dataclass
class VotingConfig:
    """How an LLM branch's prompt variants vote: the recipe's ``model.voting`` section (both LLM branches).

    Every consumer of a trained LLM branch reads it - the test report, ``collect-outputs``,
    ``build-system`` / ``llmser predict`` - so fusion, the ensembles and the shipped system see the
    same vote the report scores.
    """

    variants: Literal["all", "auto"] | list[str] = field(
        default="auto", metadata={"help": "all: every prompt variant of the model votes; auto: after training, the "
                                         "variant subset (the k best on dev) and rule that score best on dev, saved "
                                         "with the weights; or a list of variant names"})
    rule: Literal["plurality", "mean"] = field(
        default="plurality", metadata={"help": "plurality: most variants' argmax wins, ties by summed probability; "
                                               "mean: argmax of the mean probabilities"})

    def __post_init__(self) -> None:
        if self.rule not in VOTING_RULES:
            raise ValueError(f"voting.rule must be one of {', '.join(VOTING_RULES)}, got {self.rule!r}")
        if self.variants not in ("all", "auto") and (isinstance(self.variants, str) or not self.variants):
            raise ValueError(f"voting.variants must be 'all', 'auto' or a non-empty list of variant names, "
                             f"got {self.variants!r}")

    @property
    def chosen_on_dev(self) -> bool:
        """Whether the variants and rule are still to be chosen on dev (``variants: auto``, before training ends)."""
        return self.variants == "auto"

    def select(self, available: Sequence[str]) -> list[str]:
        """The voting variants among a model's ``available`` ones (in the model's order for ``all``; every one
        while ``auto`` is not yet chosen)."""
        if self.variants in ("all", "auto"):
            return list(available)
        missing = [v for v in self.variants if v not in available]
        if missing:
            raise ValueError(f"voting.variants {missing} are not variants of this model ({', '.join(available)}); "
                             "list some of those, or use voting.variants=all")
        return list(self.variants)


def vote(voter_probs: np.ndarray | Sequence[np.ndarray], voter_names: Sequence[str], rule: str = "plurality") -> VoteResult:
    """The vote of K voters' (N, C) probabilities under ``rule`` (see ``VotingConfig``)."""
    result = majority_vote(voter_probs, voter_names)
    if rule == "mean":
        result.labels = result.probs.argmax(axis=1)
    elif rule != "plurality":
        raise ValueError(f"unknown voting rule {rule!r}; choose one of {', '.join(VOTING_RULES)}")
    return result


@dataclass
class VotedOutput:
    """What an LLM branch's ``vote_batch`` returns: the vote, each variant's probabilities, and the heads.

    ``probs`` are the voters' mean probabilities (what fusion, averaging and calibrated reports read);
    ``labels`` the vote's class under the rule; ``variant_probs`` keep every variant's view.
    """

    probs: Any  # (B, C) torch tensor
    labels: Any  # (B,) long tensor
    variant_probs: Any  # (B, K, C)
    variant_names: list[str]
    attributes: Any  # (B, 3) or None
    embedding: Any  # (B, D)
    variant_attributes: Any = None  # (B, K, 3) where each variant predicts its own attributes


def voted_output(variant_probs: np.ndarray, names: Sequence[str], rule: str, attributes: Any,
                 embedding: Any, variant_attributes: Any = None) -> VotedOutput:
    """A ``VotedOutput`` from (K, B, C) numpy probabilities; tensors on ``embedding``'s device."""
    import torch

    result = vote(variant_probs, names, rule)
    device = embedding.device
    return VotedOutput(probs=torch.as_tensor(result.probs, dtype=torch.float32, device=device),
                       labels=torch.as_tensor(result.labels, dtype=torch.long, device=device),
                       variant_probs=torch.as_tensor(result.voter_probs, dtype=torch.float32,
                                                     device=device).transpose(0, 1),
                       variant_names=list(names), attributes=attributes, embedding=embedding,
                       variant_attributes=variant_attributes)
