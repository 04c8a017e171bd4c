"""Ensemble methods over member predictions: plurality vote, (weighted) average, RandomForest stacking.

Every method takes ``{member name: Predictions}`` (row order may differ; rows are matched by file
name, in the first member's order) and returns llmser ``Predictions`` with each member's class in
a ``vote_<member>`` column. A member with only ``EmoClass`` (no probabilities) votes with a one-hot
vector; a task-2-only member takes part in the attributes only.

Stacking, as in the challenge's top systems: a RandomForest trained on the members' concatenated
class probabilities on the dev split, with stratified K-fold cross-validation to report an
out-of-fold macro-F1 (the honest estimate; the forest is then fitted on all of dev). Attributes come
from a RandomForestRegressor on the members' probabilities and attributes, or their plain mean.

Saving never pickles: a fitted forest is rebuilt by re-fitting, deterministically (fixed seed,
``n_jobs=1``), from its saved dev inputs (``stacking_inputs.safetensors`` + ``stacking.json``). That
takes seconds on a dev split, and unlike a tree dump it does not depend on scikit-learn internals;
the scikit-learn version is recorded and a different one is warned about.

    run = run_ensemble(EnsembleSpec.load("ensembles/demo.yaml"), corpus.utterances("dev"), "runs/demo/ensemble")
    run.predictions["stacking"].write_csv(...)
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmser.evaluation.metrics import ccc, macro_f1
from llmser.evaluation.predictions import Predictions, PredictionsError
from llmser.models.voting import majority_vote
from llmser.schema import ATTRIBUTE_MAX, ATTRIBUTE_MIN, ATTRIBUTES, CLASS_CODES, CODE_TO_INDEX, NUM_CLASSES
from llmser.utils.logging import get_logger

logger = get_logger(__name__)

VOTE_PREFIX = "vote_"
STACKING_JSON = "stacking.json"
STACKING_INPUTS = "stacking_inputs.safetensors"


# ---------------------------------------------------------------------- alignment helpers


def align_members(members: Mapping[str, Predictions], file_names: Sequence[str] | None = None
                  ) -> tuple[list[str], dict[str, Predictions]]:
    """The members' rows for ``file_names`` (default: the first member's), in that order.

    Raises naming every member that lacks files; extra files in a member are ignored.
    """
    if not members:
        raise ValueError("no ensemble members given")
    names = list(file_names) if file_names is not None else list(next(iter(members.values())).file_names)
    problems = []
    for member, preds in members.items():
        index = preds.index()
        absent = [n for n in names if n not in index]
        if absent:
            problems.append(f"{member}: no prediction for {len(absent)} of {len(names)} files, e.g. {absent[:3]}")
    if problems:
        raise PredictionsError("ensemble members do not cover the same files:\n  - " + "\n  - ".join(problems))
    return names, {member: preds.subset(names) for member, preds in members.items()}


def class_probs(preds: Predictions) -> np.ndarray | None:
    """(N, 8) probabilities; one-hot from ``classes`` when a member gives only its class; None if neither."""
    if preds.probs is not None:
        return preds.probs
    if preds.classes is not None:
        return np.eye(NUM_CLASSES)[[CODE_TO_INDEX[c] for c in preds.classes]]
    return None


def vote_columns(members: Mapping[str, Predictions]) -> dict[str, list[str]]:
    """``vote_<member>`` -> that member's class per row (members with a class only)."""
    return {f"{VOTE_PREFIX}{name}": list(p.classes) for name, p in members.items() if p.classes is not None}


def _weights(names: Sequence[str], weights: Mapping[str, float] | None) -> np.ndarray:
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"weights name unknown members {unknown}; members are {list(names)}")
    values = np.array([float(weights.get(n, 1.0)) for n in names])
    if (values <= 0).any():
        raise ValueError(f"weights must be > 0, got {dict(zip(names, values.tolist()))}")
    return values


def mean_attributes(members: Mapping[str, Predictions], weights: Mapping[str, float] | None = None
                    ) -> np.ndarray | None:
    """Weighted mean of the members' attributes (members without attributes are left out)."""
    with_attrs = {n: p for n, p in members.items() if p.attributes is not None}
    if not with_attrs:
        return None
    w = _weights(list(with_attrs), {k: v for k, v in (weights or {}).items() if k in with_attrs})
    stacked = np.stack([p.attributes for p in with_attrs.values()])  # (K, N, 3)
    return np.tensordot(w / w.sum(), stacked, axes=1)  # (N, 3)


def _class_members(members: Mapping[str, Predictions]) -> dict[str, np.ndarray]:
    voters = {n: class_probs(p) for n, p in members.items()}
    voters = {n: v for n, v in voters.items() if v is not None}
    if not voters:
        raise PredictionsError("no member predicts classes (EmoClass or prob_* columns); nothing to vote on")
    return voters


# ---------------------------------------------------------------------- plurality and average


def plurality_vote(members: Mapping[str, Predictions]) -> Predictions:
    """Class by plurality across members, ties by summed probability; attributes averaged.

    Each member casts its own class (``EmoClass``): an LLM member's is the vote of its prompt variants under
    its rule, which need not be the argmax of the probabilities it reports (their mean).
    """
    names, aligned = align_members(members)
    voters = _class_members(aligned)
    labels = [[CODE_TO_INDEX[c] for c in aligned[n].classes] if aligned[n].classes is not None else v.argmax(1)
              for n, v in voters.items()]
    result = majority_vote(list(voters.values()), list(voters), labels)
    classes = [CLASS_CODES[i] for i in result.labels]
    return Predictions(names, classes, result.probs, mean_attributes(aligned), vote_columns(aligned))


def average(members: Mapping[str, Predictions], weights: Mapping[str, float] | None = None) -> Predictions:
    """Weighted mean of the members' probabilities (class = its argmax) and of their attributes."""
    names, aligned = align_members(members)
    _weights(list(aligned), weights)  # names unknown members or bad values
    voters = _class_members(aligned)
    w = _weights(list(voters), {k: v for k, v in (weights or {}).items() if k in voters})
    probs = np.tensordot(w / w.sum(), np.stack(list(voters.values())), axes=1)  # (N, 8)
    attrs = mean_attributes(aligned, weights)
    if len(voters) == 1:  # nothing to average: the member's own class (an LLM member's prompt vote) stands
        only = aligned[next(iter(voters))]
        return Predictions(names, only.classes, probs, attrs, vote_columns(aligned))
    return Predictions.from_probs(names, probs, attributes=attrs, extras=vote_columns(aligned))


COMBINE_METHODS = ("member", "plurality", "average", "stacking")


def combine(method: str, members: Mapping[str, Predictions], *, weights: Mapping[str, float] | None = None,
            member: str | None = None, stacker: StackingEnsemble | None = None) -> Predictions:
    """The members' predictions combined by ``method``: one ``member`` alone, ``plurality``, (weighted)
    ``average`` or a fitted ``stacker`` (``fusion`` reads embeddings, not predictions: the predictor runs it)."""
    if method == "member":
        if member not in members:
            raise ValueError(f"method 'member' names member {member!r}, which is not one of {sorted(members)}")
        return members[member]
    if method == "plurality":
        return plurality_vote(members)
    if method == "average":
        return average(members, weights)
    if method == "stacking":
        if stacker is None:
            raise ValueError("method 'stacking' needs a fitted StackingEnsemble (the system's stacking/ folder)")
        return stacker.predict(members)
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(COMBINE_METHODS)} (or fusion)")


# ---------------------------------------------------------------------- stacking


