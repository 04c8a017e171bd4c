"""The emotion schema of the MSP-Podcast challenge, defined once for the whole toolkit.

Task 1 predicts one of eight primary emotions, scored by macro-F1. Task 2 predicts arousal, valence
and dominance on a 1-7 scale, scored by the concordance correlation coefficient. Every other module
(reader, prompts, heads, metrics, submission files) takes its codes, names and order from here, so a
class index means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Task-1 class codes in the canonical order used for logits, probability vectors and confusion matrices.
CLASS_CODES: tuple[str, ...] = ("A", "S", "H", "U", "F", "D", "C", "N")
CLASS_NAMES: tuple[str, ...] = ("Angry", "Sad", "Happy", "Surprise", "Fear", "Disgust", "Contempt", "Neutral")
NUM_CLASSES = len(CLASS_CODES)
CODE_TO_INDEX = {code: i for i, code in enumerate(CLASS_CODES)}
CODE_TO_NAME = dict(zip(CLASS_CODES, CLASS_NAMES))

#: Codes MSP-Podcast uses besides the eight classes: X = annotators did not agree, O = "other".
#: They carry no task-1 label but do carry attributes, so task 2 keeps them by default.
NO_AGREEMENT = "X"
OTHER = "O"
EXTRA_CODES: tuple[str, ...] = (NO_AGREEMENT, OTHER)
ALL_CODES: tuple[str, ...] = CLASS_CODES + EXTRA_CODES

#: Task-2 attributes: name -> column in labels_consensus.csv.
ATTRIBUTES: tuple[str, ...] = ("arousal", "valence", "dominance")
ATTRIBUTE_COLUMNS: dict[str, str] = {"arousal": "EmoAct", "valence": "EmoVal", "dominance": "EmoDom"}
ATTRIBUTE_MIN = 1.0
ATTRIBUTE_MAX = 7.0
ATTRIBUTE_MID = (ATTRIBUTE_MIN + ATTRIBUTE_MAX) / 2

#: Extreme-value bins used by the reports: the challenge showed systems pull extremes to mid-range.
LOW_BIN_MAX = 2.5
HIGH_BIN_MIN = 5.5

#: Ways the annotators' detailed labels spell a class (MSP-Podcast releases use names; some tools codes).
_NAME_ALIASES = {
    "angry": "A", "anger": "A",
    "sad": "S", "sadness": "S",
    "happy": "H", "happiness": "H",
    "surprise": "U", "surprised": "U",
    "fear": "F", "fearful": "F",
    "disgust": "D", "disgusted": "D",
    "contempt": "C", "contemptuous": "C",
    "neutral": "N",
    "other": "O",
    "no agreement": "X", "noagreement": "X",
}


@dataclass(frozen=True)
class Verbalisation:
    """How a prompt names the eight classes; the LLM scores these strings as answers."""

    name: str
    words: tuple[str, ...]  # in CLASS_CODES order

    def __post_init__(self) -> None:
        if len(self.words) != NUM_CLASSES:
            raise ValueError(f"verbalisation {self.name!r} needs {NUM_CLASSES} words, got {len(self.words)}")
        if len({w.lower() for w in self.words}) != NUM_CLASSES:
            raise ValueError(f"verbalisation {self.name!r} has duplicate words: {self.words}")

    def word(self, code: str) -> str:
        return self.words[CODE_TO_INDEX[code]]

    def code_of(self, word: str) -> str | None:
        lowered = word.strip().lower()
        for code, candidate in zip(CLASS_CODES, self.words):
            if candidate.lower() == lowered:
                return code
        return None


VERBALISATIONS: dict[str, Verbalisation] = {
    v.name: v
    for v in (
        Verbalisation("name", ("angry", "sad", "happy", "surprised", "fearful", "disgusted", "contemptuous", "neutral")),
        Verbalisation("noun", ("anger", "sadness", "happiness", "surprise", "fear", "disgust", "contempt", "neutral")),
        Verbalisation("title", CLASS_NAMES),
    )
}

#: One-line definitions, used by prompt variants that explain the labels.
CLASS_DEFINITIONS: dict[str, str] = {
    "A": "irritated, annoyed or furious",
    "S": "unhappy, disappointed or grieving",
    "H": "pleased, cheerful or excited",
    "U": "astonished by something unexpected",
    "F": "afraid, anxious or alarmed",
    "D": "repelled or revolted by something",
    "C": "scornful, looking down on someone",
    "N": "calm, with no particular emotion",
}


def normalise_class(value: str) -> str | None:
    """Map a code (``"A"``) or a name (``"Angry"``, ``"Other-Concerned"``) to its code, or None if unknown."""
    text = str(value).strip()
    if text.upper() in ALL_CODES and len(text) == 1:
        return text.upper()
    lowered = text.lower()
    if lowered.startswith("other"):  # MSP-Podcast writes free-text "Other-<word>" annotations
        return OTHER
    return _NAME_ALIASES.get(lowered)


def class_index(code: str) -> int:
    """Index of a task-1 code; raises a KeyError naming the valid codes otherwise."""
    try:
        return CODE_TO_INDEX[code]
    except KeyError:
        raise KeyError(f"{code!r} is not a task-1 class code; valid codes are {', '.join(CLASS_CODES)}") from None
