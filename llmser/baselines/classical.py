"""Fit the classical baselines on train, choose their regularisation on dev, predict the target split.

Per system (``egemaps``, ``tfidf``): a class-balanced logistic regression for task 1 (balanced
because MSP-Podcast is dominated by Neutral and Happy, and macro-F1 weighs every class the same)
and one ridge regression per attribute for task 2. Each grid value is fitted on the training split
and scored on the dev split (macro-F1, or the attribute's CCC); the best one is kept as it was
fitted, on train only. The target split's labels are never read before its report is written, so
no choice can depend on them. ``late_fusion`` averages the two systems' class probabilities and
attributes with equal weights: nothing is fitted, so there is nothing to choose.

Outputs, per system, the files every llmser system writes (``predictions.csv``, ``report.json``,
``report.md`` and plots) plus ``dev/`` (the same for the dev split) and ``selection.json`` (every
grid value's dev score and the chosen one); ``summary.json`` holds the dev and target headlines.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmser.baselines import BaselineError
from llmser.baselines.config import FUSION_MEMBERS, ClassicalConfig
from llmser.baselines.features import EgemapsExtractor, egemaps_matrix, tfidf_matrices, transcripts
from llmser.evaluation import metrics
from llmser.evaluation.predictions import Predictions
from llmser.schema import ATTRIBUTE_MAX, ATTRIBUTE_MIN, ATTRIBUTES, NUM_CLASSES
from llmser.utils.io import atomic_write_json
from llmser.utils.logging import get_logger

logger = get_logger(__name__)

#: The three splits a run touches: fit, choose, predict.
ROLES: tuple[str, ...] = ("train", "dev", "target")


@dataclass
class Splits:
    """The utterances (task="all": X/O and unlabelled files too) of each role, and the split names."""

    names: dict[str, str]
    utterances: dict[str, list]


@dataclass
class SystemResult:
    name: str
    dev: Predictions
    target: Predictions
    selection: dict[str, Any]
    seconds: float


# ---------------------------------------------------------------------- features per system


def egemaps_features(splits: Splits, config: ClassicalConfig) -> dict[str, np.ndarray]:
    extractor = EgemapsExtractor()
    return {role: egemaps_matrix(splits.utterances[role], extractor, config.cache_dir, config.max_seconds)
            for role in ROLES}


def tfidf_features(splits: Splits, config: ClassicalConfig) -> dict[str, Any]:
    texts = {role: transcripts(splits.utterances[role], splits.names[role], config.missing_transcripts,
                               asr=config.asr_model, cache_dir=config.cache_dir)
             for role in ROLES}
    return tfidf_matrices(texts, config)


#: system name -> (features of each role, whether the features are dense and need imputing + standardising)
FEATURES: dict[str, tuple[Callable[[Splits, ClassicalConfig], dict[str, Any]], bool]] = {
    "egemaps": (egemaps_features, True),
    "tfidf": (tfidf_features, False),
}


# ---------------------------------------------------------------------- models and dev selection


def _with_scaling(model: Any, dense: bool) -> Any:
    """Dense acoustic features differ in scale by orders of magnitude (Hz, dB, ratios): impute and
    standardise with training statistics. TF-IDF rows are L2-normalised already and sparse."""
    if not dense:
        return model
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(SimpleImputer(strategy="mean", keep_empty_features=True), StandardScaler(), model)


def classifier(c: float, dense: bool, max_iter: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return _with_scaling(LogisticRegression(C=c, class_weight="balanced", max_iter=max_iter), dense)


def regressor(alpha: float, dense: bool) -> Any:
    from sklearn.linear_model import Ridge

    return _with_scaling(Ridge(alpha=alpha), dense)


def class_rows(utterances: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Rows with one of the eight task-1 labels, and those labels as indices."""
    rows = [i for i, u in enumerate(utterances) if u.class_index is not None]
    return np.array(rows, dtype=np.int64), np.array([utterances[i].class_index for i in rows], dtype=np.int64)


def attribute_rows(utterances: Sequence, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows that have attribute ``name`` (X/O files included, as for the neural branches), and its values."""
    rows = [i for i, u in enumerate(utterances) if getattr(u, name) is not None]
    return np.array(rows, dtype=np.int64), np.array([getattr(utterances[i], name) for i in rows], dtype=np.float64)


def choose(scores: dict[float, float]) -> float:
    """The grid value with the best dev score; on a tie the first (grids run from strong to weak
    regularisation, so a tie keeps the simpler model)."""
    best = max(scores.values())
    return next(value for value, score in scores.items() if score == best)


def _fit_grid(make: Callable[[float], Any], grid: Sequence[float], x_train: Any, y_train: np.ndarray,
              x_dev: Any, score: Callable[[Any], float]) -> tuple[Any, dict[str, Any]]:
    """Fit one model per grid value on train, score each on dev, keep the chosen one (fitted on train)."""
    models, scores = {}, {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for value in grid:
            models[value] = make(value).fit(x_train, y_train)
            scores[value] = score(models[value])
    unconverged = sum("converge" in str(w.message).lower() for w in caught)
    chosen = choose(scores)
    selection = {"grid": {repr(v): s for v, s in scores.items()}, "chosen": chosen, "dev_score": scores[chosen],
                 "convergence_warnings": unconverged}
    return models[chosen], selection


def fit_task1(features: dict[str, Any], splits: Splits, config: ClassicalConfig, dense: bool) -> tuple[Any, dict]:
    """Logistic regression with the C of the best dev macro-F1."""
    train_rows, y_train = class_rows(splits.utterances["train"])
    dev_rows, y_dev = class_rows(splits.utterances["dev"])
    for role, rows in (("train", train_rows), ("dev", dev_rows)):
        if rows.size == 0:
            raise BaselineError(f"the {role} split {splits.names[role]!r} has no task-1 labels (A S H U F D C N); "
                                "the classical baselines fit on train and choose on dev")
    x_dev = features["dev"][dev_rows]
    model, selection = _fit_grid(lambda c: classifier(c, dense, config.max_iter), config.c_grid,
                                 features["train"][train_rows], y_train, x_dev,
                                 lambda m: metrics.macro_f1(y_dev, m.predict(x_dev)))
    return model, {"parameter": "C", "metric": f"macro_f1 on {splits.names['dev']}", **selection}


def fit_task2(features: dict[str, Any], splits: Splits, config: ClassicalConfig, dense: bool,
              name: str) -> tuple[Any, dict]:
    """Ridge regression for one attribute with the alpha of the best dev CCC."""
    train_rows, y_train = attribute_rows(splits.utterances["train"], name)
    dev_rows, y_dev = attribute_rows(splits.utterances["dev"], name)
    if train_rows.size < 2 or dev_rows.size < 2:
        raise BaselineError(f"{name}: train and dev need at least two files with attribute values each "
                            f"(found {train_rows.size} and {dev_rows.size})")
    x_dev = features["dev"][dev_rows]
    model, selection = _fit_grid(lambda a: regressor(a, dense), config.alpha_grid, features["train"][train_rows],
                                 y_train, x_dev, lambda m: metrics.ccc(y_dev, _clip(m.predict(x_dev))))
    return model, {"parameter": "alpha", "metric": f"ccc on {splits.names['dev']}", **selection}


def _clip(values: np.ndarray) -> np.ndarray:
    return np.clip(values, ATTRIBUTE_MIN, ATTRIBUTE_MAX)


def class_probs(model: Any, x: Any) -> np.ndarray:
    """(N, 8) probabilities in schema order; a class absent from train gets probability 0."""
    probs = np.zeros((x.shape[0], NUM_CLASSES))
    probs[:, model.classes_] = model.predict_proba(x)
    return probs


def fit_system(name: str, features: dict[str, Any], splits: Splits, config: ClassicalConfig,
               dense: bool) -> SystemResult:
    """Both tasks of one feature system; predictions for dev (its scores) and the target split."""
    started = time.perf_counter()
    model, task1 = fit_task1(features, splits, config, dense)
    probs = {role: class_probs(model, features[role]) for role in ("dev", "target")}
    attributes = {role: np.zeros((len(splits.utterances[role]), len(ATTRIBUTES))) for role in ("dev", "target")}
    task2 = {}
    for j, attribute in enumerate(ATTRIBUTES):
        regression, task2[attribute] = fit_task2(features, splits, config, dense, attribute)
        for role in attributes:
            attributes[role][:, j] = _clip(regression.predict(features[role]))
    predictions = {role: Predictions.from_probs([u.file_name for u in splits.utterances[role]], probs[role],
                                                attributes=attributes[role]) for role in probs}
    selection = {"system": name, "task1": task1, "task2": task2}
    logger.info("%s: C=%g (dev macro-F1 %.4f); alpha %s", name, task1["chosen"], task1["dev_score"],
                ", ".join(f"{a}={task2[a]['chosen']:g}" for a in ATTRIBUTES))
    return SystemResult(name, predictions["dev"], predictions["target"], selection, time.perf_counter() - started)


def late_fusion(members: Sequence[SystemResult]) -> SystemResult:
    """Equal-weight average of the members' class probabilities and attributes (nothing fitted)."""

    def average(parts: list[Predictions]) -> Predictions:
        probs = np.mean([p.probs for p in parts], axis=0)  # (N, 8)
        attributes = np.mean([p.attributes for p in parts], axis=0)  # (N, 3)
        return Predictions.from_probs(parts[0].file_names, probs, attributes=attributes)

    selection = {"system": "late_fusion", "members": [m.name for m in members], "weights": "equal (nothing chosen)"}
    return SystemResult("late_fusion", average([m.dev for m in members]), average([m.target for m in members]),
                        selection, sum(m.seconds for m in members))


# ---------------------------------------------------------------------- the whole run


def load_splits(corpus: Any, config: ClassicalConfig, split: str) -> Splits:
    from llmser.data.splits import splits_overlap

    names = {"train": corpus.resolve_split(config.train_split), "dev": corpus.resolve_split(config.dev_split),
             "target": corpus.resolve_split(split)}
    if splits_overlap(names["train"], names["dev"], corpus):
        raise BaselineError(f"--train-split and --dev-split are both {names['train']!r}; choosing regularisation "
                            "on the training data would always pick the weakest; give a separate dev split")
    return Splits(names, {role: corpus.utterances(name, task="all") for role, name in names.items()})


def fit_systems(splits: Splits, config: ClassicalConfig) -> dict[str, SystemResult]:
    """Every system asked for (and the members late fusion needs), in the order of the config."""
    results: dict[str, SystemResult] = {}
    for name in config.members_needed():
        started = time.perf_counter()
        build, dense = FEATURES[name]
        features = build(splits, config)
        seconds = time.perf_counter() - started
        logger.info("%s features: %.1f s", name, seconds)
        results[name] = fit_system(name, features, splits, config, dense)
        results[name].seconds += seconds
    if "late_fusion" in config.systems:
        results["late_fusion"] = late_fusion([results[name] for name in FUSION_MEMBERS])
    return {name: results[name] for name in config.systems}


def write_system(folder: Path, result: SystemResult, splits: Splits, corpus_name: str) -> dict[str, Any]:
    """The standard prediction and report files for the target split, and the same under ``dev/``."""
    from llmser.evaluation.report import evaluate, report_or_submit, summary_row

    title = f"classical {result.name} on {corpus_name}"
    result.target.write_csv(folder / "predictions.csv")
    target = report_or_submit(result.target, splits.utterances["target"], folder,
                              title=f"{title} / {splits.names['target']}")  # a blind split: submission files
    result.dev.write_csv(folder / "dev" / "predictions.csv")
    dev = evaluate(result.dev, splits.utterances["dev"], folder / "dev", title=f"{title} / {splits.names['dev']}",
                   plots=False)
    atomic_write_json(folder / "selection.json", {**result.selection, "splits": splits.names,
                                                  "dev_scores": summary_row(result.name, dev)})
    scored = {"blind": True} if target.get("blind") else summary_row(result.name, target)
    return {"dev": summary_row(result.name, dev), "target": scored, "seconds": round(result.seconds, 2)}


def run_classical(corpus_root: str | Path, split: str, out_dir: str | Path,
                  config: ClassicalConfig | None = None) -> dict[str, Any]:
    """Fit, choose on dev, predict ``split`` and write every system's files under ``out_dir``."""
    from llmser.data.msp_podcast import MSPPodcast
    from llmser.data.splits import SplitUse, check_split_roles

    config = config or ClassicalConfig()
    started = time.perf_counter()
    corpus = MSPPodcast.from_folder(corpus_root)
    uses = [SplitUse("--train-split", config.train_split, "fit"), SplitUse("--dev-split", config.dev_split, "select"),
            SplitUse("--split", split, "report")]
    roles = check_split_roles(uses, corpus, allow_test_fit=config.allow_test_fit)  # before any feature is made
    splits = load_splits(corpus, config, split)
    results = fit_systems(splits, config)
    out = Path(out_dir)
    summary: dict[str, Any] = {"corpus": str(corpus_root), "splits": splits.names, "config": asdict(config),
                               "systems": {}, "roles": roles}
    atomic_write_json(out / "config.json", asdict(config))
    for name, result in results.items():
        summary["systems"][name] = write_system(out / name, result, splits, Path(corpus_root).name)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    atomic_write_json(out / "summary.json", summary)
    return summary


__all__ = ["FEATURES", "ROLES", "Splits", "SystemResult", "choose", "class_probs", "fit_system", "fit_systems",
           "late_fusion", "load_splits", "run_classical", "write_system"]
