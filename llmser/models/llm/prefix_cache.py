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

    def __len__(self) -> int:
        return len(self._states)

    def clear(self) -> None:
        self._states.clear()

    @torch.no_grad()
    def batch(self, model: Any, prefixes: Sequence[Sequence[int]]) -> tuple[Any, torch.Tensor]:
        """A ``DynamicCache`` holding row i's prefix, left-padded to the longest (N, P), and its (N, P) mask."""
        from transformers import DynamicCache

        keys = [tuple(int(t) for t in p) for p in prefixes]
        if any(not k for k in keys):
            raise ValueError("an empty prompt prefix cannot be cached; the template must start with some text")
        self._compute(model, [k for k in dict.fromkeys(keys) if k not in self._states])
        device = next(model.parameters()).device
        width = max(len(k) for k in keys)
        mask = torch.zeros((len(keys), width), dtype=torch.long, device=device)
        for i, k in enumerate(keys):
            mask[i, width - len(k):] = 1
        layers = []
        for layer in range(len(self._states[keys[0]])):
            k0, v0 = self._states[keys[0]][layer]
            k_out = k0.new_zeros((len(keys), k0.shape[1], width, k0.shape[3]))
            v_out = v0.new_zeros((len(keys), v0.shape[1], width, v0.shape[3]))
            for i, key in enumerate(keys):
                k, v = self._states[key][layer]
                k_out[i, :, width - len(key):] = k[0]
                v_out[i, :, width - len(key):] = v[0]
            layers.append((k_out, v_out))
        for key in keys:
            self._states.move_to_end(key)
        while len(self._states) > self.max_entries:
            self._states.popitem(last=False)  # the least recently used; this call's prefixes were used last
        return DynamicCache(ddp_cache_data=layers), mask

    def _compute(self, model: Any, missing: list[tuple[int, ...]]) -> None:
        from llmser.models.llm.scoring import cache_of

        device = next(model.parameters()).device
        for key in missing:  # once per prefix for the model's lifetime: no need to batch them
            out = model(input_ids=torch.tensor([key], device=device), use_cache=True, logits_to_keep=1)
            self._states[key] = [(layer.keys, layer.values) for layer in cache_of(out).layers]
