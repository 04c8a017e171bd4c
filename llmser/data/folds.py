"""Speaker-disjoint folds of a split, named in the split itself: ``dev[0/5]`` and ``dev[^0/5]``.

``SPLIT[k/K]`` is fold ``k`` (0-based) of ``K`` folds of ``SPLIT``; ``SPLIT[^k/K]`` is the other ``K-1``.
Anything that takes a split name takes these, so out-of-sample protocols need no special code:
cross-fitting trains on ``train[^k/5]`` and predicts ``train[k/5]``; a meta-model (fusion) fits on
``dev[^0/5]`` and stops early on ``dev[0/5]``.

Folds are speaker-disjoint, so no speaker's voice is on both sides (MSP-Podcast's own splits are
speaker-independent, and a within-speaker split would flatter every score). Speakers are dealt to the
smallest fold first, largest speaker first, ties broken by a hash of the speaker id, so the folds are
the same on every machine and run. Files whose speaker is unknown are dealt one by one.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

_SELECTOR = re.compile(r"^(?P<base>[^\[\]]+)\[(?P<rest>\^?)(?P<fold>\d+)/(?P<folds>\d+)\]$")
UNKNOWN_SPEAKERS = {"", "unknown", "none", "nan"}


@dataclass(frozen=True)
class FoldSelector:
    base: str
    fold: int
    folds: int
    complement: bool  # True: every fold but ``fold``

    def name(self, base: str | None = None) -> str:
        return f"{base or self.base}[{'^' if self.complement else ''}{self.fold}/{self.folds}]"

    def overlaps(self, other: FoldSelector | None) -> bool:
        """Whether two selections of the same base split share files (``other`` None = the whole split)."""
        if other is None:
            return True
        if other.folds != self.folds:
            return True  # different partitions: assume they share files
        if self.complement and other.complement:
            return self.folds > 2 or self.fold == other.fold
        if self.complement != other.complement:
            return self.fold != other.fold
        return self.fold == other.fold


def parse_split(name: str) -> tuple[str, FoldSelector | None]:
    """``"dev[^1/5]"`` -> (``"dev"``, selector); a plain name -> (name, None). Bad selectors raise ValueError."""
    text = name.strip()
    if "[" not in text and "]" not in text:
        return text, None
    match = _SELECTOR.match(text)
    if not match:
        raise ValueError(f"split {name!r}: write a fold as SPLIT[k/K] (fold k of K) or SPLIT[^k/K] (all but fold k)")
    fold, folds = int(match["fold"]), int(match["folds"])
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"split {name!r}: need K >= 2 and 0 <= k < K")
    return match["base"].strip(), FoldSelector(match["base"].strip(), fold, folds, match["rest"] == "^")


def file_stem(split: str) -> str:
    """A file name for a split's outputs: ``Train[^2/5]`` -> ``Train[^2of5]`` (no path separator)."""
    return split.replace("/", "of")


def fold_of_each(speakers: Sequence[str], file_names: Sequence[str], folds: int) -> list[int]:
    """The fold of each file: speaker-disjoint, sizes as even as speakers allow, deterministic."""
    groups: Counter[str] = Counter()
    keys = []
    for speaker, file_name in zip(speakers, file_names):
        key = f"file:{file_name}" if str(speaker).strip().lower() in UNKNOWN_SPEAKERS else f"speaker:{speaker}"
        keys.append(key)
        groups[key] += 1
    sizes = [0] * folds
    assigned: dict[str, int] = {}
    for key in sorted(groups, key=lambda k: (-groups[k], _stable_hash(k))):
        target = min(range(folds), key=lambda f: (sizes[f], f))
        assigned[key] = target
        sizes[target] += groups[key]
    return [assigned[k] for k in keys]


def select(items: Sequence, selector: FoldSelector | None) -> list:
    """The items (utterances with ``speaker`` and ``file_name``) that ``selector`` keeps."""
    if selector is None:
        return list(items)
    folds = fold_of_each([u.speaker for u in items], [u.file_name for u in items], selector.folds)
    return [u for u, f in zip(items, folds) if (f == selector.fold) != selector.complement]


def _stable_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()
