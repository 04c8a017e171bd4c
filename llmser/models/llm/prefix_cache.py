"""Key/value states of prompt prefixes that do not depend on the input, computed once and reused.

An audio-LLM prompt variant puts its instruction (system turn, definitions, label list) before the
speech, so the instruction's key/value states are the same for every clip: ``PrefixCache`` runs each
distinct prefix once and hands out batches of them for ``score_after_prefix``. This is what makes voting
over prompt variants cheap - every clip then pays only for its speech tokens, the short prompt tail and
the answers, per variant.

The cached states belong to the weights they were computed with: the owner clears the cache whenever
the weights may change (entering training mode, loading an adapter).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch


class PrefixCache:
    """Least-recently-used store of per-prefix key/value states (one entry per distinct token sequence)."""

    def __init__(self, max_entries: int = 64):
        self.max_entries = max_entries
        self._states: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._derived: OrderedDict[Any, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def clear(self) -> None:
        self._states.clear()
        self._derived.clear()

    def derived(self, key: Any, compute: Any, max_entries: int = 8) -> Any:
        """``compute()`` memoised under ``key``: something built from cached states, dropped with them."""
        if key not in self._derived:
            self._derived[key] = compute()
            while len(self._derived) > max_entries:
                self._derived.popitem(last=False)
        self._derived.move_to_end(key)
        return self._derived[key]

    @torch.no_grad()
    def states(self, model: Any, prefixes: Sequence[Sequence[int]]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Per-layer (keys, values) (1, heads, P, d) of each given prefix, computed on first use."""
        keys = [tuple(int(t) for t in p) for p in prefixes]
        if any(not k for k in keys):
            raise ValueError("an empty prompt prefix cannot be cached; the template must start with some text")
        self._compute(model, [k for k in dict.fromkeys(keys) if k not in self._states])
        found = [self._states[k] for k in keys]
        for key in keys:
            self._states.move_to_end(key)
        while len(self._states) > self.max_entries:
            self._states.popitem(last=False)  # the least recently used; this call's prefixes were used last
        return found

    @torch.no_grad()
    def batch(self, model: Any, prefixes: Sequence[Sequence[int]]) -> tuple[Any, torch.Tensor]:
        """A ``DynamicCache`` holding row i's prefix, left-padded to the longest (N, P), and its (N, P) mask."""
        from torch.nn.functional import pad
        from transformers import DynamicCache

        keys = [tuple(int(t) for t in p) for p in prefixes]
        distinct = list(dict.fromkeys(keys))
        states = self.states(model, distinct)
        device = next(model.parameters()).device
        rows = torch.tensor([distinct.index(k) for k in keys], device=device)
        width = max(len(k) for k in distinct)
        mask = torch.zeros((len(distinct), width), dtype=torch.long, device=device)
        for i, k in enumerate(distinct):
            mask[i, width - len(k):] = 1
        layers = []  # each distinct prefix left-padded once, then picked for every row that reads it
        for layer in range(len(states[0])):
            padded = [[pad(t, (0, 0, width - t.shape[2], 0)) for t in s[layer]] for s in states]
            layers.append(tuple(torch.cat(parts)[rows] for parts in zip(*padded)))  # keys, values (N, h, P, d)
        return DynamicCache(ddp_cache_data=layers), mask[rows]

    def _compute(self, model: Any, missing: list[tuple[int, ...]]) -> None:
        device = next(model.parameters()).device
        for key in missing:  # once per prefix for the model's lifetime: no need to batch them
            out = model(input_ids=torch.tensor([key], device=device), use_cache=True, logits_to_keep=1)
            self._states[key] = [(layer.keys, layer.values) for layer in cache_of(out).layers]


def cache_of(output: Any) -> Any:
    """The key/value cache of a model output."""
    # transformers 5 names the key/value cache ``cache``; 4.x called it ``past_key_values``.
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
