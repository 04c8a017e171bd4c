"""Cross-fitted branch outputs: every train file predicted by a model that did not train on it.

    llmser collect-outputs runs/demo/wavlm --out runs/demo/outputs --cross-fit 5

For ``k`` in ``0..K-1`` the run's recipe is trained again on ``train[^k/K]`` (speaker-disjoint folds,
``data/folds.py``; checkpoint choice on the recipe's dev split as usual) and predicts ``train[k/K]``;
the K parts are joined into the branch's ``train`` outputs, marked ``cross_fitted=K``. A fusion adapter or
stacking model may then learn from train outputs without the in-sample optimism of the full run's
(which ``models/fusion/branch.py`` refuses). Costs K trainings: affordable for branches that train heads on
cached features (frozen encoders, the classical rows), not for LLM branches on a CPU; docs/protocol.md
says which the demo cross-fits. Fold runs live in ``RUN/crossfit/fold<k>/`` and are reused when present.
An LLM branch's fold models vote as the full run chose on dev (``model.voting.variants: auto`` lets each fold
choose its own, and the parts must be one branch's outputs, with the same prompt variants).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from llmser.data.branch_outputs import load_branch_outputs, save_branch_outputs
from llmser.inference.collect import SequenceFn, collect_run_outputs
from llmser.models.registry import load_recipe
from llmser.utils.logging import get_logger

logger = get_logger(__name__)

if TYPE_CHECKING:
    from llmser.evaluation.predictions import Predictions


def cross_fit_outputs(run_dir: str | Path, outputs_dir: str | Path, folds: int = 5, *, name: str | None = None,
                      overrides: Sequence[str] = (), sequence_fn: SequenceFn | None = None,
                      sequence_stride: int = 1) -> Path:
    """Train the run's recipe on K-1 folds of its train split K times; write the out-of-fold train outputs."""
    from llmser.data.msp_podcast import MSPPodcast, ReaderConfig
    from llmser.training.run import run

    if folds < 2:
        raise ValueError(f"--cross-fit needs at least 2 folds, got {folds}")
    run_dir = Path(run_dir)
    recipe_path = run_dir / "best" / "recipe.yaml"
    if not recipe_path.is_file():
        raise FileNotFoundError(f"{recipe_path} is missing; train the branch first (llmser train ...)")
    recipe = load_recipe(recipe_path, list(overrides))
    corpus = MSPPodcast.from_folder(recipe.data.corpus, ReaderConfig(on_error=recipe.data.on_error, extra_splits=tuple(recipe.data.extra_splits)))
    train = corpus.resolve_split(recipe.data.train_split)
    branch = name or recipe.branch
    parts = []
    with tempfile.TemporaryDirectory(prefix="llmser-crossfit-") as scratch:
        for fold in range(folds):
            fold_dir = run_dir / "crossfit" / f"fold{fold}"
            held_out = f"{train}[{fold}/{folds}]"
            if not (fold_dir / "best" / "recipe.yaml").is_file():
                logger.info("cross-fitting %s: fold %d/%d trains on %s[^%d/%d]", branch, fold + 1, folds, train, fold,
                            folds)
                run(recipe_path, [*overrides, f"data.train_split={train}[^{fold}/{folds}]",
                                  f"train.output_dir={fold_dir}", "train.predict_test=false"])
            collect_run_outputs(fold_dir, scratch, [held_out], name=branch, corpus=corpus, overrides=overrides,
                                sequence_fn=sequence_fn, sequence_stride=sequence_stride,
                                vote_as=run_dir / "best")
            parts.append(load_branch_outputs(scratch, branch, held_out))
        names, tensors = _join(parts)
    return save_branch_outputs(outputs_dir, branch, train, names, tensors, parts[0].variant_names, trained_on=train,
                               cross_fitted=folds)


