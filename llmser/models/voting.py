"""Majority voting: over prompt variants of one LLM, and over the members of an ensemble.

The challenge's top systems voted over prompt variants and over models: each voter names its argmax
class, the class with most votes wins, and ties go to the class with the larger summed probability
(a vote between equals is settled by confidence, not by class order). Averaged probabilities are
kept too: they feed stacking and calibrated reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


def majority_vote(voter_probs: np.ndarray | Sequence[np.ndarray], voter_names: Sequence[str]) -> VoteResult:
    """Plurality vote over K voters' (N, C) probability arrays, ties broken by summed probability."""
    probs = np.asarray(voter_probs, dtype=np.float64)  # (K, N, C)
    if probs.ndim != 3 or probs.shape[0] != len(voter_names):
        raise ValueError(f"expected (K={len(voter_names)}, N, C) probabilities, got shape {probs.shape}")
    num_classes = probs.shape[2]
    votes = probs.argmax(axis=2).T  # (N, K)
    counts = np.stack([np.bincount(row, minlength=num_classes) for row in votes]) if len(votes) else \
        np.zeros((0, num_classes), dtype=int)
    summed = probs.sum(axis=0)  # (N, C)
    # Lexicographic: the vote count first, the summed probability only among the tied classes.
    key = np.where(counts == counts.max(axis=1, keepdims=True), summed, -np.inf)
    labels = key.argmax(axis=1)
    return VoteResult(list(voter_names), probs, votes, labels, summed / probs.shape[0])
