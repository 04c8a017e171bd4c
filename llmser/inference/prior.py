"""The training-prior baseline: the floor every llmser model has to beat.

Every file gets the training split's class distribution as its probability vector (so the predicted
class is the majority class) and the training mean of each attribute. Its macro-F1 is the
"majority-class" number the reports put beside each system; its CCCs are 0 by construction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmser.evaluation.predictions import Predictions
from llmser.schema import ATTRIBUTES, NUM_CLASSES


def training_prior(utterances) -> tuple[np.ndarray, np.ndarray]:
    """Class distribution (8,) over labelled utterances and attribute means (3,) over those with attributes."""
    counts = np.zeros(NUM_CLASSES, dtype=np.float64)
    for utt in utterances:
        if utt.class_index is not None:
            counts[utt.class_index] += 1
    if counts.sum() == 0:
        raise ValueError("the training split has no task-1 labels; cannot compute a class prior")
    values = [[getattr(u, name) for name in ATTRIBUTES] for u in utterances if u.arousal is not None]
    means = np.mean(np.asarray(values, dtype=np.float64), axis=0) if values else np.full(3, 4.0)
    return counts / counts.sum(), means


def predict_prior(corpus_root: str | Path, split: str = "test", train_split: str = "train",
                  allow_test_fit: bool = False) -> tuple[Predictions, dict]:
    """Predictions for every file of ``split`` from the prior of ``train_split``, and the splits by role
    (``llmser.data.splits``: a test ``train_split`` is refused unless ``allow_test_fit``)."""
    from llmser.data.msp_podcast import MSPPodcast
    from llmser.data.splits import SplitUse, check_split_roles

    corpus = MSPPodcast.from_folder(corpus_root)
    roles = check_split_roles([SplitUse("--train-split", train_split, "fit"), SplitUse("--split", split, "report")],
                              corpus, allow_test_fit=allow_test_fit)
    prior, means = training_prior(corpus.utterances(corpus.resolve_split(train_split), task="all"))
    names = [u.file_name for u in corpus.utterances(corpus.resolve_split(split), task="all")]
    probs = np.tile(prior, (len(names), 1))
    attributes = np.tile(means, (len(names), 1))
    return Predictions.from_probs(names, probs, attributes=attributes), roles


__all__ = ["predict_prior", "training_prior"]
