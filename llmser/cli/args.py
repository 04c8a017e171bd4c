"""argparse types that refuse out-of-range numbers at parse time (exit status 2 with the usage line).

``--batch-size 0`` would otherwise be accepted and end minutes later in a traceback from deep inside
the model; argparse reports a bad type before any work, naming the option::

    p.add_argument("--batch-size", type=positive_int, default=8)
"""

from __future__ import annotations

import argparse
import math


def _number(kind: type, text: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _at_least(kind: type, text: str, low: int, strict: bool) -> int | float:
    """``text`` as a ``kind`` number above ``low`` (``strict``: > low, else >= low), or an argparse error."""
    value = _number(kind, text)
    if value < low or (strict and value == low):
        raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, counts, strides)."""
    return _at_least(int, text, 1, strict=False)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (seeds)."""
    return _at_least(int, text, 0, strict=False)


def seed(text: str) -> int:
    """A random seed: an integer in [0, 2**32 - 1] (what numpy accepts)."""
    value = non_negative_int(text)
    if value > 2**32 - 1:
        raise argparse.ArgumentTypeError(f"must be <= {2**32 - 1}, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (seconds, sizes)."""
    return _at_least(float, text, 0, strict=True)


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    return _at_least(float, text, 0, strict=False)
