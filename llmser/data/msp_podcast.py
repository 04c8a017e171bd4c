"""Reader for a corpus folder in the MSP-Podcast release layout.

    CORPUS/Labels/labels_consensus.csv   FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set
    CORPUS/Labels/labels_detailed.csv    optional, one row per annotator: FileName,WorkerID,EmoClass,EmoAct,EmoVal,EmoDom
    CORPUS/Audios/<FileName>             wav
    CORPUS/Transcripts/<stem>.txt        optional

Every row is validated before anything is used, and all problems are reported together, each
naming the file and row and what to do. ``ReaderConfig(on_error="skip")`` drops the bad rows instead
and keeps them in ``corpus.problems``. X (no agreement) and O (other) files have no task-1 label:
``utterances(split, task="class")`` leaves them out (and logs how many), ``task="attributes"`` keeps them.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from llmser.schema import (
    ALL_CODES,
    ATTRIBUTE_MAX,
    ATTRIBUTE_MIN,
    CLASS_CODES,
    CODE_TO_INDEX,
    NUM_CLASSES,
    normalise_class,
)
from llmser.utils.logging import get_logger

logger = get_logger(__name__)

CONSENSUS_COLUMNS = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
DETAILED_COLUMNS = ("FileName", "WorkerID", "EmoClass", "EmoAct", "EmoVal", "EmoDom")
SPLITS = ("Train", "Development", "Test1", "Test2", "Test3")
SPLIT_ALIASES = {"train": "Train", "dev": "Development", "development": "Development", "valid": "Development",
                 "validation": "Development"}
GENDERS = {"female": "Female", "f": "Female", "male": "Male", "m": "Male", "unknown": "Unknown", "": "Unknown"}
MAX_LISTED = 20


class CorpusError(ValueError):
    """A corpus that does not fit the MSP-Podcast layout; the message lists every problem found."""


@dataclass(frozen=True)
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class Annotation:
    worker: str
    code: str | None
    arousal: float | None
    valence: float | None
    dominance: float | None


@dataclass(frozen=True)
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

    @property
    def class_index(self) -> int | None:
        return CODE_TO_INDEX.get(self.emo_class) if self.emo_class else None

    @property
    def soft_label(self) -> np.ndarray | None:
        """Annotators' vote distribution over the 8 classes (X/O/other votes ignored)."""
        votes = [a.code for a in self.annotations if a.code in CODE_TO_INDEX]
        if not votes:
            return None
        dist = np.zeros(NUM_CLASSES, dtype=np.float32)
        for code in votes:
            dist[CODE_TO_INDEX[code]] += 1
        return dist / dist.sum()


@dataclass
class ReaderConfig:
    on_error: Literal["raise", "skip"] = "raise"
    check_audio: bool = False  # open and validate every wav (slower; catches corrupt/silent files up front)
    require_transcripts: bool = False
    task1_exclude_codes: tuple[str, ...] = ("X", "O")
    task2_keep_extra: bool = True


