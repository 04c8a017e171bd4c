"""Filling the branch-outputs store (:mod:`llmser.data.branch_outputs`): run a trained branch over splits.

    llmser collect-outputs runs/demo/wavlm --out runs/demo/outputs --frames --splits dev,test

``collect_run_outputs`` loads a run's ``best/`` model and caches, per split, what fusion, the
ensembles and system selection read: pooled embeddings, class probabilities and attributes, the prompt
vote of an LLM branch (every variant kept), and optionally the speech branch's frame states.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from llmser.data.branch_outputs import pad_sequences, pool_frames, save_branch_outputs
from llmser.models.llm.votes import adopt_saved_voting, collect_votes, votes

SequenceFn = Callable[[Any, dict], "tuple[torch.Tensor, torch.Tensor]"]


def wavlm_sequence(model: Any, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The WavLM branch's layer-weighted frame states (B, T, H) and frame mask (B, T) for a batch
    (waveforms or cached hidden states): the frames its pooling sees, for the fusion adapter."""
    if batch.get("hidden_states") is not None:
        hidden, mask = batch["hidden_states"], batch["frame_mask"]
    else:
        hidden, mask = model.encode(batch["input_values"], batch.get("attention_mask"))  # (L, B, T, H)
    frames = model.layer_weights(hidden) if model.layer_weights is not None else hidden[-1]
    return frames, mask

