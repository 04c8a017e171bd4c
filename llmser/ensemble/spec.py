"""Ensemble specs: which systems are combined and by which methods, as a YAML file (see ensembles/).

    members:
      wavlm: runs/wavlm/{split}_predictions.csv           # a prediction CSV per split ({split} = dev, test)
      text_llm:
        predictions: {dev: runs/text/dev.csv, test: runs/text/test_predictions.csv}
        weight: 2.0                                        # for ``average`` only
      fusion:
        outputs: runs/demo/outputs                         # cached branch outputs (probs, attributes)
        branch: fusion                                     # folder in outputs; default: the member name
    methods: [plurality, average, stacking]
    fit_split: dev                                         # stacking trains here (5-fold CV reported)
    predict_split: test
    stacking: {n_estimators: 200, max_depth: null, folds: 5, seed: 0, attributes: forest}

Relative paths are read from the working directory, as in training recipes. Inside a YAML flow
mapping (``{...}``) quote a path that holds ``{split}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmser.config import ConfigError, from_dict
from llmser.data.splits import SplitUse, leaks, splits_overlap

METHODS = ("plurality", "average", "stacking")


@dataclass
class MemberSpec:
    """Where one member's predictions come from: prediction CSVs, or cached branch outputs."""

    predictions: str | dict[str, str] | None = None  # a path with {split}, or split -> path
    outputs: str | None = None  # a branch-outputs folder (llmser.data.branch_outputs)
    branch: str | None = None  # the branch folder inside ``outputs``; None = the member's name
    weight: float = 1.0  # its weight in ``average``

    def __post_init__(self) -> None:
        issues = []
        if (self.predictions is None) == (self.outputs is None):
            issues.append("give exactly one of predictions (CSV paths) or outputs (a branch-outputs folder)")
        if self.branch is not None and self.outputs is None:
            issues.append("branch only applies with outputs")
        if not self.weight > 0:
            issues.append(f"weight must be > 0, got {self.weight}")
        if issues:
            raise ValueError("; ".join(issues))

    def csv_path(self, split: str) -> Path | None:
        """The prediction CSV of ``split``, or None when the member reads branch outputs."""
        if self.predictions is None:
            return None
        if isinstance(self.predictions, dict):
            if split not in self.predictions:
                raise KeyError(f"no prediction file for split {split!r} (it has {', '.join(self.predictions)})")
            return Path(self.predictions[split])
        return Path(self.predictions.replace("{split}", split))

    def covers(self, split: str) -> bool:
        """Whether the spec names a source for ``split``."""
        if isinstance(self.predictions, dict):
            return split in self.predictions
        return True

    @property
    def split_agnostic(self) -> bool:
        """A single CSV path without ``{split}``: one file, fine for one split but not for two."""
        return isinstance(self.predictions, str) and "{split}" not in self.predictions


@dataclass
class StackingSpec:
    """The RandomForest meta-model: trained on the members' probabilities of ``fit_split``."""

    n_estimators: int = 200
    max_depth: int | None = None
    min_samples_leaf: int = 1
    folds: int = 5  # stratified K-fold on the fit split, for the out-of-fold macro-F1
    seed: int = 0
    attributes: Literal["forest", "mean"] = "forest"  # a RandomForestRegressor, or the members' mean

    def __post_init__(self) -> None:
        issues = []
        if self.n_estimators < 1:
            issues.append(f"n_estimators must be >= 1, got {self.n_estimators}")
        if self.max_depth is not None and self.max_depth < 1:
            issues.append(f"max_depth must be >= 1 or null, got {self.max_depth}")
        if self.min_samples_leaf < 1:
            issues.append(f"min_samples_leaf must be >= 1, got {self.min_samples_leaf}")
        if self.folds < 2:
            issues.append(f"folds must be >= 2, got {self.folds}")
        if issues:
            raise ValueError("; ".join(issues))


