"""Token budgets: split evaluation, voting and scoring batches so that no forward exceeds a set size.

A no-grad forward over R rows padded to T tokens holds activations proportional to R x T (and R x T x V
where logits are read). The training step is sized by ``data.batch_size`` x the longest example; with
``eval_batch_size`` larger and K prompt variants per file, an evaluation or vote forward can be many times
that (issue 28: the QLoRA 8-B recipe peaked at 28.5 GiB in the dev vote, 16.4 GiB in training).
``data.eval_max_tokens`` caps R x T; these helpers split a batch until each part fits, in order, so
results are the same as one forward (the tests compare).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def split_to_budget(items: Sequence[T], size: Callable[[Sequence[T]], int], max_tokens: int | None) -> list[list[T]]:
    """``items`` in consecutive groups with ``size(group) <= max_tokens``, halving a group until it fits
    (one item always passes: a single example longer than the budget still runs, alone)."""
    items = list(items)
    if not items:
        return []
    if max_tokens is None or len(items) == 1 or size(items) <= max_tokens:
        return [items]
    half = (len(items) + 1) // 2
    return split_to_budget(items[:half], size, max_tokens) + split_to_budget(items[half:], size, max_tokens)


def padded_tokens(batch: dict[str, Any]) -> int:
    """Rows x padded length of a collated batch: the largest 2-D ``*mask`` tensor in it (0 when none)."""
    sizes = [value.numel() for key, value in batch.items()
             if key.endswith("mask") and hasattr(value, "dim") and value.dim() == 2]
    return max(sizes, default=0)


def budget_batches(examples: Sequence[Any], collate: Callable[[list], dict[str, Any]],
                   max_tokens: int | None) -> Iterator[tuple[list[Any], dict[str, Any]]]:
    """(examples, collated batch) parts of ``examples`` whose padded tokens fit ``max_tokens``, in order."""
    for part in split_to_budget(examples, lambda group: padded_tokens(collate(list(group))), max_tokens):
        yield part, collate(part)