@dataclass
class MSPPodcast:
    root: Path
    config: ReaderConfig
    items: list[Utterance]
    problems: list[Problem] = field(default_factory=list)

    # ------------------------------------------------------------------ reading

    @classmethod
    def from_folder(cls, root: str | Path, config: ReaderConfig | None = None) -> MSPPodcast:
        root = Path(root)
        config = config or ReaderConfig()
        labels = root / "Labels" / "labels_consensus.csv"
        if not root.is_dir():
            raise CorpusError(f"corpus folder {root} does not exist; pass a folder in the MSP-Podcast layout "
                              "(Labels/, Audios/) or make one with `llmser make-demo-corpus`")
        if not labels.is_file():
            raise CorpusError(f"{labels} is missing; an MSP-Podcast corpus has Labels/labels_consensus.csv")
        if not (root / "Audios").is_dir():
            raise CorpusError(f"{root / 'Audios'} is missing; the wav files go in Audios/")
        problems: list[Problem] = []
        annotations = _read_detailed(root / "Labels" / "labels_detailed.csv", problems)
        rows = _read_csv(labels, CONSENSUS_COLUMNS)
        items: list[Utterance] = []
        seen: dict[str, int] = {}
        bad_rows: set[int] = set()
        for line, row in rows:
            where = f"{labels.name} row {line} ({row.get('FileName') or '?'})"
            before = len(problems)
            utt = _parse_row(root, row, where, problems, annotations, config)
            name = row.get("FileName", "")
            if name in seen:
                problems.append(Problem(where, f"duplicate FileName (first on row {seen[name]}); keep one row per file"))
            seen.setdefault(name, line)
            if len(problems) > before or utt is None:
                bad_rows.add(line)
                continue
            items.append(utt)
        for name in set(annotations) - set(seen):
            problems.append(Problem(f"labels_detailed.csv ({name})", "annotations for a FileName not in "
                                    "labels_consensus.csv; they are ignored"))
        corpus = cls(root=root, config=config, items=items, problems=problems)
        corpus._handle_problems(len(bad_rows))
        return corpus

    def _handle_problems(self, n_bad: int) -> None:
        fatal = [p for p in self.problems if "are ignored" not in p.message]
        for p in self.problems:
            if p not in fatal:
                logger.warning("%s", p)
        if not fatal:
            return
        if self.config.on_error == "raise":
            listed = "\n  - ".join(map(str, fatal[:MAX_LISTED]))
            more = f"\n  ... and {len(fatal) - MAX_LISTED} more" if len(fatal) > MAX_LISTED else ""
            raise CorpusError(f"{self.root}: {len(fatal)} problem(s) in the corpus:\n  - {listed}{more}\n"
                              "Fix them, or read with ReaderConfig(on_error='skip') (recipes: data.on_error: skip) "
                              "to skip these rows.")
        logger.warning("%s: skipped %d bad row(s) (%d problem(s)); see corpus.problems", self.root, n_bad, len(fatal))

    # ------------------------------------------------------------------ access

    def splits(self) -> list[str]:
        present = {u.split for u in self.items}
        return [s for s in SPLITS if s in present] + sorted(present - set(SPLITS))

    def resolve_split(self, name: str) -> str:
        available = self.splits()
        lowered = name.strip().lower()
        for split in available:
            if split.lower() == lowered:
                return split
        if lowered in SPLIT_ALIASES and SPLIT_ALIASES[lowered] in available:
            return SPLIT_ALIASES[lowered]
        if lowered == "test":
            tests = [s for s in available if s.lower().startswith("test")]
            labelled = [s for s in tests if any(u.split == s and u.emo_class for u in self.items)]
            if "Test1" in available:
                return "Test1"
            if labelled or tests:
                return (labelled or tests)[0]
        raise CorpusError(f"split {name!r} is not in {self.root}; available splits: {', '.join(available) or 'none'}")

    def utterances(self, split: str | None = None, task: Literal["class", "attributes", "all"] = "all") -> list[Utterance]:
        items = self.items if split is None else [u for u in self.items if u.split == self.resolve_split(split)]
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
        sizes = ", ".join(f"{s}={sum(u.split == s for u in self.items)}" for s in self.splits())
        return f"MSPPodcast({self.root}, {len(self)} files: {sizes})"


# ---------------------------------------------------------------------- parsing helpers


def _read_csv(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise CorpusError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(required)} "
                                  f"(found {', '.join(header) or 'no header'})")
            reader.fieldnames = header
            return [(i + 2, {k: (v or "").strip() for k, v in row.items() if k is not None})
                    for i, row in enumerate(reader)]
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text ({exc}); re-save it as UTF-8") from None
    except csv.Error as exc:  # e.g. an unclosed quote that swallows the rest of the file
        raise CorpusError(f"{path}: not a readable CSV file ({exc}); check its quoting, or re-export it as "
                          "plain comma-separated UTF-8") from None


