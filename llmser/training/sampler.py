"""Class-balanced batches against MSP-Podcast's imbalance, sharded across processes and resumable.

Neutral and Happy make up most of the training split while Fear and Contempt are a few percent, so a
shuffled batch rarely shows the rare classes that macro-F1 weighs equally. This sampler draws each
batch slot's class first (uniformly, or with probability proportional to ``n_c ** power``) and then an
item of that class. Items of a class are taken from a fresh permutation that is used up before any item
repeats, so a small class is cycled through evenly rather than sampled with replacement.

Like ``batching.ShuffledBatchSampler``, the order depends only on (labels, seed, epoch, global batch
size): step k's global batch is the same whether one process takes all of it or N processes each take
a contiguous 1/N of it, and ``set_epoch(epoch, start_batch)`` resumes mid-epoch exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Yields this process's share (``batch_size`` indices) of each class-balanced global batch.

    Args:
        labels: class index per item, -1 for items without a task-1 label (e.g. X/O utterances kept
            for the attribute task).
        batch_size: per process; the global batch is ``batch_size * num_replicas``.
        num_batches: global batches per epoch; default ``len(labels) // global batch``, i.e. an epoch
            draws as many items as the data set holds.
        power: class probability proportional to ``n_c ** power``: 0 = balanced, 1 = natural frequencies.
        unlabelled_share: probability that a slot takes an unlabelled item (drawn uniformly among them)
            instead of a class-balanced one; 0 excludes unlabelled items.
        num_replicas, rank: default to torch.distributed's world size and rank when it is initialised.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, *, num_batches: int | None = None,
                 power: float = 0.0, unlabelled_share: float = 0.0, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None):
        num_replicas, rank = _distributed_defaults(num_replicas, rank)
        self.labels = np.asarray(labels, dtype=np.int64)  # (N,)
        _check_arguments(self.labels, batch_size, power, unlabelled_share, num_replicas, rank)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.power = power
        self.unlabelled_share = unlabelled_share
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0  # global batches of this epoch already consumed (resume)
        self._yielded = 0  # batches handed out by the current iteration, for state_dict()
        num_classes = int(self.labels.max()) + 1 if (self.labels >= 0).any() else 0
        self._pools = [np.flatnonzero(self.labels == c) for c in range(num_classes)]  # items per class
        self._unlabelled = np.flatnonzero(self.labels == -1)
        self._pool_probs = self._pool_probabilities()
        default = len(self.labels) // self.global_batch_size
        self.num_batches = default if num_batches is None else num_batches
        if self.num_batches <= 0:
            raise ValueError(f"an epoch would have {self.num_batches} batches: the global batch "
                             f"{self.global_batch_size} (batch_size x processes) exceeds the {len(self.labels)} "
                             "training items; lower batch_size or pass num_batches")

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def class_probabilities(self) -> np.ndarray:
        """Probability that a labelled slot draws each class: (C,), zero for classes with no items."""
        probs = self._pool_probs[: len(self._pools)]
        return probs / probs.sum()

    def _pool_probabilities(self) -> np.ndarray:
        """(C + 1,): the classes, then the unlabelled pool as the last entry."""
        counts = np.array([len(p) for p in self._pools], dtype=np.float64)
        mass = np.where(counts > 0, counts ** self.power, 0.0)  # 0 ** 0 is 1 in numpy: keep empty classes out
        labelled = mass / mass.sum() * (1.0 - self.unlabelled_share) if mass.sum() > 0 else mass
        return np.append(labelled, self.unlabelled_share)

    def _epoch_order(self) -> np.ndarray:
        """Every global batch of the epoch: (num_batches, global_batch) item indices."""
        rng = np.random.default_rng([self.seed, self.epoch])
        slots = self.num_batches * self.global_batch_size
        pool_of_slot = rng.choice(len(self._pool_probs), size=slots, p=self._pool_probs)  # (slots,)
        order = np.empty(slots, dtype=np.int64)
        for p, pool in enumerate([*self._pools, self._unlabelled]):
            where = np.flatnonzero(pool_of_slot == p)
            if where.size:
                # Each pool has its own stream so its items do not depend on how other pools were drawn.
                order[where] = _cycled_permutations(pool, where.size, np.random.default_rng([self.seed, self.epoch,
                                                                                             p + 1]))
        return order.reshape(self.num_batches, self.global_batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._epoch_order()
        lo = self.rank * self.batch_size
        start, self.start_batch = self.start_batch, 0  # the resume offset is used once
        self._yielded = start
        for batch in batches[start:]:
            self._yielded += 1
            yield batch[lo:lo + self.batch_size].tolist()

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    def batches_per_epoch(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order (call before each epoch) and skip its first ``start_batch`` batches."""
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch {start_batch} is outside the epoch's {self.num_batches} batches")
        self.epoch = epoch
        self.start_batch = start_batch
        self._yielded = start_batch

    def state_dict(self) -> dict:
        """Epoch and position in it. Counts the batches this sampler has yielded; a DataLoader with
        workers prefetches ahead, so a training loop should resume from its own consumed-batch count
        through ``set_epoch(epoch, start_batch)`` (the engine does)."""
        return {"epoch": self.epoch, "start_batch": self._yielded, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed = state.get("seed", self.seed)
        self.set_epoch(state["epoch"], state["start_batch"])


def _cycled_permutations(pool: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` items of ``pool``: one permutation after another, so no item repeats before all are used."""
    rounds = -(-size // len(pool))  # ceil
    return np.concatenate([rng.permutation(pool) for _ in range(rounds)])[:size]


def _distributed_defaults(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    if num_replicas is not None and rank is not None:
        return num_replicas, rank
    import torch.distributed as dist

    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    return num_replicas, rank


def _check_arguments(labels: np.ndarray, batch_size: int, power: float, unlabelled_share: float,
                     num_replicas: int, rank: int) -> None:
    issues = []
    if labels.ndim != 1 or labels.size == 0:
        issues.append("labels must be a non-empty list of class indices (-1 = no label); the split is empty")
    elif (labels < -1).any():
        bad = int(np.flatnonzero(labels < -1)[0])
        issues.append(f"label {int(labels[bad])} at item {bad} is invalid; use a class index or -1 for no label")
    if batch_size <= 0:
        issues.append(f"batch_size must be positive, got {batch_size}")
    if power < 0:
        issues.append(f"power must be >= 0 (0 = balanced, 1 = natural frequencies), got {power}")
    if not 0.0 <= unlabelled_share < 1.0:
        issues.append(f"unlabelled_share must be in [0, 1), got {unlabelled_share}")
    if num_replicas <= 0 or not 0 <= rank < num_replicas:
        issues.append(f"rank {rank} is not in [0, num_replicas={num_replicas})")
    if labels.ndim == 1 and labels.size:
        if not (labels >= 0).any():
            issues.append("no item has a class label; a class-balanced sampler needs task-1 labels "
                          "(use the shuffled sampler for attribute-only training)")
        if unlabelled_share > 0 and not (labels == -1).any():
            issues.append(f"unlabelled_share={unlabelled_share} but no item is unlabelled; set it to 0")
    if issues:
        raise ValueError("ClassBalancedBatchSampler: " + "; ".join(issues))
