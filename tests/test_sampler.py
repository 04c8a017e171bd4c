"""Class-balanced batches: balance, determinism, exact mid-epoch resume and rank sharding."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from llmser.training.sampler import ClassBalancedBatchSampler

# Imbalanced like MSP-Podcast: 500 / 100 / 20 / 5 items, plus 40 unlabelled (X/O) items.
COUNTS = (500, 100, 20, 5)
LABELS = [c for c, n in enumerate(COUNTS) for _ in range(n)] + [-1] * 40


def _class_shares(sampler) -> np.ndarray:
    drawn = [LABELS[i] for batch in sampler for i in batch]
    counts = Counter(drawn)
    return np.array([counts.get(c, 0) for c in (-1, *range(len(COUNTS)))]) / len(drawn)


def test_classes_are_roughly_uniform_and_unlabelled_excluded_by_default():
    sampler = ClassBalancedBatchSampler(LABELS, 16, num_batches=500, seed=0)
    shares = _class_shares(sampler)
    assert shares[0] == 0  # no unlabelled item
    assert np.allclose(shares[1:], 0.25, atol=0.02), shares


def test_power_one_follows_natural_frequencies_and_unlabelled_share():
    natural = ClassBalancedBatchSampler(LABELS, 16, num_batches=500, power=1.0, seed=0)
    assert np.allclose(_class_shares(natural)[1:], np.array(COUNTS) / sum(COUNTS), atol=0.02)
    mixed = ClassBalancedBatchSampler(LABELS, 16, num_batches=500, unlabelled_share=0.2, seed=0)
    shares = _class_shares(mixed)
    assert shares[0] == pytest.approx(0.2, abs=0.02)
    assert np.allclose(shares[1:], 0.2, atol=0.02)


def test_small_class_is_cycled_evenly_not_sampled_with_replacement():
    sampler = ClassBalancedBatchSampler(LABELS, 16, num_batches=100, seed=1)
    rare = Counter(i for batch in sampler for i in batch if LABELS[i] == 3)
    assert len(rare) == 5  # every rare item is used
    assert max(rare.values()) - min(rare.values()) <= 1  # one permutation after another


def test_default_epoch_length_and_determinism_per_seed_and_epoch():
    sampler = ClassBalancedBatchSampler(LABELS, 8, seed=4)
    assert len(sampler) == len(LABELS) // 8
    first = list(sampler)
    assert all(len(b) == 8 for b in first)
    assert list(ClassBalancedBatchSampler(LABELS, 8, seed=4)) == first
    assert list(ClassBalancedBatchSampler(LABELS, 8, seed=5)) != first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    sampler.set_epoch(1)
    assert list(sampler) == second


def test_resume_from_state_dict_gives_the_identical_remaining_sequence():
    sampler = ClassBalancedBatchSampler(LABELS, 8, seed=2)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(3)
    iterator = iter(sampler)
    consumed = [next(iterator) for _ in range(5)]
    assert consumed == full[:5]
    state = sampler.state_dict()
    assert state == {"epoch": 3, "start_batch": 5, "seed": 2}

    resumed = ClassBalancedBatchSampler(LABELS, 8, seed=999)
    resumed.load_state_dict(state)
    assert len(resumed) == len(full) - 5
    assert list(resumed) == full[5:]
    assert len(resumed) == len(full)  # the offset is used once; the next epoch is whole
    # The engine's path: it passes its own consumed-batch count.
    engine_like = ClassBalancedBatchSampler(LABELS, 8, seed=2)
    engine_like.set_epoch(3, start_batch=7)
    assert list(engine_like) == full[7:]


def test_two_replicas_shards_are_disjoint_and_union_is_the_single_process_batch():
    # 4 classes x 100 items, 10 global batches of 8: no class is cycled twice, so batches have no repeats.
    labels = [c for c in range(4) for _ in range(100)]
    one = list(ClassBalancedBatchSampler(labels, 8, num_batches=10, seed=3, num_replicas=1, rank=0))
    r0 = list(ClassBalancedBatchSampler(labels, 4, num_batches=10, seed=3, num_replicas=2, rank=0))
    r1 = list(ClassBalancedBatchSampler(labels, 4, num_batches=10, seed=3, num_replicas=2, rank=1))
    assert len(one) == len(r0) == len(r1) == 10
    for g, a, b in zip(one, r0, r1):
        assert not set(a) & set(b)
        assert a + b == g
    # Default epoch length follows the global batch, so it matches across process counts too.
    assert len(ClassBalancedBatchSampler(labels, 4, num_replicas=2, rank=1)) == len(
        ClassBalancedBatchSampler(labels, 8)) == 50


def test_works_as_a_dataloader_batch_sampler():
    sampler = ClassBalancedBatchSampler(LABELS, 4, num_batches=3, seed=0)
    loader = DataLoader(torch.arange(len(LABELS)), batch_sampler=sampler)
    batches = [b.tolist() for b in loader]
    assert batches == list(sampler)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"labels": [-1, -1, -1], "batch_size": 1}, "no item has a class label"),
    ({"labels": [0, 1, -2], "batch_size": 1}, "label -2 at item 2"),
    ({"labels": [0, 1, 0], "batch_size": 2, "num_replicas": 2, "rank": 0}, "lower batch_size"),
    ({"labels": [0, 1], "batch_size": 1, "unlabelled_share": 0.5}, "no item is unlabelled"),
    ({"labels": [0, 1], "batch_size": 1, "num_replicas": 2, "rank": 2}, "rank 2"),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassBalancedBatchSampler(**kwargs)