@dataclass
class EnsembleSpec:
    members: dict[str, MemberSpec] = field(default_factory=dict)
    methods: list[Literal["plurality", "average", "stacking"]] = field(
        default_factory=lambda: ["plurality", "average", "stacking"])
    fit_split: str = "dev"
    predict_split: str = "test"
    stacking: StackingSpec = field(default_factory=StackingSpec)
    #: Let stacking fit on test (a deliberate final refit): loudly logged, recorded in ensemble.json.
    allow_test_fit: bool = False

    def __post_init__(self) -> None:
        issues = []
        if len(self.members) < 2:
            issues.append(f"an ensemble needs at least two members, got {len(self.members)} "
                          f"({', '.join(self.members) or 'none'})")
        if not self.methods:
            issues.append(f"methods is empty; choose from {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            issues.append(f"methods repeat: {self.methods}")
        stacking = "stacking" in self.methods
        test_fit = [] if self.allow_test_fit else leaks(self.split_uses())
        issues += [f"{why} (or allow_test_fit=true for a deliberate final refit)" for _, why in test_fit]
        if stacking and not test_fit and splits_overlap(self.fit_split, self.predict_split):
            issues.append(f"fit_split {self.fit_split!r} and predict_split {self.predict_split!r} share files: stacking "
                          "would be scored on the examples it learned from; fit on dev (fit_split: dev) and predict test")
        needed = list(dict.fromkeys([self.predict_split] + ([self.fit_split] if stacking else [])))
        for name, member in self.members.items():
            if isinstance(member, MemberSpec):  # else already reported by the config loader
                issues += _member_issues(name, member, needed, self.fit_split, self.predict_split)
        if issues:
            raise ValueError("\n  - ".join(issues))

    def split_uses(self) -> list[SplitUse]:
        """The spec's splits by role (``llmser.data.splits``): stacking fits on fit_split, all report predict_split."""
        fit = [SplitUse("fit_split", self.fit_split, "fit")] if "stacking" in self.methods else []
        return [*fit, SplitUse("predict_split", self.predict_split, "report")]

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> EnsembleSpec:
        """Build from a mapping; a member given as a plain string is its prediction path."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: an ensemble spec is a mapping (members, methods, ...), "
                              f"not a {type(data).__name__}")
        data = dict(data)
        members = data.get("members")
        if isinstance(members, dict):
            data["members"] = {str(k): {"predictions": v} if isinstance(v, str) else v for k, v in members.items()}
        elif members is not None:
            raise ConfigError(f"{source}: members must map names to prediction paths or mappings, got {members!r}")
        return from_dict(cls, data, source=source)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> EnsembleSpec:
        """Read a YAML spec (``key=value`` overrides as in recipes); every problem is named in one error."""

        from llmser.config import apply_overrides

        path = Path(path)
        if not path.is_file():
            from llmser.utils.io import missing

            raise ConfigError(f"ensemble spec {path} {missing(path)}; specs live under ensembles/ (e.g. ensembles/demo.yaml)")
        from llmser.config import read_yaml

        text = path.read_text(encoding="utf-8")
        try:
            data = read_yaml(path) or {}  # duplicate keys and aliases refused, like recipes
        except ConfigError as exc:
            hint = ("\nHint: inside a { } mapping, quote paths with {split}: {a: 'runs/a/{split}.csv'}"
                    if "{split}" in text and "not valid YAML" in str(exc) else "")
            raise ConfigError(f"{exc}{hint}") from None
        if isinstance(data, dict):
            data = apply_overrides(data, overrides or [])
        return cls.from_dict(data, source=str(path))


def _member_issues(name: str, member: MemberSpec, needed: list[str], fit_split: str, predict_split: str) -> list[str]:
    """What is wrong with one member's prediction files for the splits ``needed`` (each named once)."""
    hint = "write its path with {split} (e.g. runs/x/{split}_predictions.csv) or as a mapping of split to path"
    issues = []
    if len(needed) > 1 and member.split_agnostic:
        issues.append(f"member {name!r} has one prediction file for both {fit_split!r} (stacking trains "
                      f"on it) and {predict_split!r}; {hint}")
    missing = [split for split in needed if not member.covers(split)]
    if missing:
        issues.append(f"member {name!r} has no prediction file for split {' or '.join(map(repr, missing))}; {hint}")
    return issues


def load_member_predictions(spec: EnsembleSpec, split: str, for_fitting: bool = False) -> dict[str, Any]:
    """Member name -> its ``Predictions`` on ``split``; all unreadable members are named in one error.

    ``for_fitting``: the split a meta-model learns from; a member whose cached outputs on it are in-sample
    (its model trained on those files) is refused, as fusion refuses them.
    """
    from llmser.data.branch_outputs import load_branch_outputs
    from llmser.evaluation.predictions import Predictions, PredictionsError

    loaded: dict[str, Predictions] = {}
    problems = []
    for name, member in spec.members.items():
        try:
            path = member.csv_path(split)
            if path is not None:
                loaded[name] = Predictions.read_csv(path)
            else:
                outputs = load_branch_outputs(member.outputs, member.branch or name, split)
                if for_fitting and outputs.in_sample_for(split):
                    raise ValueError(f"its outputs on {split!r} are in-sample (its model trained on {outputs.trained_on!r}); "
                                     "fit stacking on dev, or on cross-fitted outputs (collect-outputs --cross-fit)")
                loaded[name] = outputs.predictions()
        except (PredictionsError, FileNotFoundError, KeyError, ValueError) as exc:
            problems.append(f"member {name!r}: {exc.args[0] if exc.args else exc}")
    if problems:
        raise PredictionsError(f"cannot read the ensemble's {split} predictions:\n  - " + "\n  - ".join(problems))
    return loaded
