"""Challenge submission files, in the format of the official baseline (msplabresearch/MSP-Podcast_Challenge).

- Task 1: header ``FileName,EmoClass``, one row per test file with a class CODE (A, S, H, U, F, D, C, N),
  sorted by FileName.
- Task 1, as probabilities: ``task1_probabilities.csv`` with header
  ``FileName,Angry,Sad,Happy,Surprise,Fear,Disgust,Contempt,Neutral`` (the class columns of the
  baseline's categorical label file, ``process_labels_for_categorical.py``), one row of eight
  probabilities per test file, sorted by FileName. Written beside the class file whenever the
  predictions carry probabilities, so either form can be submitted; the validator also accepts the
  codes ``FileName,A,S,H,U,F,D,C,N`` as the header.
- Task 2: header ``FileName,EmoAct,EmoVal,EmoDom``, one row per test file, values clipped to [1, 7],
  sorted by FileName.

Writers refuse what the challenge would reject rather than writing a file that fails on upload. The
validators report every problem at once (wrong header, missing / extra / duplicate files, invalid codes
such as X or O, non-numeric or NaN attributes), naming rows, so a submission is fixed in one pass::

    llmser validate-submission runs/x/task1_predictions.csv --corpus /data/MSP-Podcast --split test
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmser.schema import (
    ATTRIBUTE_MAX,
    ATTRIBUTE_MIN,
    CLASS_CODES,
    CLASS_NAMES,
    EXTRA_CODES,
    NUM_CLASSES,
    normalise_class,
)
from llmser.utils.io import atomic_open, missing
from llmser.utils.logging import get_logger

logger = get_logger(__name__)

TASK1_HEADER: list[str] = ["FileName", "EmoClass"]
TASK2_HEADER: list[str] = ["FileName", "EmoAct", "EmoVal", "EmoDom"]
TASK1_FILE = "task1_predictions.csv"
TASK2_FILE = "task2_predictions.csv"
TASK1_PROBS_HEADER: list[str] = ["FileName", *CLASS_NAMES]
#: Also accepted when validating: the same columns named by the class codes.
TASK1_PROBS_CODE_HEADER: list[str] = ["FileName", *CLASS_CODES]
TASK1_PROBS_FILE = "task1_probabilities.csv"
#: How far a row of probabilities may sum from 1 (eight values rounded to 4 decimals stay within 4e-4).
PROB_SUM_TOLERANCE = 1e-3
#: Row problems listed before the rest are only counted; names shown for missing/extra files.
MAX_LISTED_PROBLEMS = 20
MAX_LISTED_NAMES = 5


class SubmissionError(ValueError):
    """A submission file (or its content) that the challenge would reject; lists every problem."""


# ----------------------------------------------------------------------------- writing


def write_task1(path: str | Path, file_names: Sequence[str], classes: Sequence[str]) -> Path:
    """Write the task-1 CSV, sorted by FileName; refuses duplicates and anything but the 8 codes."""
    names, codes = [str(n) for n in file_names], [str(c) for c in classes]
    problems = _check_names(names, len(codes))
    problems += [
        f"{where}: {message}"
        for where, message in ((f"file {name!r}", _code_problem(code)) for name, code in zip(names, codes))
        if message
    ]
    _raise("task 1 submission", problems)
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(TASK1_HEADER)
        writer.writerows(sorted(zip(names, codes)))
    return Path(path)


def write_task2(path: str | Path, file_names: Sequence[str], attributes: Any) -> Path:
    """Write the task-2 CSV (arousal, valence, dominance), clipped to [1, 7] and sorted by FileName."""
    names = [str(n) for n in file_names]
    values = np.asarray(attributes, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != 3:
        raise SubmissionError(f"task 2 attributes must have shape (N, 3), got {values.shape}")
    problems = _check_names(names, values.shape[0])
    bad_rows = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if bad_rows.size:
        examples = [names[i] for i in bad_rows[:MAX_LISTED_NAMES] if i < len(names)]
        problems.append(f"{bad_rows.size} file(s) have NaN/inf attributes, e.g. {examples}")
    _raise("task 2 submission", problems)
    values = np.clip(values, ATTRIBUTE_MIN, ATTRIBUTE_MAX)
    return _write_numeric_rows(path, TASK2_HEADER, names, values)


def _write_numeric_rows(path: str | Path, header: Sequence[str], names: list[str], values: np.ndarray) -> Path:
    """One row per file, sorted by FileName, its numbers written exactly (``repr``), atomically."""
    order = sorted(range(len(names)), key=names.__getitem__)
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for i in order:
            writer.writerow([names[i], *(repr(float(v)) for v in values[i])])
    return Path(path)


def write_task1_probabilities(path: str | Path, file_names: Sequence[str], probs: Any) -> Path:
    """Write the eight class probabilities per file (N, 8), sorted by FileName; refuses non-probabilities."""
    names = [str(n) for n in file_names]
    values = np.asarray(probs, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != NUM_CLASSES:
        raise SubmissionError(f"task 1 probabilities must have shape (N, {NUM_CLASSES}), got {values.shape}")
    problems = _check_names(names, values.shape[0])
    problems += _probability_problems(values, names)
    _raise("task 1 probabilities", problems)
    return _write_numeric_rows(path, TASK1_PROBS_HEADER, names, values)


def _probability_problems(values: np.ndarray, names: Sequence[str]) -> list[str]:
    """Rows (N, 8) that are not probability vectors: non-finite, negative, or not summing to 1."""
    problems = []
    checks = (
        (~np.isfinite(values).all(axis=1), "NaN/inf probabilities"),
        ((values < 0).any(axis=1), "negative probabilities (apply a softmax to logits)"),
        (np.abs(values.sum(axis=1) - 1.0) > PROB_SUM_TOLERANCE,
         f"probabilities that do not sum to 1 (tolerance {PROB_SUM_TOLERANCE}; apply a softmax to logits)"),
    )
    reported = np.zeros(values.shape[0], dtype=bool)
    for bad, what in checks:
        rows = np.flatnonzero(bad & ~reported)
        reported |= bad
        if rows.size:
            examples = [names[i] for i in rows[:MAX_LISTED_NAMES] if i < len(names)]
            problems.append(f"{rows.size} file(s) have {what}, e.g. {examples}")
    return problems


def write_submissions(out_dir: str | Path, predictions: Any) -> dict[str, Path]:
    """Write ``task1_predictions.csv``, ``task1_probabilities.csv`` and/or ``task2_predictions.csv``.

    Whichever ``predictions`` covers: the probability file needs ``predictions.probs``.
    """
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    if predictions.classes is not None:
        written["task1"] = write_task1(out_dir / TASK1_FILE, predictions.file_names, predictions.classes)
    if getattr(predictions, "probs", None) is not None:
        written["task1_probabilities"] = write_task1_probabilities(out_dir / TASK1_PROBS_FILE,
                                                                   predictions.file_names, predictions.probs)
    if predictions.attributes is not None:
        written["task2"] = write_task2(out_dir / TASK2_FILE, predictions.file_names, predictions.attributes)
    if not written:
        raise SubmissionError("predictions have neither classes nor attributes; nothing to submit")
    return written


# ----------------------------------------------------------------------------- reading and validation


def read_task1(path: str | Path) -> dict[str, str]:
    """FileName -> class code, in file order; raises SubmissionError listing every format problem."""
    return validate_task1(path, None)


def read_task2(path: str | Path) -> dict[str, tuple[float, float, float]]:
    """FileName -> (arousal, valence, dominance), in file order; raises on any format problem."""
    return validate_task2(path, None)


def validate_task1(path: str | Path, expected_files: Iterable[str] | None = None) -> dict[str, str]:
    """Check a task-1 file (and, given ``expected_files``, that it covers exactly them); returns its rows."""
    body, header_problems, problems = _read(path, TASK1_HEADER)
    rows: dict[str, str] = {}
    for line, name, cells in body:
        message = _code_problem(cells[1])
        if message:
            problems.append(f"row {line} ({name}): {message}")
        rows.setdefault(name, cells[1])
    # File-level problems first, so the cap on listed problems never hides them behind row problems.
    _raise(path, header_problems + _coverage([name for _, name, _ in body], expected_files) + problems)
    return rows


def validate_task2(
    path: str | Path, expected_files: Iterable[str] | None = None
) -> dict[str, tuple[float, float, float]]:
    """Check a task-2 file (and, given ``expected_files``, its coverage); returns its rows.

    Values outside [1, 7] are legal input to the CCC, so they only log a warning (``write_task2`` clips).
    """
    body, header_problems, problems = _read(path, TASK2_HEADER)
    rows: dict[str, tuple[float, float, float]] = {}
    out_of_range = []
    for line, name, cells in body:
        try:
            values = tuple(float(v) for v in cells[1:])
        except ValueError:
            problems.append(f"row {line} ({name}): non-numeric attributes {cells[1:]}")
            continue
        if not all(math.isfinite(v) for v in values):
            problems.append(f"row {line} ({name}): NaN or infinite attributes {cells[1:]}")
            continue
        if not all(ATTRIBUTE_MIN <= v <= ATTRIBUTE_MAX for v in values):
            out_of_range.append(line)
        rows.setdefault(name, values)  # type: ignore[arg-type]
    _raise(path, header_problems + _coverage([name for _, name, _ in body], expected_files) + problems)
    if out_of_range:
        logger.warning(
            "%s: %d row(s) have attributes outside [%g, %g] (first: row %d); write_task2 clips them",
            path,
            len(out_of_range),
            ATTRIBUTE_MIN,
            ATTRIBUTE_MAX,
            out_of_range[0],
        )
    return rows


def validate_task1_probabilities(
    path: str | Path, expected_files: Iterable[str] | None = None
) -> dict[str, tuple[float, ...]]:
    """Check a task-1 probability file (and, given ``expected_files``, its coverage); returns its rows.

    The header is ``FileName`` then the eight class names (or codes) in schema order; every row must
    hold eight finite, non-negative numbers summing to 1.
    """
    header = _header(path)
    expected_header = TASK1_PROBS_CODE_HEADER if header == TASK1_PROBS_CODE_HEADER else TASK1_PROBS_HEADER
    body, header_problems, problems = _read(path, expected_header)
    rows: dict[str, tuple[float, ...]] = {}
    for line, name, cells in body:
        try:
            values = np.array([float(v) for v in cells[1:]])
        except ValueError:
            problems.append(f"row {line} ({name}): non-numeric probabilities {cells[1:]}")
            continue
        row_problems = _probability_problems(values[None, :], [name])
        problems += [f"row {line}: {message}" for message in row_problems]
        if not row_problems:
            rows.setdefault(name, tuple(float(v) for v in values))
    _raise(path, header_problems + _coverage([name for _, name, _ in body], expected_files) + problems)
    return rows


def validate_file(path: str | Path, expected_files: Iterable[str] | None = None) -> tuple[str, dict[str, Any]]:
    """Validate any submission file, its kind told by the header: ("task1" | "task1_probabilities" | "task2", rows)."""
    header = _header(path)
    if "EmoClass" in header:
        return "task1", validate_task1(path, expected_files)
    if any(column in header for column in (*CLASS_NAMES, *CLASS_CODES)):
        return "task1_probabilities", validate_task1_probabilities(path, expected_files)
    return "task2", validate_task2(path, expected_files)


# ----------------------------------------------------------------------------- helpers


def _header(path: str | Path) -> list[str]:
    """The stripped first row, or [] (the full readers report unreadable files with the fix)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            return [cell.strip() for cell in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _code_problem(code: str) -> str | None:
    """Why ``code`` is not a valid task-1 answer, or None."""
    if code in CLASS_CODES:
        return None
    if code in EXTRA_CODES:
        return (
            f"EmoClass {code!r} (no agreement / other) is not a task-1 class; "
            f"predict one of {', '.join(CLASS_CODES)}"
        )
    suggestion = normalise_class(code) if code else None
    hint = f"; did you mean {suggestion!r}?" if suggestion in CLASS_CODES else ""
    return f"EmoClass {code!r} is not one of {', '.join(CLASS_CODES)}{hint}"


def _check_names(names: list[str], n_values: int) -> list[str]:
    problems = []
    if n_values != len(names):
        problems.append(f"{len(names)} file names but {n_values} predictions")
    if not names:
        problems.append("no files to write")
    if any(not name.strip() for name in names):
        problems.append("empty file name(s)")
    # the reader strips cells, so such names would not read back as written
    odd = [name for name in names if name.strip() and (name != name.strip() or "\n" in name or "\r" in name)]
    if odd:
        problems.append(f"{len(odd)} file name(s) with surrounding spaces or line breaks, e.g. "
                        f"{odd[:MAX_LISTED_NAMES]}; pass the names as they appear in the corpus")
    duplicates = _repeated(names)
    if duplicates:
        problems.append(f"{len(duplicates)} duplicate file name(s), e.g. {duplicates[:MAX_LISTED_NAMES]}")
    return problems


def _read(
    path: str | Path, header: list[str]
) -> tuple[list[tuple[int, str, list[str]]], list[str], list[str]]:
    """Rows as (line number, FileName, stripped cells), then file-level and row-level format problems."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"submission file {path} {missing(path)}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError as exc:
        raise SubmissionError(f"{path}: not UTF-8 text ({exc}); write it with write_task1/write_task2 "
                              "or re-save it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise SubmissionError(f"{path}: not a readable CSV file ({exc}); write it with write_task1/write_task2") from None
    file_problems: list[str] = []
    found = [cell.strip() for cell in rows[0]] if rows else []
    if found != header:
        file_problems.append(
            f"header must be {','.join(header)}; found {','.join(found) if found else 'nothing'}"
        )
    problems: list[str] = []
    body = []
    for line, row in enumerate(rows[1:], start=2):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if len(cells) != len(header):
            problems.append(f"row {line}: {len(cells)} fields, expected {len(header)} ({','.join(header)})")
            continue
        if not cells[0]:
            problems.append(f"row {line}: empty FileName")
            continue
        body.append((line, cells[0], cells))
    if rows and not body and not problems:
        file_problems.append("no rows after the header")
    return body, file_problems, problems


def _coverage(names: list[str], expected_files: Iterable[str] | None) -> list[str]:
    problems = []
    duplicates = _repeated(names)
    if duplicates:
        problems.append(f"{len(duplicates)} duplicate FileName(s), e.g. {duplicates[:MAX_LISTED_NAMES]}")
    if expected_files is not None:
        expected, present = set(expected_files), set(names)
        missing, extra = sorted(expected - present), sorted(present - expected)
        if missing:
            problems.append(
                f"{len(missing)} of {len(expected)} expected file(s) missing, "
                f"e.g. {missing[:MAX_LISTED_NAMES]}"
            )
        if extra:
            problems.append(
                f"{len(extra)} file(s) not in the expected split, e.g. {extra[:MAX_LISTED_NAMES]}"
            )
    return problems


def _repeated(names: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    repeated: dict[str, None] = {}
    for name in names:
        if name in seen:
            repeated[name] = None
        seen.add(name)
    return list(repeated)


def _raise(what: Any, problems: list[str]) -> None:
    if not problems:
        return
    listed = "\n  - ".join(problems[:MAX_LISTED_PROBLEMS])
    more = (
        f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more"
        if len(problems) > MAX_LISTED_PROBLEMS
        else ""
    )
    raise SubmissionError(f"{what}: {len(problems)} problem(s):\n  - {listed}{more}")


__all__ = [
    "TASK1_FILE",
    "TASK1_HEADER",
    "TASK1_PROBS_FILE",
    "TASK1_PROBS_HEADER",
    "TASK2_FILE",
    "TASK2_HEADER",
    "SubmissionError",
    "read_task1",
    "read_task2",
    "validate_file",
    "validate_task1",
    "validate_task1_probabilities",
    "validate_task2",
    "write_submissions",
    "write_task1",
    "write_task1_probabilities",
    "write_task2",
]
