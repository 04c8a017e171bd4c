"""Measured memory to hold the planner to: the peak of live tensor storage, on any device.

On a GPU ``torch.cuda.max_memory_allocated`` says how much a phase took; a CPU has no such counter, so
``LiveStorage`` counts it: a ``TorchDispatchMode`` that sees every tensor an operator returns, records its
storage once (views and in-place results share it) and drops it when the storage is freed. Storages that
exist before the mode starts (weights, optimizer states) are registered with ``hold`` so that views of them
are not counted again; their bytes count while they live. This is the allocator's view without its rounding
and caching: what the planner's formulas model (tests/test_phase_memory.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveStorage(TorchDispatchMode):
    """Bytes of live tensor storage: ``current`` now, ``peak`` since the last ``reset_peak``."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def hold(self, tensors: Iterable[torch.Tensor]) -> LiveStorage:
        """Count tensors that already exist (weights, gradients, optimizer states) while they live."""
        for tensor in tensors:
            self._add(tensor)
        self.peak = max(self.peak, self.current)
        return self

    def reset_peak(self) -> None:
        self._sweep()
        self.peak = self.current

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self._sweep()  # storages freed since the last operator
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._add(value)
        self.peak = max(self.peak, self.current)
        return out

    def _add(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._live and not self._live[key][0].expired():
            return
        size = storage.nbytes()
        self._live[key] = (StorageWeakRef(storage), size)
        self.current += size

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            self.current -= self._live.pop(key)[1]


def module_tensors(*modules: Any, optimizer: Any = None) -> list[torch.Tensor]:
    """Every parameter, gradient and buffer of ``modules`` and every tensor in ``optimizer``'s state."""
    tensors: list[torch.Tensor] = []
    for module in modules:
        for param in module.parameters():
            tensors.append(param)
            if param.grad is not None:
                tensors.append(param.grad)
        tensors += list(module.buffers())
    if optimizer is not None:
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors
