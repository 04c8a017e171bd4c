"""What a built system ships, chosen on dev: every candidate scored on out-of-sample dev predictions.

    table = score_candidates(members, dev_utterances, fusion={"fusion": oof}, folds=5)
    best = choose(table, metric="combined")

The candidates are each member alone, their plurality vote, their average, a weighted average, RandomForest
stacking, and every fusion adapter given (its out-of-fold dev predictions, see
``llmser.training.crossfit.cross_fit_dev``). The members trained on train, so their dev predictions are
out of sample as they are; whatever *learns* from them (the average's weights, stacking, fusion) is scored
out of fold: fitted on ``dev[^k/K]``, predicted on ``dev[k/K]``, with the same speaker-disjoint folds
(``llmser.data.folds``) for every candidate, so no candidate is scored on examples it learned from and all
are scored on the same files. The shipped model is then fitted on all of dev.

The table is what ``llmser build-system --method auto`` writes into ``llmser.json`` and the model card.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmser.data.folds import fold_of_each
from llmser.ensemble.methods import StackingEnsemble, align_members, average, plurality_vote
from llmser.evaluation.metrics import ccc, macro_f1
from llmser.evaluation.predictions import Predictions, concat_predictions
from llmser.schema import ATTRIBUTES, CODE_TO_INDEX
from llmser.utils.logging import get_logger

logger = get_logger(__name__)

SELECTION_METRICS = ("combined", "macro_f1", "ccc_mean")
#: Each member's weight in the weighted average is searched over this grid (0 drops the member).
WEIGHT_GRID = (0.0, 1.0, 2.0, 3.0)


@dataclass
class Candidate:
    """One way to ship the system: its method, what the method needs, and its out-of-sample dev scores."""

    name: str
    method: str  # member | plurality | average | stacking | fusion
    settings: dict[str, Any] = field(default_factory=dict)  # member / weights / fusion run name
    scores: dict[str, float | None] = field(default_factory=dict)
    how: str = ""  # how the dev predictions were made out of sample

    def row(self) -> dict[str, Any]:
        return {"candidate": self.name, "method": self.method, **self.settings, **self.scores, "how": self.how}


def dev_scores(predictions: Predictions, references: Sequence[Any]) -> dict[str, float | None]:
    """Macro-F1 on the files with a class, CCC per attribute on those with attributes, their mean and
    ``combined`` (the mean of macro-F1 and mean CCC, as the engine's ``metric_for_best: combined``)."""
    rows = predictions.index()
    refs = [r for r in references if r.file_name in rows]
    out: dict[str, float | None] = {"macro_f1": None, "ccc_mean": None}
    classed = [r for r in refs if r.emo_class in CODE_TO_INDEX]
    if classed and predictions.classes is not None:
        out["macro_f1"] = macro_f1([CODE_TO_INDEX[r.emo_class] for r in classed],
                                   [CODE_TO_INDEX[predictions.classes[rows[r.file_name]]] for r in classed])
    if predictions.attributes is not None:
        values = []
        for j, name in enumerate(ATTRIBUTES):
            known = [r for r in refs if getattr(r, name, None) is not None]
            if len(known) >= 2:
                out[f"ccc_{name}"] = ccc([getattr(r, name) for r in known],
                                         [predictions.attributes[rows[r.file_name], j] for r in known])
                values.append(out[f"ccc_{name}"])
        out["ccc_mean"] = float(np.mean(values)) if values else None
    parts = [v for v in (out["macro_f1"], out["ccc_mean"]) if v is not None]
    out["combined"] = float(np.mean(parts)) if parts else None
    return out


def dev_folds(references: Sequence[Any], folds: int) -> dict[str, int]:
    """File name -> its speaker-disjoint fold (``dev[k/K]``, as ``llmser.data.folds`` deals them)."""
    ids = fold_of_each([r.speaker for r in references], [r.file_name for r in references], folds)
    return {r.file_name: k for r, k in zip(references, ids)}


def _subset(members: Mapping[str, Predictions], names: Sequence[str]) -> dict[str, Predictions]:
    return {m: p.subset(names) for m, p in members.items()}


def fit_average_weights(members: Mapping[str, Predictions], references: Sequence[Any],
                        metric: str = "combined") -> dict[str, float]:
    """Member weights for ``average`` that score best on ``references`` (a grid, 0 = left out; ties go to the
    most even weights, then the earliest in the grid)."""
    names = list(members)
    best, best_key = None, None
    for weights in itertools.product(WEIGHT_GRID, repeat=len(names)):
        if not any(weights):
            continue
        kept = {n: w for n, w in zip(names, weights) if w > 0}
        score = dev_scores(weighted_average(members, kept), references).get(metric)
        key = (-np.inf if score is None else score, -float(np.std(weights)))
        if best_key is None or key > best_key:
            best, best_key = kept, key
    return best or {n: 1.0 for n in names}


def weighted_average(members: Mapping[str, Predictions], weights: Mapping[str, float]) -> Predictions:
    """``average`` of the members ``weights`` keeps (a member with no weight is left out, not weighted 1)."""
    return average({n: members[n] for n in weights}, weights)


def _out_of_fold(fit_predict: Any, members: Mapping[str, Predictions], references: Sequence[Any],
                 folds: dict[str, int]) -> Predictions:
    """Predictions on every dev file from a model fitted on the other folds: ``fit_predict(fit_members,
    fit_refs, held_members) -> Predictions``."""
    order, _ = align_members(members, [r.file_name for r in references])
    parts = []
    for k in sorted(set(folds.values())):
        held = [n for n in order if folds[n] == k]
        fit_refs = [r for r in references if folds[r.file_name] != k]
        part = fit_predict(_subset(members, [r.file_name for r in fit_refs]), fit_refs, _subset(members, held))
        part.extras = {}  # vote columns differ between folds (a fold's weights may drop a member); not scored
        parts.append(part)
    return concat_predictions(parts).subset(order)


def score_candidates(members: Mapping[str, Predictions], references: Sequence[Any], *,
                     fusion: Mapping[str, Predictions] | None = None, folds: int = 5, seed: int = 0,
                     metric: str = "combined", stacking: StackingEnsemble | None = None,
                     fusion_notes: Mapping[str, str] | None = None) -> list[Candidate]:
    """Every candidate's out-of-sample dev scores (see the module docstring); ``fusion`` maps each fusion run's
    name to its out-of-fold dev predictions, and ``fusion_notes`` says how a run's were made where it was not
    by training on dev folds."""
    if metric not in SELECTION_METRICS:
        raise ValueError(f"selection metric {metric!r} is not one of {', '.join(SELECTION_METRICS)}")
    names, aligned = align_members(members, [r.file_name for r in references])
    fold_ids = dev_folds(references, folds)
    candidates = [Candidate(f"{m}_alone", "member", {"member": m}, dev_scores(p, references),
                            "the member's dev predictions (it trained on train)") for m, p in aligned.items()]
    if len(aligned) > 1:
        candidates.append(Candidate("plurality", "plurality", {}, dev_scores(plurality_vote(aligned), references),
                                    "no fitting"))
        candidates.append(Candidate("average", "average", {}, dev_scores(average(aligned), references), "no fitting"))
        weighted = _out_of_fold(lambda fm, fr, hm: weighted_average(hm, fit_average_weights(fm, fr, metric)),
                                aligned, references, fold_ids)
        candidates.append(Candidate("weighted_average", "average", {}, dev_scores(weighted, references),
                                    f"weights fitted on dev[^k/{folds}], scored on dev[k/{folds}]"))
        template = stacking or StackingEnsemble(seed=seed)

        def stack(fit_members: Any, fit_refs: Any, held: Any) -> Predictions:
            model = StackingEnsemble(**{k: getattr(template, k) for k in ("n_estimators", "max_depth",
                                                                         "min_samples_leaf", "folds", "seed",
                                                                         "attributes")})
            return model.fit(fit_members, fit_refs, cross_validate=False).predict(held)

        candidates.append(Candidate("stacking", "stacking", {},
                                    dev_scores(_out_of_fold(stack, aligned, references, fold_ids), references),
                                    f"RandomForest fitted on dev[^k/{folds}], scored on dev[k/{folds}]"))
    for name, oof in (fusion or {}).items():
        how = (fusion_notes or {}).get(name, f"adapter trained on dev[^k/{folds}], predicted dev[k/{folds}]")
        candidates.append(Candidate(name, "fusion", {"fusion": name}, dev_scores(oof, references), how))
    return candidates


def choose(candidates: Sequence[Candidate], metric: str = "combined") -> Candidate:
    """The candidate with the best dev ``metric``; ties go to the simpler one (the table's order: members
    alone first, learned combinations last)."""
    scored = [c for c in candidates if c.scores.get(metric) is not None]
    if not scored:
        raise ValueError(f"no candidate has a dev {metric}: does the dev split have labels?")
    return max(scored, key=lambda c: (c.scores[metric], -candidates.index(c)))


def shipped_settings(candidate: Candidate, members: Mapping[str, Predictions], references: Sequence[Any],
                     metric: str = "combined", seed: int = 0) -> tuple[dict[str, Any], StackingEnsemble | None]:
    """What the chosen method needs, fitted on all of dev: the average's weights, or the stacking model."""
    if candidate.name == "weighted_average":
        return {"weights": fit_average_weights(members, references, metric)}, None
    if candidate.method == "stacking":
        return {}, StackingEnsemble(seed=seed).fit(members, references)
    return dict(candidate.settings), None


def selection_markdown(candidates: Sequence[Candidate], chosen: Candidate, metric: str) -> str:
    """The candidates' dev table (what ``build-system --method auto`` chose from) as markdown."""
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [f"Chosen on dev by `{metric}`: **{chosen.name}**.", "",
             "| candidate | method | dev macro-F1 | dev CCC A / V / D | dev combined | out of sample by |",
             "|---|---|---|---|---|---|"]
    for c in candidates:
        s = c.scores
        mark = " (shipped)" if c is chosen else ""
        lines.append(f"| {c.name}{mark} | {c.method} | {fmt(s.get('macro_f1'))} | "
                     f"{' / '.join(fmt(s.get(f'ccc_{a}')) for a in ATTRIBUTES)} | {fmt(s.get('combined'))} | {c.how} |")
    return "\n".join(lines) + "\n"
