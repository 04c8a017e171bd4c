"""llmser's prediction CSV: what ``llmser predict`` writes and ``llmser evaluate`` reads.

One row per utterance. Columns, in this order:

- ``FileName`` (required),
- ``EmoClass``: the predicted task-1 code (A, S, H, U, F, D, C, N),
- ``prob_A`` ... ``prob_N``: the class probability vector in ``schema.CLASS_CODES`` order (all or none),
- ``EmoAct``, ``EmoVal``, ``EmoDom``: predicted arousal, valence, dominance (all or none),
- any other column (e.g. each ensemble member's or prompt variant's vote, ``vote_<name>``), kept as text.

Floats are written with ``repr`` so a file reads back to exactly the arrays that were written. The
challenge's own submission files are a different, stricter format: see :mod:`llmser.evaluation.submission`.

Example::

    preds = Predictions.from_probs(["a.wav", "b.wav"], probs)   # probs (2, 8), rows sum to 1
    preds.write_csv("runs/x/predictions.csv")
    same = Predictions.read_csv("runs/x/predictions.csv")
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmser.schema import ATTRIBUTE_COLUMNS, ATTRIBUTES, CLASS_CODES, EXTRA_CODES, NUM_CLASSES
from llmser.utils.io import atomic_open, missing

PROB_COLUMNS: list[str] = [f"prob_{code}" for code in CLASS_CODES]
ATTR_COLUMNS: list[str] = [ATTRIBUTE_COLUMNS[name] for name in ATTRIBUTES]
#: How far a probability row may sum from 1 (float32 softmax outputs written with full precision pass).
PROB_SUM_TOLERANCE = 1e-3
#: Row problems listed in an error before the rest are only counted.
MAX_LISTED_PROBLEMS = 20


class PredictionsError(ValueError):
    """A prediction file or object llmser cannot use; the message names the rows and the problems."""


@dataclass
class Predictions:
    """Per-file predictions of one system; every array is row-aligned with ``file_names``.

    ``classes`` default to the argmax of ``probs`` when only probabilities are given. A task-2-only
    system has ``classes = probs = None``; a task-1-only system has ``attributes = None``.
    """

    file_names: list[str]
    classes: list[str] | None = None
    probs: np.ndarray | None = None  # (N, 8) in schema.CLASS_CODES order
    attributes: np.ndarray | None = None  # (N, 3) in schema.ATTRIBUTES order
    extras: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.file_names = [str(name) for name in self.file_names]
        n = len(self.file_names)
        problems = []
        duplicates = _duplicates(self.file_names)
        if duplicates:
            problems.append(f"{len(duplicates)} duplicate file name(s), e.g. {duplicates[:3]}")
        if self.probs is not None:
            self.probs = np.asarray(self.probs, dtype=np.float64)
            if self.probs.shape != (n, NUM_CLASSES):
                problems.append(f"probs must have shape ({n}, {NUM_CLASSES}), got {self.probs.shape}")
            elif self.classes is None:
                self.classes = [CLASS_CODES[i] for i in self.probs.argmax(axis=1)]
        if self.classes is not None:
            self.classes = [str(code) for code in self.classes]
            if len(self.classes) != n:
                problems.append(f"classes has {len(self.classes)} entries for {n} file names")
            bad = sorted({code for code in self.classes if code not in CLASS_CODES})
            if bad:
                problems.append(f"classes {bad[:5]} are not task-1 codes ({', '.join(CLASS_CODES)})")
        if self.attributes is not None:
            self.attributes = np.asarray(self.attributes, dtype=np.float64)
            if self.attributes.shape != (n, len(ATTRIBUTES)):
                problems.append(
                    f"attributes must have shape ({n}, {len(ATTRIBUTES)}), got {self.attributes.shape}"
                )
        self.extras = {str(key): [str(v) for v in values] for key, values in self.extras.items()}
        for key, values in self.extras.items():
            if key in ("FileName", "EmoClass", *PROB_COLUMNS, *ATTR_COLUMNS):
                problems.append(f"extra column {key!r} clashes with a standard column; rename it")
            if len(values) != n:
                problems.append(f"extra column {key!r} has {len(values)} values for {n} file names")
        if problems:
            raise PredictionsError("invalid predictions:\n  - " + "\n  - ".join(problems))

    def __len__(self) -> int:
        return len(self.file_names)

    @classmethod
    def from_probs(
        cls,
        file_names: Sequence[str],
        probs: np.ndarray,
        attributes: np.ndarray | None = None,
        extras: dict[str, list[str]] | None = None,
    ) -> Predictions:
        """Predictions whose class is the argmax of each probability row (N, 8)."""
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != NUM_CLASSES:
            raise PredictionsError(f"probs must have shape (N, {NUM_CLASSES}), got {probs.shape}")
        classes = [CLASS_CODES[i] for i in probs.argmax(axis=1)]
        return cls(list(file_names), classes, probs, attributes, dict(extras or {}))

    def index(self) -> dict[str, int]:
        """File name -> row."""
        return {name: i for i, name in enumerate(self.file_names)}

    def subset(self, names: Iterable[str]) -> Predictions:
        """The rows for ``names``, in that order; raises naming the files that have no prediction."""
        names = list(names)
        index = self.index()
        missing = [name for name in names if name not in index]
        if missing:
            raise PredictionsError(
                f"no prediction for {len(missing)} of {len(names)} file(s), e.g. {missing[:5]}"
            )
        rows = [index[name] for name in names]
        return Predictions(
            names,
            None if self.classes is None else [self.classes[i] for i in rows],
            None if self.probs is None else self.probs[rows],
            None if self.attributes is None else self.attributes[rows],
            {key: [values[i] for i in rows] for key, values in self.extras.items()},
        )

    def header(self) -> list[str]:
        columns = ["FileName"]
        columns += ["EmoClass"] if self.classes is not None else []
        columns += PROB_COLUMNS if self.probs is not None else []
        columns += ATTR_COLUMNS if self.attributes is not None else []
        return columns + list(self.extras)

    def write_csv(self, path: str | Path) -> Path:
        """Write the CSV atomically (a killed run never leaves half a file); returns the path."""
        path = Path(path)
        with atomic_open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.header())
            for i, name in enumerate(self.file_names):
                row = [name]
                row += [self.classes[i]] if self.classes is not None else []
                row += [repr(float(p)) for p in self.probs[i]] if self.probs is not None else []
                row += [repr(float(a)) for a in self.attributes[i]] if self.attributes is not None else []
                row += [values[i] for values in self.extras.values()]
                writer.writerow(row)
        return path

    @classmethod
    def read_csv(cls, path: str | Path) -> Predictions:
        """Read and validate a prediction CSV; every bad row is named in one PredictionsError."""
        path = Path(path)
        if not path.is_file():
            raise PredictionsError(f"prediction file {path} {missing(path)}; write it with `llmser predict`")
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle))
        if not rows:
            raise PredictionsError(f"{path} is empty; expected a header starting with FileName")
        header = [column.strip() for column in rows[0]]
        _check_header(path, header)
        body = [
            (line, row) for line, row in enumerate(rows[1:], start=2) if any(cell.strip() for cell in row)
        ]
        if not body:
            raise PredictionsError(f"{path} has a header but no rows")
        return _parse_rows(path, header, body)


def _duplicates(names: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    duplicates: list[str] = []
    for name in names:
        if name in seen and name not in duplicates:
            duplicates.append(name)
        seen.add(name)
    return duplicates


def _check_header(path: Path, header: list[str]) -> None:
    problems = []
    if "FileName" not in header:
        problems.append("no FileName column")
    repeated = _duplicates(header)
    if repeated:
        problems.append(f"repeated columns {repeated}")
    for group, columns in (("probability", PROB_COLUMNS), ("attribute", ATTR_COLUMNS)):
        present = [c for c in columns if c in header]
        if present and len(present) != len(columns):
            missing = [c for c in columns if c not in header]
            problems.append(f"{group} columns must come as a group; missing {missing}")
    if problems:
        raise PredictionsError(f"{path}: bad header ({', '.join(header)}): " + "; ".join(problems))


def _parse_rows(path: Path, header: list[str], body: list[tuple[int, list[str]]]) -> Predictions:
    col = {name: j for j, name in enumerate(header)}
    has_class, has_probs, has_attrs = "EmoClass" in col, PROB_COLUMNS[0] in col, ATTR_COLUMNS[0] in col
    standard = {"FileName", "EmoClass", *PROB_COLUMNS, *ATTR_COLUMNS}
    extra_columns = [name for name in header if name not in standard]
    problems: list[str] = []
    names: list[str] = []
    classes: list[str] = []
    probs = np.zeros((len(body), NUM_CLASSES))
    attrs = np.zeros((len(body), len(ATTRIBUTES)))
    extras: dict[str, list[str]] = {name: [] for name in extra_columns}
    first_row: dict[str, int] = {}
    for i, (line, row) in enumerate(body):
        if len(row) != len(header):  # a broken row: its other checks would only repeat this problem
            problems.append(f"row {line}: {len(row)} fields for {len(header)} columns")
            continue
        cells = [cell.strip() for cell in row]
        name = cells[col["FileName"]]
        where = f"row {line} ({name or 'no FileName'})"
        if not name:
            problems.append(f"row {line}: empty FileName")
        elif name in first_row:
            problems.append(f"{where}: duplicate FileName, first on row {first_row[name]}")
        else:
            first_row[name] = line
        names.append(name)
        if has_class:
            code = cells[col["EmoClass"]]
            if code not in CLASS_CODES:
                hint = " (X/O are reference labels, not predictions)" if code in EXTRA_CODES else ""
                problems.append(f"{where}: EmoClass {code!r} is not one of {', '.join(CLASS_CODES)}{hint}")
            classes.append(code)
        if has_probs:
            vector = _floats(cells, [col[c] for c in PROB_COLUMNS], "probabilities", where, problems)
            if vector is not None:
                if (vector < 0).any():
                    problems.append(f"{where}: negative probability {vector.min()!r}; apply a softmax first")
                elif abs(vector.sum() - 1.0) > PROB_SUM_TOLERANCE:
                    problems.append(
                        f"{where}: probabilities sum to {vector.sum():.6f}, not 1 "
                        f"(tolerance {PROB_SUM_TOLERANCE}); write softmax outputs, not logits"
                    )
                probs[i] = vector
        if has_attrs:
            vector = _floats(cells, [col[c] for c in ATTR_COLUMNS], "attributes", where, problems)
            if vector is not None:
                attrs[i] = vector
        for name_ in extra_columns:
            extras[name_].append(row[col[name_]])
    if problems:
        listed = "\n  - ".join(problems[:MAX_LISTED_PROBLEMS])
        more = (
            f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more"
            if len(problems) > MAX_LISTED_PROBLEMS
            else ""
        )
        raise PredictionsError(f"{path}: {len(problems)} problem(s):\n  - {listed}{more}")
    return Predictions(
        names,
        classes if has_class else None,
        probs if has_probs else None,
        attrs if has_attrs else None,
        extras,
    )


def _floats(
    cells: list[str], columns: list[int], what: str, where: str, problems: list[str]
) -> np.ndarray | None:
    """Parse the cells at ``columns`` as finite floats, or record why not and return None."""
    try:
        values = np.array([float(cells[j]) for j in columns], dtype=np.float64)
    except ValueError:
        shown = [cells[j] for j in columns]
        problems.append(f"{where}: non-numeric {what} {shown}")
        return None
    if not np.isfinite(values).all():
        problems.append(f"{where}: NaN or infinite {what} {values.tolist()}")
        return None
    return values


__all__ = ["ATTR_COLUMNS", "PROB_COLUMNS", "Predictions", "PredictionsError"]


def concat_predictions(parts: Sequence[Predictions]) -> Predictions:
    """Row-wise concatenation of predictions with the same columns (empty parts are dropped)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return Predictions([], None, None, None, {})
    first = parts[0]
    return Predictions(
        [n for p in parts for n in p.file_names],
        [c for p in parts for c in p.classes] if first.classes is not None else None,
        np.concatenate([p.probs for p in parts]) if first.probs is not None else None,
        np.concatenate([p.attributes for p in parts]) if first.attributes is not None else None,
        {k: [v for p in parts for v in p.extras[k]] for k in first.extras},
    )
