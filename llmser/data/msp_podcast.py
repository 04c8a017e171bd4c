"""Reader for a corpus folder in the MSP-Podcast release layout.

    CORPUS/Labels/labels_consensus.csv   FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set
    CORPUS/Labels/labels_detailed.csv    optional, one annotation per row, in any of the layouts below
    CORPUS/Audios/<FileName>             wav
    CORPUS/Transcripts/<stem>.txt        optional

labels_detailed.csv comes in three layouts, told apart by the header (see :data:`DETAILED_LAYOUTS`):

- ``per_annotator`` (release): FileName, Workers or WorkerID, EmoClass_Major, EmoClass_Second, EmoAct,
  EmoVal, EmoDom; classes as words (``Angry``) or codes (``A``); EmoClass_Second may hold several
  comma-separated words;
- ``packed`` (release): FileName, EmoDetail, each cell one annotation such as
  ``WORKER00012; Angry; Frustrated,Annoyed; A:4.0; V:3.0; D:5.0;``;
- ``llmser`` (what the demo corpus writes): FileName, WorkerID, EmoClass, EmoAct, EmoVal, EmoDom.

Every row is validated before anything is used, and all problems are reported together, each
naming the file and row and what to do. ``ReaderConfig(on_error="skip")`` drops the bad rows instead
and keeps them in ``corpus.problems``. X (no agreement) and O (other) files have no task-1 label:
``utterances(split, task="class")`` leaves them out (and logs how many), ``task="attributes"`` keeps them.
A split without labels (the blind Test3: empty EmoClass and attributes) is read like any other; it can
be predicted and written as submission files, and the report refuses to score it.

Reading is linear in the number of rows (a release has ~116k consensus and ~650k detailed rows:
``scripts/bench_reader.py``); ``ReaderConfig(labels_only=True)`` reads the label files without
looking at Audios/ or Transcripts/ at all.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from llmser.schema import (
    ALL_CODES,
    ATTRIBUTE_MAX,
    ATTRIBUTE_MIN,
    CLASS_CODES,
    CLASS_NAMES,
    CODE_TO_INDEX,
    normalise_class,
)
from llmser.utils.logging import get_logger

logger = get_logger(__name__)

CONSENSUS_COLUMNS = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
DETAILED_COLUMNS = ("FileName", "WorkerID", "EmoClass", "EmoAct", "EmoVal", "EmoDom")
#: labels_detailed.csv layouts: name -> the columns that identify it (the first layout whose columns
#: are all in the header wins). ``Workers``/``WorkerID`` both name the annotator in ``per_annotator``.
DETAILED_LAYOUTS: dict[str, tuple[str, ...]] = {
    "packed": ("FileName", "EmoDetail"),
    "per_annotator": ("FileName", "EmoClass_Major", "EmoClass_Second", "EmoAct", "EmoVal", "EmoDom"),
    "llmser": DETAILED_COLUMNS,
}
WORKER_COLUMNS = ("Workers", "WorkerID")
SPLITS = ("Train", "Development", "Test1", "Test2", "Test3")
SPLIT_ALIASES = {"train": "Train", "dev": "Development", "development": "Development", "valid": "Development",
                 "validation": "Development"}
#: Split_Set values the reader knows, lower-cased -> the release's spelling (any letter case is accepted).
KNOWN_SPLITS = {**{s.lower(): s for s in SPLITS}, **SPLIT_ALIASES}
#: A file in Labels/ that declares Split_Set names of the user's own, one per line (see ReaderConfig.extra_splits).
EXTRA_SPLITS_FILE = "extra_splits.txt"
GENDERS = {"female": "Female", "f": "Female", "male": "Male", "m": "Male", "unknown": "Unknown", "": "Unknown"}
#: What a primary emotion may be written as, for the error that rejects an unknown word.
PRIMARY_WORDS = ", ".join((*CLASS_NAMES, "Other (or Other-<word>)")) + f" or the codes {', '.join(ALL_CODES)}"
MAX_LISTED = 20
#: Distinct numeric strings remembered by _number: a release repeats a few thousand values ~2M times.
_NUMBER_CACHE_SIZE = 100_000


class CorpusError(ValueError):
    """A corpus that does not fit the MSP-Podcast layout; the message lists every problem found."""


@dataclass(frozen=True)
class Problem:
    """One bad row or file. ``fatal=False`` marks a note (e.g. ignored extra annotations) that never stops a read."""

    where: str
    message: str
    fatal: bool = True

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True, slots=True)  # slots: a release holds ~650k of these
class Annotation:
    """One annotator's labels for one file; ``secondary`` keeps the secondary-emotion words as written."""

    worker: str
    code: str | None
    arousal: float | None
    valence: float | None
    dominance: float | None
    secondary: tuple[str, ...] = ()

    @property
    def secondary_codes(self) -> tuple[str, ...]:
        """The secondary words that name one of the eight classes, as codes (free words such as Annoyed are left out)."""
        codes = (normalise_class(word) for word in self.secondary)
        return tuple(code for code in codes if code in CODE_TO_INDEX)


@dataclass(frozen=True, slots=True)
class Utterance:
    file_name: str
    audio_path: Path
    split: str
    emo_class: str | None  # A..N, X, O, or None when the split is unlabelled
    arousal: float | None
    valence: float | None
    dominance: float | None
    speaker: str
    gender: str
    transcript: str | None = None
    annotations: tuple[Annotation, ...] = ()
    # (start, seconds) of the part of the file to read; None = the whole file. Set by prediction when a
    # file is longer than a model's window and is predicted window by window (llmser.inference.predictor).
    segment: tuple[float, float] | None = None

    @property
    def class_index(self) -> int | None:
        return CODE_TO_INDEX.get(self.emo_class) if self.emo_class else None

    @property
    def labelled(self) -> bool:
        """Whether the file carries any reference label (the blind test set does not)."""
        return self.emo_class is not None or self.arousal is not None

    @property
    def soft_label(self) -> np.ndarray | None:
        """Annotators' vote distribution over the 8 classes (``augment.vote_distribution``: an Other vote
        counts 1/8 for each class, so Other votes never make it 100 % of one class); None without votes."""
        from llmser.data.augment import vote_distribution

        dist = vote_distribution([a.code for a in self.annotations])
        return dist if dist.sum() > 0 else None


@dataclass
class ReaderConfig:
    on_error: Literal["raise", "skip"] = "raise"
    check_audio: bool = False  # open and validate every wav (slower; catches corrupt/silent files up front)
    require_transcripts: bool = False
    task1_exclude_codes: tuple[str, ...] = ("X", "O")
    task2_keep_extra: bool = True
    #: Read Labels/ only: no Audios/ folder needed, no wav checked (not even that it exists), no transcript
    #: read. For label statistics, submission checks and benchmarks on a machine without the audio.
    labels_only: bool = False
    #: Split_Set names of your own beside the release's (a Split_Set that is neither is refused, as a typo
    #: such as ``Trian`` would silently drop its rows). Also read from ``Labels/extra_splits.txt``.
    extra_splits: tuple[str, ...] = ()


@dataclass
class MSPPodcast:
    root: Path
    config: ReaderConfig
    items: list[Utterance]
    problems: list[Problem] = field(default_factory=list)

    # ------------------------------------------------------------------ reading

    @classmethod
    def from_folder(cls, root: str | Path, config: ReaderConfig | None = None) -> MSPPodcast:
        """Read and validate the corpus at ``root``; raises one CorpusError listing every problem (or skips them)."""
        root = Path(root)
        config = config or ReaderConfig()
        labels = root / "Labels" / "labels_consensus.csv"
        if not root.is_dir():
            from llmser.utils.io import missing

            raise CorpusError(f"corpus folder {root} {missing(root, 'folder')}; pass a folder in the MSP-Podcast layout "
                              "(Labels/, Audios/) or make one with `llmser make-demo-corpus`")
        if not labels.is_file():
            raise CorpusError(f"{labels} is missing; an MSP-Podcast corpus has Labels/labels_consensus.csv")
        if not config.labels_only and not (root / "Audios").is_dir():
            raise CorpusError(f"{root / 'Audios'} is missing; the wav files go in Audios/ (or read the labels "
                              "alone with ReaderConfig(labels_only=True))")
        problems: list[Problem] = []
        annotations, bad_detailed = _read_detailed(root / "Labels" / "labels_detailed.csv", problems)
        items, seen, bad_rows = _read_consensus(root, labels, annotations, problems, config)
        items, unknown_rows = _check_split_names(items, seen, _declared_splits(root, config), problems)
        bad_rows += unknown_rows
        problems += [Problem(f"labels_detailed.csv ({name})", "annotations for a FileName not in "
                             "labels_consensus.csv; they are ignored", fatal=False)
                     for name in annotations if name not in seen]
        corpus = cls(root=root, config=config, items=items, problems=problems)
        corpus._handle_problems(bad_rows + bad_detailed)
        return corpus

    def _handle_problems(self, n_bad: int) -> None:
        fatal = [p for p in self.problems if p.fatal]
        notes = [p for p in self.problems if not p.fatal]
        for p in notes[:MAX_LISTED]:
            logger.warning("%s", p)
        if len(notes) > MAX_LISTED:
            logger.warning("... and %d more such note(s); see corpus.problems", len(notes) - MAX_LISTED)
        if not fatal:
            return
        listed = "\n  - ".join(map(str, fatal[:MAX_LISTED]))
        more = f"\n  ... and {len(fatal) - MAX_LISTED} more" if len(fatal) > MAX_LISTED else ""
        if self.config.on_error == "raise":
            raise CorpusError(f"{self.root}: {len(fatal)} problem(s) in the corpus:\n  - {listed}{more}\n"
                              "Fix them, or read with ReaderConfig(on_error='skip') (recipes: data.on_error: skip) "
                              "to skip these rows.")
        logger.warning("%s: skipped %d bad row(s) (%d problem(s)); see corpus.problems:\n  - %s%s",
                       self.root, n_bad, len(fatal), listed, more)

    # ------------------------------------------------------------------ access

    def splits(self) -> list[str]:
        present = {u.split for u in self.items}
        return [s for s in SPLITS if s in present] + sorted(present - set(SPLITS))

    def resolve_split(self, name: str) -> str:
        """The corpus's own name for ``name`` (``dev`` -> ``Development``); a fold selector (``dev[^0/5]``,
        see ``data/folds.py``) keeps its selector around the resolved base split."""
        from llmser.data.folds import parse_split

        try:
            base, selector = parse_split(name)
        except ValueError as exc:
            raise CorpusError(str(exc)) from None
        if selector is not None:
            return selector.name(self.resolve_split(base))
        available = self.splits()
        lowered = name.strip().lower()
        for split in available:
            if split.lower() == lowered:
                return split
        alias = SPLIT_ALIASES.get(lowered, "").lower()  # aliases match in any letter case, as names do
        if alias and (found := next((s for s in available if s.lower() == alias), None)):
            return found
        if lowered == "test":
            tests = [s for s in available if s.lower().startswith("test")]
            with_labels = {u.split for u in self.items if u.emo_class}
            labelled = [s for s in tests if s in with_labels]
            if "Test1" in available:
                return "Test1"
            if labelled or tests:
                return (labelled or tests)[0]
        raise CorpusError(f"split {name!r} is not in {self.root}; available splits: {', '.join(available) or 'none'}")

    def utterances(self, split: str | None = None, task: Literal["class", "attributes", "all"] = "all") -> list[Utterance]:
        if split is None:
            items = self.items
        else:  # resolve once: resolving scans every row, so doing it per row made this quadratic
            from llmser.data.folds import parse_split, select

            base, selector = parse_split(self.resolve_split(split))
            items = select([u for u in self.items if u.split == base], selector)
        if task == "class":
            kept = [u for u in items if u.emo_class in CLASS_CODES]
            dropped = Counter(u.emo_class or "unlabelled" for u in items if u.emo_class not in CLASS_CODES)
            if dropped:
                logger.info("task 1 (%s): left out %s", split or "all", ", ".join(f"{n} {c}" for c, n in sorted(dropped.items())))
            return kept
        if task == "attributes":
            keep_extra = self.config.task2_keep_extra
            return [u for u in items if u.arousal is not None and (keep_extra or u.emo_class in CLASS_CODES)]
        return list(items)

    def class_counts(self, split: str | None = None) -> dict[str, int]:
        counts = Counter(u.emo_class for u in self.utterances(split, task="all") if u.emo_class)
        return {code: counts.get(code, 0) for code in ALL_CODES}

    def to_dataset(self, split: str, task: Literal["class", "attributes", "all"] = "all"):
        """A ``datasets.Dataset`` of the split; audio as paths (``Audio(decode=False)``), decode with load_audio."""
        import datasets

        utts = self.utterances(split, task=task)
        data = {
            "file_name": [u.file_name for u in utts],
            "audio": [str(u.audio_path) for u in utts],
            "label": [u.class_index if u.class_index is not None else -1 for u in utts],
            "soft_label": [[] if u.soft_label is None else u.soft_label.tolist() for u in utts],
            "arousal": [u.arousal for u in utts],
            "valence": [u.valence for u in utts],
            "dominance": [u.dominance for u in utts],
            "speaker": [u.speaker for u in utts],
            "gender": [u.gender for u in utts],
            "transcript": [u.transcript or "" for u in utts],
            "split": [u.split for u in utts],
        }
        return datasets.Dataset.from_dict(data).cast_column("audio", datasets.Audio(decode=False))

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        counts = Counter(u.split for u in self.items)
        sizes = ", ".join(f"{s}={counts[s]}" for s in self.splits())
        return f"MSPPodcast({self.root}, {len(self)} files: {sizes})"


# ---------------------------------------------------------------------- parsing helpers


def _where(file: str, line: int, name: str) -> str:
    """How a problem names its row; built only when there is a problem (the detailed file has ~650k rows)."""
    return f"{file} row {line} ({name or '?'})"


def _csv_table(path: Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The stripped header and a stream of (row number, stripped cells padded to the header's width).

    Streamed rather than loaded as dicts: a release's detailed file has ~650k rows. Row numbers count the
    header as row 1, as a spreadsheet shows them; blank lines are skipped but counted.
    """
    handle = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed by _csv_rows
    reader = csv.reader(handle)
    try:
        header = [cell.strip() for cell in next(reader, [])]
    except UnicodeDecodeError as exc:
        handle.close()
        raise CorpusError(f"{path}: not UTF-8 text ({exc}); re-save it as UTF-8") from None
    except csv.Error as exc:
        handle.close()
        raise CorpusError(f"{path}: not a readable CSV file ({exc}); check its quoting, or re-export it as "
                          "plain comma-separated UTF-8") from None
    return header, _csv_rows(path, handle, reader, len(header))


def _csv_rows(path: Path, handle, reader, width: int) -> Iterator[tuple[int, list[str]]]:
    with handle:
        try:
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                cells = [cell.strip() for cell in row]
                yield line, cells + [""] * (width - len(cells)) if len(cells) < width else cells
        except UnicodeDecodeError as exc:
            raise CorpusError(f"{path}: not UTF-8 text ({exc}); re-save it as UTF-8") from None
        except csv.Error as exc:  # e.g. an unclosed quote that swallows the rest of the file
            raise CorpusError(f"{path}: not a readable CSV file ({exc}); check its quoting, or re-export it as "
                              "plain comma-separated UTF-8") from None


def _read_csv(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """Rows as dicts (small files); raises naming the missing columns."""
    header, rows = _csv_table(path)
    _require_columns(path, header, required)
    return [(line, dict(zip(header, cells))) for line, cells in rows]


def _require_columns(path: Path, header: list[str], required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        raise CorpusError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(required)} "
                          f"(found {', '.join(header) or 'no header'})")


_NUMBERS: dict[str, float] = {}


def _number(value: str, name: str, where: str | None, problems: list[Problem], allow_empty: bool,
            locate: tuple[str, int, str] | None = None) -> float | None:
    """``value`` as a rating in [1, 7], or None with a problem recorded (``where`` or ``locate`` names the row)."""
    cached = _NUMBERS.get(value)
    if cached is not None:  # valid strings repeat millions of times in a release
        return cached
    if value == "":
        if not allow_empty:
            problems.append(Problem(where or _where(*locate), f"{name} is empty; give a number in "
                                                              f"[{ATTRIBUTE_MIN:g}, {ATTRIBUTE_MAX:g}]"))
        return None
    try:
        number = float(value)
    except ValueError:
        problems.append(Problem(where or _where(*locate), f"{name}={value!r} is not a number; give a value in "
                                                          f"[{ATTRIBUTE_MIN:g}, {ATTRIBUTE_MAX:g}]"))
        return None
    if math.isnan(number) or not ATTRIBUTE_MIN <= number <= ATTRIBUTE_MAX:
        problems.append(Problem(where or _where(*locate), f"{name}={value} is outside "
                                                          f"[{ATTRIBUTE_MIN:g}, {ATTRIBUTE_MAX:g}]"))
        return None
    if len(_NUMBERS) < _NUMBER_CACHE_SIZE:
        _NUMBERS[value] = number
    return number


# ---------------------------------------------------------------------- labels_consensus.csv


def _read_consensus(root: Path, labels: Path, annotations: dict[str, list[Annotation]], problems: list[Problem],
                    config: ReaderConfig) -> tuple[list[Utterance], dict[str, int], int]:
    """The good utterances, the first row of every FileName, and how many rows were bad."""
    header, rows = _csv_table(labels)
    _require_columns(labels, header, CONSENSUS_COLUMNS)
    extra = [c for c in header if c not in CONSENSUS_COLUMNS]
    if extra:
        logger.info("%s: column(s) %s are not used by llmser; ignored", labels, ", ".join(extra))
    items: list[Utterance] = []
    seen: dict[str, int] = {}
    bad_rows = 0
    for line, cells in rows:
        row = dict(zip(header, cells))
        name = row["FileName"]
        where = _where(labels.name, line, name)
        before = len(problems)
        utt = _parse_row(root, row, where, problems, annotations, config)
        if name in seen:
            problems.append(Problem(where, f"duplicate FileName (first on row {seen[name]}); keep one row per file"))
        seen.setdefault(name, line)
        if len(problems) > before or utt is None:
            bad_rows += 1
            continue
        items.append(utt)
    return items, seen, bad_rows


def _parse_row(root: Path, row: dict[str, str], where: str, problems: list[Problem],
               annotations: dict[str, list[Annotation]], config: ReaderConfig) -> Utterance | None:
    name = row["FileName"]
    if not name:
        problems.append(Problem(where, "FileName is empty"))
        return None
    if Path(name).is_absolute() or ".." in Path(name).parts:
        problems.append(Problem(where, f"FileName {name!r} points outside Audios/; give the file's name "
                                       "relative to the Audios/ folder"))
        return None
    split = row["Split_Set"]
    if not split:
        problems.append(Problem(where, f"Split_Set is empty; use one of {', '.join(SPLITS)}"))
    split = KNOWN_SPLITS.get(split.lower(), split)  # TRAIN, dev -> Train, Development
    raw_class = row["EmoClass"]
    code = normalise_class(raw_class) if raw_class else None
    if raw_class and code is None:
        problems.append(Problem(where, f"EmoClass {raw_class!r} is unknown; valid codes: {', '.join(ALL_CODES)}"))
    unlabelled = not raw_class  # the blind test set: no class, and no attributes either
    attrs = [_number(row[c], c, where, problems, allow_empty=unlabelled) for c in ("EmoAct", "EmoVal", "EmoDom")]
    gender = GENDERS.get(row["Gender"].lower())
    if gender is None:
        problems.append(Problem(where, f"Gender {row['Gender']!r} is unknown; use Female, Male or Unknown"))
    audio = root / "Audios" / name
    if not config.labels_only:
        _check_audio(audio, where, problems, config)
    transcript = None if config.labels_only else _read_transcript(root, name, where, problems, config)
    return Utterance(file_name=name, audio_path=audio, split=split, emo_class=code,
                     arousal=attrs[0], valence=attrs[1], dominance=attrs[2], speaker=row["SpkrID"],
                     gender=gender or "Unknown", transcript=transcript,
                     annotations=tuple(annotations.get(name, ())))


def _declared_splits(root: Path, config: ReaderConfig) -> dict[str, str]:
    """The user's own split names, lower-cased -> as declared (ReaderConfig and Labels/extra_splits.txt)."""
    names = list(config.extra_splits)
    declared = root / "Labels" / EXTRA_SPLITS_FILE
    if declared.is_file():
        names += [line.strip() for line in declared.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {name.lower(): name for name in names}


def _check_split_names(items: list[Utterance], first_rows: dict[str, int], declared: dict[str, str],
                       problems: list[Problem]) -> tuple[list[Utterance], int]:
    """Keep the rows of release splits and declared ones; one problem per unknown Split_Set, with its row count
    and the closest known name (a typo such as ``Trian`` used to drop its rows from training unannounced)."""
    import difflib

    unknown = Counter(u.split for u in items if u.split.lower() not in KNOWN_SPLITS and u.split.lower() not in declared)
    if not unknown:
        return [u if u.split.lower() not in declared else _renamed(u, declared[u.split.lower()]) for u in items], 0
    known = [*SPLITS, *SPLIT_ALIASES, *declared.values()]
    for name, count in unknown.items():
        first = min(first_rows[u.file_name] for u in items if u.split == name)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5) or \
            difflib.get_close_matches(name.lower(), [k.lower() for k in known], n=1, cutoff=0.5)
        hint = f"did you mean {KNOWN_SPLITS.get(close[0].lower(), close[0])!r}? " if close else ""
        problems.append(Problem(f"labels_consensus.csv Split_Set {name!r}",
                                f"{count} row(s) (first on row {first}) name a split that is not one of the release's "
                                f"({', '.join(SPLITS)}, any letter case); {hint}Fix those rows, or declare your own "
                                f"split names (one per line in Labels/{EXTRA_SPLITS_FILE}, or "
                                "ReaderConfig(extra_splits=...))"))
    kept = [u for u in items if u.split not in unknown]
    return kept, len(items) - len(kept)


def _renamed(utt: Utterance, split: str) -> Utterance:
    from dataclasses import replace

    return replace(utt, split=split) if utt.split != split else utt


def _check_audio(audio: Path, where: str, problems: list[Problem], config: ReaderConfig) -> None:
    """The wav must exist; with ``check_audio`` it must also decode and not be silent."""
    if audio.is_dir():
        problems.append(Problem(where, f"{audio} is a folder, not an audio file; put the wav file there or fix "
                                       "the FileName"))
    elif not audio.is_file():
        problems.append(Problem(where, f"no audio file {audio}; add it or remove the row (or read the labels "
                                       "alone with ReaderConfig(labels_only=True))"))
    elif not os.access(audio, os.R_OK):
        problems.append(Problem(where, f"no permission to read {audio}; fix its permissions (e.g. chmod a+r)"))
    elif config.check_audio:
        from llmser.data.audio import AudioError, load_audio

        try:
            load_audio(audio, max_seconds=1.0)
        except AudioError as exc:
            problems.append(Problem(where, str(exc)))


def _read_transcript(root: Path, name: str, where: str, problems: list[Problem], config: ReaderConfig) -> str | None:
    path = root / "Transcripts" / f"{Path(name).stem}.txt"
    if not path.is_file():
        if config.require_transcripts:
            problems.append(Problem(where, f"transcript {path} is missing; add it or transcribe the audio "
                                           "(the Whisper model in llmser does this in `llmser predict`)"))
        return None
    from llmser.data.text import TranscriptError, read_transcript

    try:
        text = read_transcript(path)
    except TranscriptError as exc:
        problems.append(Problem(where, str(exc)))
        return None
    if not text and config.require_transcripts:
        problems.append(Problem(where, f"transcript {path} is empty; write the words into it, or delete it "
                                       "and let `llmser predict` transcribe the audio"))
    return text or None


# ---------------------------------------------------------------------- labels_detailed.csv

#: One annotation as written, before validation: worker, primary word, secondary words, A, V, D.
_RawAnnotation = tuple[str, str, str, str, str, str]


def _detailed_layout(path: Path, header: list[str]) -> tuple[str, str | None]:
    """The layout name and the worker column, from the header; raises naming the accepted headers."""
    worker = next((c for c in WORKER_COLUMNS if c in header), None)
    for layout, columns in DETAILED_LAYOUTS.items():
        if all(c in header for c in columns) and (layout == "packed" or worker is not None):
            return layout, worker
    accepted = "; ".join(f"{name}: {','.join(cols)}" for name, cols in DETAILED_LAYOUTS.items())
    raise CorpusError(f"{path}: header {','.join(header) or '(none)'} is not a known labels_detailed.csv layout; "
                      f"accepted ({' or '.join(WORKER_COLUMNS)} names the annotator where needed): {accepted}")


def _raw_annotations(layout: str, header: list[str], worker: str | None,
                     rows: Iterator[tuple[int, list[str]]]) -> Iterator[tuple[int, str, _RawAnnotation | str]]:
    """(row, FileName, raw annotation) per row, or (row, FileName, why it cannot be unpacked)."""
    col = {name: j for j, name in enumerate(header)}
    name_j = col["FileName"]
    if layout == "packed":
        detail_j = col["EmoDetail"]
        for line, cells in rows:
            yield line, cells[name_j], _unpack_detail(cells[detail_j])
        return
    primary = col["EmoClass_Major" if layout == "per_annotator" else "EmoClass"]
    secondary = col.get("EmoClass_Second") if layout == "per_annotator" else None
    worker_j, act, val, dom = col[worker or "WorkerID"], col["EmoAct"], col["EmoVal"], col["EmoDom"]
    for line, cells in rows:
        yield line, cells[name_j], (cells[worker_j], cells[primary], "" if secondary is None else cells[secondary],
                                    cells[act], cells[val], cells[dom])


def _unpack_detail(cell: str) -> _RawAnnotation | str:
    """``WORKER00012; Angry; Frustrated,Annoyed; A:4.0; V:3.0; D:5.0;`` -> its six fields, or why not."""
    fields = [part.strip() for part in cell.split(";")]
    ratings = {part[0].upper(): part[2:].strip() for part in fields if len(part) >= 2 and part[1] == ":"}
    words = [part for part in fields if not (len(part) >= 2 and part[1] == ":")]
    while words and not words[-1]:  # the trailing ";" leaves an empty field
        words.pop()
    if len(words) < 2 or not {"A", "V", "D"} <= ratings.keys():
        return (f"EmoDetail {cell!r} is not 'WORKER; Primary; Secondary,...; A:n; V:n; D:n;' "
                "(worker, primary emotion, secondary emotions, then the three ratings)")
    return words[0], words[1], ",".join(words[2:]), ratings["A"], ratings["V"], ratings["D"]


_SECONDARY: dict[str, tuple[str, ...]] = {}


def _secondary_words(text: str) -> tuple[str, ...]:
    """Comma-separated secondary words, kept as written (unknown words are data, not errors); shared tuples."""
    words = _SECONDARY.get(text)
    if words is None:
        words = tuple(sys.intern(w.strip()) for w in text.split(",") if w.strip())
        if len(_SECONDARY) < _NUMBER_CACHE_SIZE:
            _SECONDARY[text] = words
    return words


def _annotation(raw: _RawAnnotation, locate: tuple[str, int, str], problems: list[Problem]) -> Annotation | None:
    """A validated Annotation, or None with every problem of the row recorded."""
    worker, primary, secondary, act, val, dom = raw
    before = len(problems)
    code = normalise_class(primary) if primary else None
    if primary and code is None:
        problems.append(Problem(_where(*locate), f"primary emotion {primary!r} is unknown; accepted: {PRIMARY_WORDS}"))
    values = [_number(v, c, None, problems, allow_empty=True, locate=locate)
              for v, c in ((act, "EmoAct"), (val, "EmoVal"), (dom, "EmoDom"))]
    if len(problems) > before:
        return None
    return Annotation(sys.intern(worker), code, *values, secondary=_secondary_words(secondary))


def _read_detailed(path: Path, problems: list[Problem]) -> tuple[dict[str, list[Annotation]], int]:
    """FileName -> its annotations, in any layout of :data:`DETAILED_LAYOUTS`, and how many rows were bad.

    A header that fits no layout is one problem (the file is then not used), so it is reported with the
    consensus file's problems and ``on_error="skip"`` reads the corpus without soft labels.
    """
    if not path.is_file():
        return {}, 0
    header, rows = _csv_table(path)
    try:
        layout, worker = _detailed_layout(path, header)
    except CorpusError as exc:
        rows.close()
        problems.append(Problem(path.name, str(exc).removeprefix(f"{path}: ")))
        return {}, 0
    result: dict[str, list[Annotation]] = {}
    bad = 0
    for line, name, raw in _raw_annotations(layout, header, worker, rows):
        locate = (path.name, line, name)
        annotation = None
        if isinstance(raw, str):
            problems.append(Problem(_where(*locate), raw))
        elif not name:
            problems.append(Problem(_where(*locate), "FileName is empty; give the file the annotation is for"))
        else:
            annotation = _annotation(raw, locate, problems)
        if annotation is None:
            bad += 1
            continue
        annotations = result.get(name)
        if annotations is None:
            result[name] = [annotation]
        else:
            annotations.append(annotation)
    return result, bad
