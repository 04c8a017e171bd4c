"""The classical baselines' settings, one typed dataclass written beside the results (config.json)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llmser.baselines import BaselineError

#: Systems in the order they run; ``late_fusion`` combines the two before it.
SYSTEM_NAMES: tuple[str, ...] = ("egemaps", "tfidf", "late_fusion")
#: What late fusion averages.
FUSION_MEMBERS: tuple[str, ...] = ("egemaps", "tfidf")


@dataclass
class ClassicalConfig:
    """What ``llmser baseline classical`` fits; every field is a command-line flag of the same name."""

    systems: tuple[str, ...] = SYSTEM_NAMES
    train_split: str = "train"
    #: The only split that chooses regularisation; the target split is predicted, never consulted.
    dev_split: str = "dev"
    #: Inverse regularisation of the logistic regression, tried in this order (ties keep the earlier,
    #: more regularised value).
    c_grid: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
    #: Ridge strength per attribute, tried from strong to weak for the same reason.
    alpha_grid: tuple[float, ...] = (1000.0, 100.0, 10.0, 1.0, 0.1, 0.01)
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (2, 5)
    #: Transcripts that are missing or empty: ``error`` names the files (as the text branch does);
    #: ``empty`` scores them as empty text and logs how many; ``asr`` has Whisper (``asr_model``) make them,
    #: cached under ``cache_dir/transcripts`` and never written into the corpus.
    missing_transcripts: Literal["error", "empty", "asr"] = "error"
    asr_model: str = "smol"
    #: Same default folder as the neural branches' encoder caches (data.cache_dir in a recipe).
    cache_dir: str = ".cache/llmser/features"
    max_seconds: float | None = None  # crop long files before eGeMAPS (None: the whole file)
    max_iter: int = 5000
    #: Let --train-split/--dev-split be (or overlap) test: a deliberate refit, loudly logged, kept in summary.json.
    allow_test_fit: bool = False

    def __post_init__(self) -> None:
        problems = []
        unknown = [name for name in self.systems if name not in SYSTEM_NAMES]
        if unknown:
            problems.append(f"--systems: unknown system(s) {unknown}; choose from {', '.join(SYSTEM_NAMES)}")
        if not self.systems:
            problems.append(f"--systems: give at least one of {', '.join(SYSTEM_NAMES)}")
        if not self.c_grid or any(c <= 0 for c in self.c_grid):
            problems.append(f"--c-grid: give positive values, got {list(self.c_grid)}")
        if not self.alpha_grid or any(a <= 0 for a in self.alpha_grid):
            problems.append(f"--alpha-grid: give positive values, got {list(self.alpha_grid)}")
        if self.missing_transcripts not in ("error", "empty", "asr"):
            problems.append(f"--missing-transcripts: {self.missing_transcripts!r} is not 'error', 'empty' or 'asr'")
        if problems:
            raise BaselineError("\n".join(problems))

    def members_needed(self) -> tuple[str, ...]:
        """Feature systems to fit: those asked for, plus both members when late fusion is asked for."""
        needed = {name for name in self.systems if name != "late_fusion"}
        if "late_fusion" in self.systems:
            needed |= set(FUSION_MEMBERS)
        return tuple(name for name in FUSION_MEMBERS if name in needed)
