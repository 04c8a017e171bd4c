"""How the engine trains the fusion adapter: datasets over cached branch outputs, model sized from them.

    llmser train adapters/fusion_tiny.yaml model.outputs_dir=runs/demo/outputs

The branches must have written their outputs first (``collect_branch_outputs`` +
``save_branch_outputs``) for the recipe's train, dev and test splits, under ``model.outputs_dir``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from llmser.config import ConfigError
from llmser.data.branch_outputs import BranchOutputs, load_branch_outputs, missing_files
from llmser.data.examples import class_counts, class_labels
from llmser.models.branch import BranchSetup
from llmser.models.fusion.config import FusionBranchConfig
from llmser.models.fusion.data import FusionDataset, collate_fusion
from llmser.models.fusion.model import FusionEmotionModel
from llmser.recipe import Recipe
from llmser.utils.logging import get_logger

logger = get_logger(__name__)


def prepare(recipe: Recipe, config: FusionBranchConfig, corpus: Any, accelerator: Any) -> BranchSetup:
    if not config.outputs_dir:
        raise ValueError("model.outputs_dir is empty; point it at the branch-outputs folder "
                         "(<dir>/<branch>/<split>.safetensors), e.g. model.outputs_dir=runs/demo/outputs")
    data = recipe.data
    splits = {"train": (data.train_split, data.task), "eval": (data.eval_split, data.task),
              "test": (data.test_split, "all")}
    sets: dict[str, FusionDataset | None] = {}
    utterances: dict[str, list] = {}
    resolved = config
    for role, (split, task) in splits.items():
        if not split:
            sets[role], utterances[role] = None, []
            continue
        utts = corpus.utterances(corpus.resolve_split(split), task=task)
        outputs = {s: load_branch_outputs(config.outputs_dir, s, split) for s in config.streams}
        if role != "test":
            refuse_in_sample(outputs, corpus.resolve_split(split), role, f"data.{role}_split")
        utts = _drop_uncached(utts, outputs, role, data.on_error)
        if role == "train":
            resolved = resolve_sizes(config, outputs)
            refuse_residual_without_outputs(config, outputs)
        utterances[role] = utts
        sets[role] = FusionDataset(utts, outputs, sequences=resolved.sequences) if utts else None
    model = FusionEmotionModel(resolved)
    train_utts = utterances["train"]
    return BranchSetup(model=model, train_set=sets["train"], eval_set=sets["eval"], test_set=sets["test"],
                       collate_fn=collate_fusion, test_utterances=utterances["test"], class_counts=class_counts(train_utts),
                       train_labels=class_labels(train_utts))


def refuse_in_sample(outputs: dict[str, BranchOutputs], split: str, role: str, field: str) -> None:
    """Stop a meta-model from learning (or early-stopping) on outputs its inputs' models trained on.

    A branch is overconfident on its own training files; a fusion fitted there learns to trust outputs it
    will never see on new audio. docs/protocol.md says which out-of-sample inputs each branch can afford.
    """
    leaking = sorted(s for s, out in outputs.items() if out.in_sample_for(split))
    if leaking:
        raise ConfigError(
            f"fusion {role} split {split!r} ({field}): the cached outputs of {', '.join(leaking)} come from "
            f"models trained on those files (in-sample). Fit fusion on outputs the branches did not train on: "
            "data.train_split='dev[^0/5]' with data.eval_split='dev[0/5]' (dev, with an inner fold for early stopping), or "
            "cross-fit the branch on train (llmser collect-outputs RUN --cross-fit 5) and keep train")


def refuse_residual_without_outputs(config: FusionBranchConfig, outputs: dict[str, BranchOutputs]) -> None:
    """Residual fusion averages the streams' cached probabilities and attributes: say so before training if a
    stream's outputs lack them (collected from a model without that head)."""
    if not config.residual:
        return
    wanted = [name for name, on in (("probs", config.class_head), ("attributes", config.attribute_head)) if on]
    lacking = sorted(f"{s} ({', '.join(w for w in wanted if w not in out.tensors)})" for s, out in outputs.items()
                     if any(w not in out.tensors for w in wanted))
    if lacking:
        raise ConfigError(f"model.residual: true starts from the streams' cached probabilities and attributes, but "
                          f"the outputs in {config.outputs_dir} lack them for {', '.join(lacking)}; re-collect those "
                          "branches (llmser collect-outputs) from models with both heads, or set model.residual=false")


def resolve_sizes(config: FusionBranchConfig, outputs: dict[str, BranchOutputs]) -> FusionBranchConfig:
    """The config with the input sizes read from the cached outputs; refuses a cache that disagrees
    with sizes already set (e.g. a model trained on another encoder)."""
    stream_sizes = {s: int(out.tensors["embedding"].shape[-1]) for s, out in outputs.items()}
    sequence_sizes = {s: int(out.tensors["sequence"].shape[-1]) for s, out in outputs.items() if out.has_sequence}
    issues = [f"{s}: config says {config.stream_sizes[s]}, the cache has {size}"
              for s, size in stream_sizes.items() if s in config.stream_sizes and config.stream_sizes[s] != size]
    issues += [f"{s} sequence: config says {config.sequence_sizes[s]}, the cache has {size}"
               for s, size in sequence_sizes.items()
               if s in config.sequence_sizes and config.sequence_sizes[s] != size]
    if issues:
        raise ValueError(f"cached outputs in {config.outputs_dir} do not fit the config's input sizes: "
                         + "; ".join(issues) + ". Re-collect the outputs or clear stream_sizes/sequence_sizes.")
    if config.mode == "attention" and config.sequences and not sequence_sizes:
        logger.info("no stream in %s has cached sequences; attention runs over the pooled embeddings",
                    config.outputs_dir)
    return replace(config, stream_sizes=stream_sizes, sequence_sizes=sequence_sizes)


def _drop_uncached(utts: list, outputs: dict[str, BranchOutputs], role: str, on_error: str) -> list:
    absent = missing_files(utts, outputs)
    if not absent:
        return utts
    listed = "; ".join(f"{s}: {len(v)} e.g. {v[:3]}" for s, v in absent.items())
    if on_error != "skip":
        raise KeyError(f"{role} split: cached outputs lack files ({listed}); re-collect those branches on this "
                       "corpus, or set data.on_error: skip to leave those files out")
    dropped = {name for names in absent.values() for name in names}
    logger.warning("%s split: leaving out %d file(s) without cached outputs (%s)", role, len(dropped), listed)
    return [u for u in utts if u.file_name not in dropped]