def _reference_targets(references: Sequence[Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """File names, class indices (-1 = no task-1 label) and attributes (NaN = none) of references."""
    names = [str(r.file_name) for r in references]
    labels = np.array([CODE_TO_INDEX.get(getattr(r, "emo_class", None) or "", -1) for r in references])
    attrs = np.array([[np.nan if getattr(r, a, None) is None else float(getattr(r, a)) for a in ATTRIBUTES]
                      for r in references], dtype=np.float64).reshape(-1, len(ATTRIBUTES))
    return names, labels, attrs


@dataclass
class StackingEnsemble:
    """RandomForest meta-model over the members' probabilities. ``fit`` on dev, ``predict`` on test."""

    n_estimators: int = 200
    max_depth: int | None = None
    min_samples_leaf: int = 1
    folds: int = 5
    seed: int = 0
    attributes: str = "forest"  # "forest" (RandomForestRegressor) or "mean" (members' mean)
    members: list[str] = field(default_factory=list)  # set by fit: the member order of the features
    attribute_members: list[str] = field(default_factory=list)
    cv: dict[str, Any] = field(default_factory=dict)  # out-of-fold scores of the last fit
    fold_ids: np.ndarray | None = None  # (n labelled,) the CV fold of each labelled dev row

    def __post_init__(self) -> None:
        if self.attributes not in ("forest", "mean"):
            raise ValueError(f"attributes must be 'forest' or 'mean', got {self.attributes!r}")
        self._classifier: Any = None
        self._regressor: Any = None
        self._inputs: dict[str, np.ndarray] = {}

    @classmethod
    def from_spec(cls, spec: Any) -> StackingEnsemble:
        return cls(n_estimators=spec.n_estimators, max_depth=spec.max_depth, min_samples_leaf=spec.min_samples_leaf,
                   folds=spec.folds, seed=spec.seed, attributes=spec.attributes)

    # -------------------------------------------------------------- features

    def class_features(self, aligned: Mapping[str, Predictions]) -> np.ndarray:
        """(N, 8K): the members' probability vectors side by side, in ``self.members`` order."""
        return np.concatenate([class_probs(aligned[m]) for m in self.members], axis=1)

    def attribute_features(self, aligned: Mapping[str, Predictions]) -> np.ndarray:
        """(N, 8K + 3K'): class features plus the attributes of members that predict them."""
        parts = [self.class_features(aligned)] + [aligned[m].attributes for m in self.attribute_members]
        return np.concatenate(parts, axis=1)

    def _check_members(self, members: Mapping[str, Predictions]) -> None:
        missing = [m for m in self.members + self.attribute_members if m not in members]
        if missing:
            raise PredictionsError(f"stacking was fitted with members {self.members}; {missing} are missing now")
        no_probs = [m for m in self.members if class_probs(members[m]) is None]
        no_attrs = [m for m in self.attribute_members if members[m].attributes is None]
        if no_probs or no_attrs:
            raise PredictionsError(f"members {no_probs} lack classes / {no_attrs} lack attributes that they had at fit time")

    # -------------------------------------------------------------- fit

    def fit(self, members: Mapping[str, Predictions], references: Sequence[Any],
            cross_validate: bool = True) -> StackingEnsemble:
        """Cross-validate (stratified K-fold; out-of-fold scores in ``self.cv``), then fit on all references.
        ``cross_validate=False`` skips the report (a caller that scores the model out of fold itself)."""
        names, labels, targets = _reference_targets(references)
        _, aligned = align_members(members, names)
        self.members = list(_class_members(aligned))
        self.attribute_members = [m for m, p in aligned.items() if p.attributes is not None]
        keep = labels >= 0
        if keep.sum() < 2:
            raise ValueError(f"stacking needs labelled references; only {int(keep.sum())} of {len(names)} have a class")
        has_attrs = ~np.isnan(targets).any(axis=1)
        x_class = self.class_features(aligned)
        x_attr = self.attribute_features(aligned) if self.attribute_members else np.zeros((len(names), 0))
        self._inputs = {"x_class": x_class[keep], "y_class": labels[keep],
                        "x_attr": x_attr[has_attrs], "y_attr": targets[has_attrs]}
        self.cv = self._cross_validate(aligned, keep, has_attrs) if cross_validate else {}
        self._fit_models()
        return self

    def _forest(self, regressor: bool = False) -> Any:
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        kind = RandomForestRegressor if regressor else RandomForestClassifier
        return kind(n_estimators=self.n_estimators, max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf,
                    random_state=self.seed, n_jobs=1)

    def _uses_regressor(self) -> bool:
        return self.attributes == "forest" and self._inputs["x_attr"].shape[1] > 0 and len(self._inputs["y_attr"]) >= 2

    def _fit_models(self) -> None:
        self._classifier = self._forest().fit(self._inputs["x_class"], self._inputs["y_class"])
        self._regressor = None
        if self._uses_regressor():
            self._regressor = self._forest(regressor=True).fit(self._inputs["x_attr"], self._inputs["y_attr"])

    def _splitter(self, labels: np.ndarray) -> Any:
        from sklearn.model_selection import StratifiedKFold

        largest = int(np.bincount(labels).max())
        folds = min(self.folds, largest, len(labels))
        if folds < self.folds:
            logger.warning("stacking: %d folds requested but the largest class has %d dev example(s); using %d",
                           self.folds, largest, folds)
        return StratifiedKFold(n_splits=max(folds, 2), shuffle=True, random_state=self.seed)

    def _cross_validate(self, aligned: Mapping[str, Predictions], keep: np.ndarray, has_attrs: np.ndarray
                        ) -> dict[str, Any]:
        x, y = self._inputs["x_class"], self._inputs["y_class"]
        oof = np.zeros((len(y), NUM_CLASSES))
        self.fold_ids = np.full(len(y), -1)
        splitter = self._splitter(y)
        with warnings.catch_warnings():
            # "the least populated class has only n members": expected on small dev splits, logged above
            warnings.filterwarnings("ignore", message=".*least populated class.*")
            splits = list(splitter.split(x, y))
        fold_f1 = []
        for k, (train, held) in enumerate(splits):
            forest = self._forest().fit(x[train], y[train])
            oof[held] = _proba(forest, x[held])
            self.fold_ids[held] = k
            fold_f1.append(macro_f1(y[held], oof[held].argmax(1)))
        cv: dict[str, Any] = {
            "folds": len(splits), "n_class": int(len(y)), "oof_macro_f1": macro_f1(y, oof.argmax(1)),
            "fold_macro_f1": fold_f1,
            "member_macro_f1": {m: macro_f1(y, class_probs(aligned[m])[keep].argmax(1)) for m in self.members},
        }
        if self._uses_regressor():
            cv["oof_ccc"] = self._cross_validate_attributes()
        cv["member_ccc"] = {m: _cccs(self._inputs["y_attr"], aligned[m].attributes[has_attrs])
                            for m in self.attribute_members}
        logger.info("stacking: out-of-fold macro-F1 %.4f over %d folds (members: %s)", cv["oof_macro_f1"],
                    cv["folds"], ", ".join(f"{m} {v:.4f}" for m, v in cv["member_macro_f1"].items()))
        return cv

    def _cross_validate_attributes(self) -> dict[str, float]:
        from sklearn.model_selection import KFold

        x, y = self._inputs["x_attr"], self._inputs["y_attr"]
        oof = np.zeros_like(y)
        for train, held in KFold(n_splits=min(self.folds, len(y)), shuffle=True, random_state=self.seed).split(x):
            oof[held] = self._forest(regressor=True).fit(x[train], y[train]).predict(x[held])
        return _cccs(y, oof)

    # -------------------------------------------------------------- predict

    def predict(self, members: Mapping[str, Predictions]) -> Predictions:
        """Predictions on the members' files (the first member's order); needs a fitted or loaded model."""
        if self._classifier is None:
            raise RuntimeError("StackingEnsemble is not fitted; call fit(dev_members, dev_references) or load(dir)")
        names, aligned = align_members(members)
        self._check_members(aligned)
        probs = _proba(self._classifier, self.class_features(aligned))
        if self._regressor is not None:
            attrs = np.clip(self._regressor.predict(self.attribute_features(aligned)), ATTRIBUTE_MIN, ATTRIBUTE_MAX)
        else:
            attrs = mean_attributes(aligned)
        return Predictions.from_probs(names, probs, attributes=attrs, extras=vote_columns(aligned))

    # -------------------------------------------------------------- save / load (no pickle)

    def save(self, directory: str | Path) -> Path:
        """Write the settings, CV scores and dev inputs; ``load`` re-fits the same forests from them."""
        import sklearn

        from llmser.utils.io import atomic_write_json
        from llmser.utils.weights import save_safetensors

        if not self._inputs:
            raise RuntimeError("nothing to save: StackingEnsemble is not fitted")
        directory = Path(directory)
        settings = {k: getattr(self, k) for k in ("n_estimators", "max_depth", "min_samples_leaf", "folds", "seed",
                                                  "attributes", "members", "attribute_members")}
        save_safetensors(self._inputs, directory / STACKING_INPUTS)
        atomic_write_json(directory / STACKING_JSON, {"settings": settings, "cv": self.cv,
                                                      "sklearn_version": sklearn.__version__})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> StackingEnsemble:
        import sklearn

        from llmser.utils.weights import load_safetensors

        directory = Path(directory)
        meta_path, inputs_path = directory / STACKING_JSON, directory / STACKING_INPUTS
        missing = [p.name for p in (meta_path, inputs_path) if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{directory} lacks {missing}; is it a folder written by StackingEnsemble.save?")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("sklearn_version") != sklearn.__version__:
            logger.warning("%s was fitted with scikit-learn %s, this is %s: the re-fitted forest may differ slightly",
                           directory, meta.get("sklearn_version"), sklearn.__version__)
        model = cls(**meta["settings"])
        model.cv = meta.get("cv", {})
        model._inputs = load_safetensors(inputs_path, framework="np")
        model._fit_models()
        return model


def _proba(forest: Any, x: np.ndarray) -> np.ndarray:
    """(N, 8) probabilities, with zeros for classes the forest never saw in training."""
    out = np.zeros((len(x), NUM_CLASSES))
    out[:, forest.classes_.astype(int)] = forest.predict_proba(x)
    return out


def _cccs(targets: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    return {name: ccc(targets[:, j], preds[:, j]) for j, name in enumerate(ATTRIBUTES)} if len(targets) >= 2 else {}


# ---------------------------------------------------------------------- running a spec


@dataclass
class EnsembleRun:
    """What ``run_ensemble`` produced: predictions per method on the predict split, and the stacker."""

    predictions: dict[str, Predictions]
    stacking: StackingEnsemble | None = None


def run_ensemble(spec: Any, fit_references: Sequence[Any] | None = None, out_dir: str | Path | None = None
                 ) -> EnsembleRun:
    """Every method of ``spec`` on its predict split; stacking fits on ``fit_references`` (the fit split's
    utterances). With ``out_dir``: ``<method>_predictions.csv`` per method and ``stacking/`` are written."""
    from llmser.ensemble.spec import load_member_predictions

    members = load_member_predictions(spec, spec.predict_split)
    results: dict[str, Predictions] = {}
    stacker = None
    for method in spec.methods:
        if method == "plurality":
            results[method] = plurality_vote(members)
        elif method == "average":
            results[method] = average(members, {n: m.weight for n, m in spec.members.items()})
        elif method == "stacking":
            if not fit_references:
                raise ValueError(f"stacking needs the {spec.fit_split!r} split's reference utterances to fit on")
            stacker = StackingEnsemble.from_spec(spec.stacking)
            stacker.fit(load_member_predictions(spec, spec.fit_split, for_fitting=True), fit_references)
            results[method] = stacker.predict(members)
        else:
            raise ValueError(f"unknown ensemble method {method!r}")
    if out_dir is not None:
        out_dir = Path(out_dir)
        for method, preds in results.items():
            preds.write_csv(out_dir / f"{method}_predictions.csv")
        if stacker is not None:
            stacker.save(out_dir / "stacking")
    return EnsembleRun(results, stacker)
