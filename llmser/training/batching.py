"""Shuffled, rank-sharded, resumable batches: the default order for every branch.

The global order depends only on (seed, epoch, global batch size), never on the number of
processes: step k's global batch is the same whether one process takes all of it or N processes
each take a contiguous 1/N of it. That is what makes a 2-process run reach the weights of a
1-process run with the same global batch, and what lets ``--resume`` continue mid-epoch exactly.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler


class ShuffledBatchSampler(Sampler[list[int]]):
    """Per-epoch permutation cut into global batches; this rank yields its slice of each.

    ``drop_last`` keeps every global batch full so all ranks take the same number of steps.
    """

    def __init__(self, num_items: int, batch_size: int, *, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = True):
        if num_items <= 0:
            raise ValueError("cannot batch an empty dataset; check the split has files")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.num_items = num_items
        self.batch_size = batch_size  # per process
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0  # batches of this epoch already consumed (resume)
        if self.global_batch_size > num_items and drop_last:
            raise ValueError(f"global batch {self.global_batch_size} (batch_size x processes) is larger than "
                             f"the {num_items} training items; lower batch_size")

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def _global_batches(self) -> list[np.ndarray]:
        order = np.arange(self.num_items)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items)
        size = self.global_batch_size
        stop = (self.num_items // size) * size if self.drop_last else self.num_items
        return [order[i:i + size] for i in range(0, stop, size)]

    def __iter__(self):
        for batch in self._global_batches()[self.start_batch:]:
            lo = self.rank * self.batch_size
            yield batch[lo:lo + self.batch_size].tolist()
        self.start_batch = 0

    def __len__(self) -> int:
        return len(self._global_batches()) - self.start_batch

    def batches_per_epoch(self) -> int:
        return len(self._global_batches())

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start_batch": self.start_batch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed = state.get("seed", self.seed)
        self.set_epoch(state["epoch"], state["start_batch"])