@torch.no_grad()
def collect_branch_outputs(model: Any, dataset: Dataset, collate_fn: Callable, *, batch_size: int = 16,
                           sequence_fn: SequenceFn | None = None, sequence_stride: int = 1,
                           sequence_dtype: torch.dtype = torch.float16, device: str | torch.device | None = None,
                           progress: bool = True) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Run any branch's forward over ``dataset``; returns file names and the tensors to cache.

    ``embedding`` is ``EmotionOutput.embedding``; ``probs`` the softmax of the class logits and
    ``attributes`` the attribute head, where the branch has them. ``sequence_fn(model, batch)``, when
    given, adds ``sequence`` / ``sequence_mask`` (e.g. :func:`wavlm_sequence`). Examples must carry
    ``file_name`` (every llmser branch dataset does).
    """
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    names: list[str] = []
    columns: dict[str, list[torch.Tensor]] = {"embedding": [], "probs": [], "attributes": []}
    sequences: list[torch.Tensor] = []
    for start in tqdm(range(0, len(dataset), batch_size), disable=not progress, desc="collecting outputs",
                      leave=False):
        examples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        names += [str(e["file_name"]) for e in examples]
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate_fn(examples).items()}
        out = model(**batch)
        columns["embedding"].append(out.embedding.float().cpu())
        if out.class_logits is not None:
            columns["probs"].append(torch.softmax(out.class_logits.float(), -1).cpu())
        if out.attributes is not None:
            columns["attributes"].append(out.attributes.float().cpu())
        if sequence_fn is not None:
            frames, mask = pool_frames(*sequence_fn(model, batch), sequence_stride)
            sequences += [frames[i, mask[i].bool()].to(sequence_dtype).cpu() for i in range(len(examples))]
    tensors = {k: torch.cat(v) for k, v in columns.items() if v}
    if sequence_fn is not None and sequences:
        tensors["sequence"], tensors["sequence_mask"] = pad_sequences(sequences)
    return names, tensors


def collect_vote_outputs(model: Any, dataset: Dataset, collate_fn: Callable, *, batch_size: int = 8,
                         progress: bool = True, max_tokens: int | None = None
                         ) -> tuple[list[str], dict[str, torch.Tensor], list[str]]:
    """An LLM branch's prompt vote as branch outputs: ``probs`` (the variants' mean), ``labels`` (the vote
    under ``model.config.voting.rule``), ``variant_probs`` (N, K, 8), attributes and the embedding; plus
    the variant names."""
    result = collect_votes(model, dataset, collate_fn, batch_size=batch_size, progress=progress, max_tokens=max_tokens)
    tensors = {"embedding": torch.from_numpy(result.embedding).float(), "probs": torch.from_numpy(result.probs).float(),
               "labels": torch.from_numpy(result.labels).long(),
               "variant_probs": torch.from_numpy(result.variant_probs).float()}
    if result.attributes is not None:
        tensors["attributes"] = torch.from_numpy(result.attributes).float()
    return result.file_names, tensors, result.variant_names


def collect_run_outputs(run_dir: str | Path, outputs_dir: str | Path, splits: Sequence[str] = ("train", "dev", "test"),
                        *, name: str | None = None, corpus: Any = None, overrides: Sequence[str] = (),
                        sequence_fn: SequenceFn | None = None, sequence_stride: int = 1,
                        progress: bool = True, vote_as: str | Path | None = None) -> dict[str, Path]:
    """Cache a trained branch's outputs on ``splits``, from its run folder (``best/`` with ``recipe.yaml``).

    Each split is read the way the engine reads its test split (every file, no augmentation, one fixed
    prompt), so training files get the same deterministic outputs as dev and test. ``name`` is the
    folder under ``outputs_dir`` (default: the recipe's branch). An LLM branch votes as its run chose on dev,
    or, with ``vote_as`` (another run's ``best/``), as that run chose: cross-fitting makes every fold model vote
    as the branch it stands in for. Returns split -> file written.
    """
    from accelerate import PartialState

    from llmser.models.registry import branch_config, get_branch, load_recipe

    best = Path(run_dir) / "best"
    if not (best / "recipe.yaml").is_file():
        raise FileNotFoundError(f"{best / 'recipe.yaml'} is missing; train the branch first (llmser train ...), "
                                "which writes best/ with its recipe")
    written: dict[str, Path] = {}
    model = None
    trained_on = None
    for split in splits:
        # The split becomes the recipe's test split: the one set every branch builds deterministically.
        recipe = load_recipe(best / "recipe.yaml", [*overrides, f"data.train_split={split}", "data.eval_split=",
                                                    f"data.test_split={split}"])
        if corpus is None:
            from llmser.data.msp_podcast import MSPPodcast, ReaderConfig

            reader = ReaderConfig(on_error=recipe.data.on_error, extra_splits=tuple(recipe.data.extra_splits))
            corpus = MSPPodcast.from_folder(recipe.data.corpus, reader)
        if trained_on is None:
            trained_on = corpus.resolve_split(load_recipe(best / "recipe.yaml").data.train_split)
        spec = get_branch(recipe.branch)
        setup = spec.prepare_fn(recipe, branch_config(recipe), corpus, PartialState())
        if model is None:
            model = _load_best(spec, setup.model, best)
            if vote_as is not None:
                adopt_saved_voting(model, vote_as)
        if votes(model, setup.test_set):  # LLM branches: the recipe's prompt vote, each variant kept
            names, tensors, variants = collect_vote_outputs(model, setup.test_set, setup.collate_fn,
                                                            batch_size=recipe.data.eval_batch_size, progress=progress,
                                                            max_tokens=recipe.data.eval_max_tokens)
        else:
            variants = None
            names, tensors = collect_branch_outputs(model, setup.test_set, setup.collate_fn,
                                                    batch_size=recipe.data.eval_batch_size, sequence_fn=sequence_fn,
                                                    sequence_stride=sequence_stride, progress=progress)
        written[split] = save_branch_outputs(outputs_dir, name or recipe.branch, split, names, tensors, variants,
                                             trained_on=trained_on)
    return written


def _load_best(spec: Any, model: Any, best: Path) -> Any:
    """The trained weights in ``best/`` put into the model ``prepare`` built (as llmser.training.run.predict_test)."""
    from llmser.models.branch import ReloadsWeights

    if isinstance(model, ReloadsWeights):  # LLM branches: reload the adapter, not the base
        model.load_trained_weights(best)
        adopt_saved_voting(model, best)  # the vote chosen on dev (voting.variants: auto), not the recipe's
        return model
    return spec.model_cls.from_pretrained(best)