def _number(value: str, name: str, where: str, problems: list[Problem], allow_empty: bool) -> float | None:
    if value == "":
        if not allow_empty:
            problems.append(Problem(where, f"{name} is empty; give a number in [{ATTRIBUTE_MIN:g}, {ATTRIBUTE_MAX:g}]"))
        return None
    try:
        number = float(value)
    except ValueError:
        problems.append(Problem(where, f"{name}={value!r} is not a number; give a value in "
                                       f"[{ATTRIBUTE_MIN:g}, {ATTRIBUTE_MAX:g}]"))
        return None
    if math.isnan(number) or not ATTRIBUTE_MIN <= number <= ATTRIBUTE_MAX:
        problems.append(Problem(where, f"{name}={value} is outside [{ATTRIBUTE_MIN:g}, {ATTRIBUTE_MAX:g}]"))
        return None
    return number


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
    raw_class = row["EmoClass"]
    code = normalise_class(raw_class) if raw_class else None
    if raw_class and code is None:
        problems.append(Problem(where, f"EmoClass {raw_class!r} is unknown; valid codes: {', '.join(ALL_CODES)}"))
    unlabelled = not raw_class
    attrs = [_number(row[c], c, where, problems, allow_empty=unlabelled) for c in ("EmoAct", "EmoVal", "EmoDom")]
    gender = GENDERS.get(row["Gender"].lower())
    if gender is None:
        problems.append(Problem(where, f"Gender {row['Gender']!r} is unknown; use Female, Male or Unknown"))
    audio = root / "Audios" / name
    if not audio.is_file():
        problems.append(Problem(where, f"no audio file {audio}; add it or remove the row"))
    elif config.check_audio:
        from llmser.data.audio import AudioError, load_audio

        try:
            load_audio(audio, max_seconds=1.0)
        except AudioError as exc:
            problems.append(Problem(where, str(exc)))
    transcript = _read_transcript(root, name, where, problems, config)
    return Utterance(file_name=name, audio_path=audio, split=split, emo_class=code,
                     arousal=attrs[0], valence=attrs[1], dominance=attrs[2], speaker=row["SpkrID"],
                     gender=gender or "Unknown", transcript=transcript,
                     annotations=tuple(annotations.get(name, ())))


def _read_transcript(root: Path, name: str, where: str, problems: list[Problem], config: ReaderConfig) -> str | None:
    path = root / "Transcripts" / f"{Path(name).stem}.txt"
    if not path.is_file():
        if config.require_transcripts:
            problems.append(Problem(where, f"transcript {path} is missing; add it or transcribe the audio "
                                           "(the Whisper model in llmser does this in `llmser predict`)"))
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        problems.append(Problem(where, f"transcript {path} is not UTF-8; re-save it as UTF-8 "
                                       "(e.g. iconv -f latin1 -t utf-8)"))
        return None
    if not text and config.require_transcripts:
        problems.append(Problem(where, f"transcript {path} is empty; write the words into it, or delete it "
                                       "and let `llmser predict` transcribe the audio"))
    return text or None


def _read_detailed(path: Path, problems: list[Problem]) -> dict[str, list[Annotation]]:
    if not path.is_file():
        return {}
    result: dict[str, list[Annotation]] = {}
    for line, row in _read_csv(path, DETAILED_COLUMNS):
        where = f"{path.name} row {line} ({row.get('FileName') or '?'})"
        code = normalise_class(row["EmoClass"]) if row["EmoClass"] else None
        if row["EmoClass"] and code is None:
            problems.append(Problem(where, f"EmoClass {row['EmoClass']!r} is unknown; valid: {', '.join(ALL_CODES)} "
                                           "or class names"))
            continue
        values = [_number(row[c], c, where, problems, allow_empty=True) for c in ("EmoAct", "EmoVal", "EmoDom")]
        result.setdefault(row["FileName"], []).append(Annotation(row["WorkerID"], code, *values))
    return result
