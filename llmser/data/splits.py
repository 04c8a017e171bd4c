"""What each split argument is for, and the one rule that keeps test out of every choice.

Every split a command takes plays one of three roles:

- ``fit``: something learns from its labels (``data.train_split``, a classical model's ``--train-split``,
  the prior of ``predict-prior``, stacking's ``fit_split``);
- ``select``: something is chosen by its scores (``data.eval_split``: early stopping, the best checkpoint,
  the LLM branches' answer priors and vote; ``--dev-split``: regularisation);
- ``report``: it is predicted and scored, nothing else (``data.test_split``, ``predict_split``, ``--split``).

Test may only be reported on. A split is test when its name maps to a test split (``test``, ``Test1``,
``Test2``, ``Test3`` in any letter case, and their folds ``test[k/K]``/``test[^k/K]``) or, given the corpus,
when any of its files is in a test split. :func:`check_split_roles` refuses a fit or select split that is
test **before any work**, naming the argument and the fix; an explicit opt-in (``data.allow_test_fit``,
``--allow-test-fit``) lets a deliberate final refit through with a loud warning, and what it returns is
recorded in the run's outputs. :func:`splits_overlap` is the one answer to "do these two splits share
files", by name (folds included) or, given the corpus, by file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from llmser.data.folds import parse_split
from llmser.utils.logging import get_logger

logger = get_logger(__name__)

Role = Literal["fit", "select", "report"]
#: Lower-cased names that are a test split of the release (``test`` is llmser's alias of Test1).
TEST_NAMES = frozenset({"test", "test1", "test2", "test3"})
#: Other names of the release's splits, lower-cased (``dev`` is Development; ``test`` is Test1, as the reader resolves it).
ALIASES = {"dev": "development", "valid": "development", "validation": "development", "test": "test1"}
ROLE_WORDS = {"fit": "learns from", "select": "chooses on", "report": "reports"}
_FIXES = {"fit": "fit on train (or dev, or a fold of dev such as 'dev[^0/5]')",
          "select": "select on dev (or a fold of dev such as 'dev[0/5]')"}


class SplitRoleError(ValueError):
    """A split argument that would fit or select on test; the message names each argument and the fix."""


@dataclass(frozen=True)
class SplitUse:
    """One split argument as the user wrote it: ``SplitUse("data.eval_split", "test", "select")``."""

    argument: str
    split: str
    role: Role


def canonical(name: str) -> str:
    """A base split name as the release spells it, lower-cased, aliases resolved (``Dev`` -> ``development``)."""
    lowered = name.strip().lower()
    return ALIASES.get(lowered, lowered)


def is_test_name(name: str) -> bool:
    """Whether ``name`` (a fold selector included) names a test split, without a corpus."""
    try:
        base, _ = parse_split(name)
    except ValueError:
        return False  # a malformed selector is refused where the split is resolved
    return base.strip().lower() in TEST_NAMES


def splits_overlap(a: str, b: str, corpus: Any = None) -> bool:
    """Whether splits ``a`` and ``b`` share files: by file when ``corpus`` is given, else by name (the same
    base split, aliases and letter case resolved, with folds that overlap)."""
    if corpus is not None:
        return bool(split_files(corpus, a) & split_files(corpus, b))
    (base_a, sel_a), (base_b, sel_b) = parse_split(a), parse_split(b)
    if canonical(base_a) != canonical(base_b):
        return False
    if sel_a is None or sel_b is None:
        return True
    return sel_a.overlaps(sel_b)


def split_files(corpus: Any, split: str) -> set[str]:
    """The file names of ``split`` (folds selected) in ``corpus``."""
    return {u.file_name for u in corpus.utterances(corpus.resolve_split(split), task="all")}


def test_files(corpus: Any) -> set[str]:
    """Every file of every test split of ``corpus``."""
    return {u.file_name for u in corpus.items if u.split.strip().lower() in TEST_NAMES}


def test_overlap(use: SplitUse, corpus: Any = None, tests: set[str] | None = None) -> str | None:
    """Why ``use`` is test (a sentence), or None when it is not."""
    if is_test_name(use.split):
        return f"{use.split!r} is a test split"
    if corpus is None:
        return None
    tests = test_files(corpus) if tests is None else tests
    files = split_files(corpus, use.split)
    shared = files & tests
    if shared:
        return f"{len(shared)} of its {len(files)} files are test files (e.g. {sorted(shared)[0]})"
    return None


def leaks(uses: Sequence[SplitUse], corpus: Any = None) -> list[tuple[SplitUse, str]]:
    """The uses that fit or select on test, each with why it is test and what to do instead."""
    tests = test_files(corpus) if corpus is not None else None
    found = []
    for use in uses:
        why = test_overlap(use, corpus, tests) if use.split and use.role != "report" else None
        if why:
            found.append((use, f"{use.argument}={use.split!r} {ROLE_WORDS[use.role]} test: {why}. Test may only be "
                               f"reported on; {_FIXES[use.role]}"))
    return found


def check_split_roles(uses: Sequence[SplitUse], corpus: Any = None, *, allow_test_fit: bool = False,
                      flag: str | None = "--allow-test-fit") -> dict[str, Any]:
    """Refuse (before any work) every split that would fit or select on test; log each split by its role.

    Returns what outputs record: each argument's split and role, and, when ``allow_test_fit`` let a test
    split through, ``test_fit``: the arguments that used test for more than a report.
    """
    uses = [u for u in uses if u.split]
    found = leaks(uses, corpus)
    if found and not allow_test_fit:
        refit = (f"\nA deliberate final refit on test needs {flag} (it is then recorded in the run's metrics.json "
                 "and model card)." if flag else "")
        raise SplitRoleError("\n  - ".join(["test would be used for more than a report:", *(m for _, m in found)])
                             + refit)
    record: dict[str, Any] = {"splits": {u.argument: {"split": u.split, "role": u.role} for u in uses}}
    for u in uses:
        logger.info("%s split: %s (%s)", u.role, u.split, u.argument)
    if found:
        record["test_fit"] = [f"{u.argument}={u.split} ({u.role})" for u, _ in found]
        logger.warning("!!! %s: test is used to %s. Its scores on test are NOT a held-out result; this is recorded "
                       "in metrics.json and the model card. !!!", flag, "; ".join(record["test_fit"]))
    return record