def _join(parts: list) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Concatenate fold outputs row-wise (sequences padded to the longest)."""
    from llmser.data.branch_outputs import pad_sequences

    names = [n for part in parts for n in part.file_names]
    tensors: dict[str, torch.Tensor] = {}
    for key in parts[0].tensors:
        if key == "sequence":
            rows = [seq[mask] for part in parts for seq, mask in zip(part.tensors["sequence"], part.tensors["sequence_mask"])]
            tensors["sequence"], tensors["sequence_mask"] = pad_sequences([r.float() for r in rows])
            tensors["sequence"] = tensors["sequence"].to(parts[0].tensors["sequence"].dtype)
        elif key != "sequence_mask":
            tensors[key] = torch.cat([part.tensors[key] for part in parts])
    return names, tensors


def cross_fit_dev(run_dir: str | Path, folds: int = 5, *, split: str | None = None, overrides: Sequence[str] = (),
                  fold_ids: Sequence[int] | None = None) -> Predictions:
    """Out-of-fold dev predictions of a model that learns on dev (the fusion adapter): for each ``k`` the run's
    recipe trains on ``dev[^k/K]`` for the run's best step count (no early stopping: the held-out fold is
    what gets scored) and predicts ``dev[k/K]`` (for the folds ``fold_ids`` only, default all: a split with fewer
    speakers than folds leaves some folds empty). A run that trained on files outside dev (a fusion adapter on
    cross-fitted train outputs) is refitted once on its own split instead and predicts all of dev. Returns
    ``Predictions`` for every dev file, so that it can be compared with other candidates on the same files and
    folds (``llmser.ensemble.selection``). Fold runs
    live in ``RUN/devcv/fold<k>/`` and are reused when they finished with the same settings."""
    import json

    from llmser.data.folds import parse_split
    from llmser.evaluation.predictions import concat_predictions

    run_dir = Path(run_dir)
    recipe_path = run_dir / "best" / "recipe.yaml"
    if not recipe_path.is_file():
        raise FileNotFoundError(f"{recipe_path} is missing; train the adapter first (llmser train ...)")
    recipe = load_recipe(recipe_path, list(overrides))
    split = split or parse_split(recipe.data.eval_split or recipe.data.train_split)[0]
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")) if (run_dir / "metrics.json").is_file() else {}
    steps = int(metrics.get("best_step") or recipe.train.max_steps)
    if fitted_outside(recipe, split):
        # Fitted on other files (cross-fitted train outputs): dev is out of sample for it already. K refits on
        # dev folds would score another way of training; one refit on its own split, for its best step count
        # and with no early stopping on the files scored, predicts all of dev.
        return _predict_by_refit(recipe_path, run_dir / "devcv" / "direct", ["data.eval_split=",
                                 f"data.test_split={split}"], steps, overrides,
                                 f"dev predictions of {run_dir.name}: one refit on its own train split")
    parts = []
    for fold in range(folds) if fold_ids is None else fold_ids:
        parts.append(_predict_by_refit(
            recipe_path, run_dir / "devcv" / f"fold{fold}",
            [f"data.train_split={split}[^{fold}/{folds}]", "data.eval_split=", f"data.test_split={split}[{fold}/{folds}]"],
            steps, overrides, f"out-of-fold dev predictions of {run_dir.name}: fold {fold + 1}/{folds} trains on "
                              f"{split}[^{fold}/{folds}]"))
    return concat_predictions(parts)


def fitted_outside(recipe: Any, split: str) -> bool:
    """Whether a run's recipe trains on files outside ``split`` (its dev predictions are then out of sample)."""
    from llmser.data.splits import splits_overlap

    return not splits_overlap(recipe.data.train_split, split)


def fitted_outside_note(run_dir: str | Path, split: str) -> str | None:
    """How ``cross_fit_dev`` makes a run's dev predictions when it was fitted outside ``split``; None otherwise."""
    recipe = load_recipe(Path(run_dir) / "best" / "recipe.yaml", [])
    if not fitted_outside(recipe, split):
        return None
    return f"adapter trained on {recipe.data.train_split} (refitted once), predicted all of {split}"


def _predict_by_refit(recipe_path: Path, out_dir: Path, splits: Sequence[str], steps: int,
                      overrides: Sequence[str], what: str) -> Predictions:
    """The run's recipe trained again with ``splits`` for ``steps`` steps (no early stopping), predicting its test
    split into ``out_dir``; reused when that folder finished with the same settings."""
    import json

    from llmser.evaluation.predictions import Predictions
    from llmser.training.run import run

    settings = [*overrides, *splits, f"train.max_steps={steps}", f"train.save_every={steps}",
                f"train.output_dir={out_dir}", "train.predict_test=true"]
    stamp = out_dir / "devcv.json"
    if not (stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == settings):
        logger.info("%s for %d steps", what, steps)
        run(recipe_path, settings)
        stamp.write_text(json.dumps(settings), encoding="utf-8")
    return Predictions.read_csv(out_dir / "test_predictions.csv")
