"""Cached branch outputs: what the fusion adapter and the ensembles read instead of re-running branches.

Layout of a branch-outputs folder (one file pair per branch and split)::

    <dir>/<branch>/<split>.safetensors        embedding (N, D) pooled; optional sequence (N, T, D')
                                               + sequence_mask (N, T); optional probs (N, 8), attributes (N, 3)
    <dir>/<branch>/<split>.file_names.json     the N file names, row-aligned (a readable copy of the
                                               list kept in the safetensors metadata)

Typical use (the demo does this once per trained branch)::

    names, tensors = collect_branch_outputs(model, dataset, collate_fn, sequence_fn=wavlm_sequence)
    save_branch_outputs("runs/outputs", "wavlm", "dev", names, tensors)
    outputs = load_branch_outputs("runs/outputs", "wavlm", "dev")

Caching matters because the branches (LLMs above all) cost seconds per batch on CPU, while the fusion
adapter trains for many epochs over the same inputs in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from llmser.data.examples import example_targets
from llmser.models.fusion.model import embedding_key, mask_key, sequence_key
from llmser.models.llm.votes import collect_votes, votes
from llmser.schema import ATTRIBUTES, NUM_CLASSES
from llmser.utils.logging import get_logger

logger = get_logger(__name__)

#: Tensor names a branch-outputs file may hold, and their trailing shapes (None = any size).
KNOWN_TENSORS: dict[str, tuple[int | None, ...]] = {
    "embedding": (None,), "sequence": (None, None), "sequence_mask": (None,),
    "probs": (NUM_CLASSES,), "attributes": (len(ATTRIBUTES),),
    # LLM branches: the vote's class (N,) and each prompt variant's probabilities (N, K, 8); "probs" is their mean
    "labels": (), "variant_probs": (None, NUM_CLASSES),
}
_SPLIT_ALIASES = {"dev": "development", "development": "dev", "test": "test1", "test1": "test"}
_NAMES_SUFFIX = ".file_names.json"


@dataclass
class BranchOutputs:
    """One branch's cached outputs on one split, row-aligned with ``file_names``."""

    branch: str
    split: str
    file_names: list[str]
    tensors: dict[str, torch.Tensor]
    trained_on: str | None = None  # the split the branch's model trained on (None: not recorded)
    cross_fitted: int = 0  # K when every row came from the fold model that did not train on it
    variant_names: list[str] | None = None  # the voting prompt variants, in variant_probs' order

    def __len__(self) -> int:
        return len(self.file_names)

    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.file_names)}

    @property
    def has_sequence(self) -> bool:
        return "sequence" in self.tensors

    def in_sample_for(self, split: str) -> bool:
        """Whether rows of ``split`` (a resolved name, maybe a fold selector) came from a model that trained
        on them: a meta-model fitted on such rows learns to trust overconfident in-sample outputs."""
        from llmser.data.folds import parse_split, same_split

        if self.cross_fitted or not self.trained_on:
            return False
        wanted_base, wanted = parse_split(split)
        trained_base, trained = parse_split(self.trained_on)
        if not same_split(wanted_base, trained_base):
            return False
        if wanted is None or trained is None:
            return True
        return trained.overlaps(wanted)

    def predictions(self) -> Any:
        """The branch's class probabilities and attributes as llmser ``Predictions`` (for ensembles)."""
        from llmser.evaluation.predictions import Predictions

        probs = self.tensors.get("probs")
        attrs = self.tensors.get("attributes")
        if probs is None and attrs is None:
            raise ValueError(f"{self.branch}/{self.split}: the cached outputs hold neither probs nor attributes; "
                             "re-collect them from a model with heads")
        attrs = None if attrs is None else attrs.double().numpy()
        if probs is None:
            return Predictions(self.file_names, attributes=attrs)
        if "labels" in self.tensors:  # an LLM branch's prompt vote: its class, the variants' votes as columns
            from llmser.schema import CLASS_CODES

            columns = {}
            if "variant_probs" in self.tensors and self.variant_names:
                picks = self.tensors["variant_probs"].argmax(-1).numpy()  # (N, K)
                columns = {f"vote_{name}": [CLASS_CODES[i] for i in picks[:, k]]
                           for k, name in enumerate(self.variant_names)}
            return Predictions(self.file_names, [CLASS_CODES[int(i)] for i in self.tensors["labels"]],
                               probs.double().numpy(), attrs, columns)
        return Predictions.from_probs(self.file_names, probs.double().numpy(), attributes=attrs)


# ---------------------------------------------------------------------- save / load


def check_branch_tensors(file_names: Sequence[str], tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Every problem with a set of branch tensors at once: names, row counts, shapes, masks."""
    issues = []
    n = len(file_names)
    if len(set(file_names)) != n:
        issues.append("file names repeat; keep one row per file")
    if "embedding" not in tensors:
        issues.append("no 'embedding' tensor (N, D); the fusion adapter needs the pooled embedding")
    for name, tensor in tensors.items():
        if name not in KNOWN_TENSORS:
            issues.append(f"unknown tensor {name!r}; expected some of {', '.join(KNOWN_TENSORS)}")
            continue
        trailing = KNOWN_TENSORS[name]
        if tensor.ndim != 1 + len(trailing) or tensor.shape[0] != n:
            issues.append(f"{name} has shape {tuple(tensor.shape)}; expected ({n}, {', '.join(str(d or '*') for d in trailing)})")
        elif any(d is not None and d != s for d, s in zip(trailing, tensor.shape[1:])):
            issues.append(f"{name} has shape {tuple(tensor.shape)}; expected trailing sizes {trailing}")
    if ("sequence" in tensors) != ("sequence_mask" in tensors):
        issues.append("'sequence' and 'sequence_mask' come together")
    elif "sequence" in tensors and tensors["sequence"].shape[:2] != tensors["sequence_mask"].shape:
        issues.append(f"sequence {tuple(tensors['sequence'].shape)} and sequence_mask "
                      f"{tuple(tensors['sequence_mask'].shape)} disagree")
    if issues:
        raise ValueError(f"{where}: " + "; ".join(issues))


def save_branch_outputs(directory: str | Path, branch: str, split: str, file_names: Sequence[str],
                        tensors: Mapping[str, torch.Tensor], variant_names: Sequence[str] | None = None, *,
                        trained_on: str | None = None, cross_fitted: int = 0) -> Path:
    """Write one branch's outputs on one split atomically; returns the safetensors path.

    ``variant_names`` name the columns of ``variant_probs``; ``trained_on`` (the split the model trained on)
    and ``cross_fitted`` (K for out-of-fold rows) travel in the metadata, so whatever learns from these
    outputs can refuse in-sample ones.
    """
    from llmser.data.folds import file_stem
    from llmser.utils.io import atomic_write_json
    from llmser.utils.weights import save_safetensors

    names = [str(n) for n in file_names]
    path = Path(directory) / branch / f"{file_stem(split)}.safetensors"
    check_branch_tensors(names, tensors, str(path))
    metadata = {"branch": branch, "split": split, "file_names": json.dumps(names), "cross_fitted": str(cross_fitted)}
    if trained_on:
        metadata["trained_on"] = trained_on
    if variant_names is not None:
        metadata["variant_names"] = json.dumps(list(variant_names))
    atomic_write_json(path.with_name(file_stem(split) + _NAMES_SUFFIX), names)
    save_safetensors(dict(tensors), path, metadata=metadata)
    return path


def branch_output_path(directory: str | Path, branch: str, split: str) -> Path:
    """The file of ``branch`` on ``split``, matching the split name loosely (Development = dev, Test1 = test)."""
    folder = Path(directory) / branch
    if not folder.is_dir():
        present = sorted(p.name for p in Path(directory).iterdir() if p.is_dir()) if Path(directory).is_dir() else []
        raise FileNotFoundError(f"no cached outputs for branch {branch!r} in {directory} (branches there: "
                                f"{', '.join(present) or 'none'}); collect them with collect_branch_outputs "
                                "and save_branch_outputs")
    from llmser.data.folds import file_stem

    files = {p.name[: -len(".safetensors")]: p for p in folder.glob("*.safetensors")}
    split = file_stem(split)
    wanted = [split, split.lower(), _SPLIT_ALIASES.get(split.lower(), "")]
    for name, path in sorted(files.items()):
        if name in wanted or name.lower() in wanted:
            return path
    raise FileNotFoundError(f"{folder} has no outputs for split {split!r} (it has: {', '.join(sorted(files)) or 'none'})")


def load_branch_outputs(directory: str | Path, branch: str, split: str) -> BranchOutputs:
    """Read and check one branch's outputs on one split."""
    from safetensors import safe_open

    from llmser.data.folds import parse_split

    try:
        path = branch_output_path(directory, branch, split)
    except FileNotFoundError:  # a fold (dev[^0/5]) reads its whole split's file; rows are picked by file name
        base = parse_split(split)[0]
        if base == split:
            raise
        path = branch_output_path(directory, branch, base)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
    names_file = path.with_name(path.name[: -len(".safetensors")] + _NAMES_SUFFIX)
    if "file_names" in metadata:
        names = json.loads(metadata["file_names"])
    elif names_file.is_file():
        names = json.loads(names_file.read_text(encoding="utf-8"))
    else:
        raise FileNotFoundError(f"{path} has no file names (neither in its metadata nor {names_file.name})")
    check_branch_tensors(names, tensors, str(path))
    variants = json.loads(metadata["variant_names"]) if "variant_names" in metadata else None
    return BranchOutputs(branch=branch, split=path.stem, file_names=names, tensors=tensors, variant_names=variants,
                         trained_on=metadata.get("trained_on"), cross_fitted=int(metadata.get("cross_fitted", 0)))


# ---------------------------------------------------------------------- collection


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


def pool_frames(frames: torch.Tensor, mask: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average every ``stride`` real frames: (B, T, H) -> (B, ceil(T/stride), H); shrinks the cache."""
    if stride <= 1:
        return frames, mask
    b, t, h = frames.shape
    pad = (-t) % stride
    weights = torch.nn.functional.pad(mask.float(), (0, pad)).view(b, -1, stride)  # (B, T', s)
    summed = (torch.nn.functional.pad(frames * mask.unsqueeze(-1), (0, 0, 0, pad))
              .view(b, -1, stride, h).sum(2))  # (B, T', H)
    counts = weights.sum(-1)  # (B, T')
    return summed / counts.clamp_min(1).unsqueeze(-1), counts > 0


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
                         progress: bool = True) -> tuple[list[str], dict[str, torch.Tensor], list[str]]:
    """An LLM branch's prompt vote as branch outputs: ``probs`` (the variants' mean), ``labels`` (the vote
    under ``model.config.voting.rule``), ``variant_probs`` (N, K, 8), attributes and the embedding; plus
    the variant names."""
    result = collect_votes(model, dataset, collate_fn, batch_size=batch_size, progress=progress)
    tensors = {"embedding": torch.from_numpy(result.embedding).float(), "probs": torch.from_numpy(result.probs).float(),
               "labels": torch.from_numpy(result.labels).long(),
               "variant_probs": torch.from_numpy(result.variant_probs).float()}
    if result.attributes is not None:
        tensors["attributes"] = torch.from_numpy(result.attributes).float()
    return result.file_names, tensors, result.variant_names


def pad_sequences(sequences: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(T_i, D) tensors -> (N, max T, D) zero-padded and the (N, max T) bool mask."""
    longest = max(1, max(s.shape[0] for s in sequences))
    dim = sequences[0].shape[-1]
    out = torch.zeros(len(sequences), longest, dim, dtype=sequences[0].dtype)
    mask = torch.zeros(len(sequences), longest, dtype=torch.bool)
    for i, seq in enumerate(sequences):
        out[i, : seq.shape[0]] = seq
        mask[i, : seq.shape[0]] = True
    return out, mask


# ---------------------------------------------------------------------- datasets for the adapter


def missing_files(utterances: Sequence, outputs: Mapping[str, BranchOutputs]) -> dict[str, list[str]]:
    """Stream -> the utterances' file names that stream has no cached row for."""
    result = {}
    for stream, out in outputs.items():
        index = out.index()
        absent = [u.file_name for u in utterances if u.file_name not in index]
        if absent:
            result[stream] = absent
    return result


class FusionDataset(Dataset):
    """Utterances -> the cached outputs of every stream plus the training targets."""

    def __init__(self, utterances: Sequence, outputs: Mapping[str, BranchOutputs], sequences: bool = True):
        self.utterances = list(utterances)
        self.outputs = dict(outputs)
        self.sequences = sequences
        absent = missing_files(self.utterances, self.outputs)
        if absent:
            listed = "; ".join(f"{s}: {len(v)} e.g. {v[:3]}" for s, v in absent.items())
            raise KeyError(f"cached outputs lack files ({listed}); re-collect those branches on the same "
                           "corpus, or set data.on_error: skip to train on the files they have")
        self.rows = {s: [out.index()[u.file_name] for u in self.utterances] for s, out in self.outputs.items()}

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict[str, Any]:
        utt = self.utterances[index]
        example: dict[str, Any] = {"index": index, "file_name": utt.file_name, **example_targets(utt)}
        for stream, out in self.outputs.items():
            row = self.rows[stream][index]
            example[embedding_key(stream)] = out.tensors["embedding"][row]
            if self.sequences and out.has_sequence:
                example[sequence_key(stream)] = out.tensors["sequence"][row][out.tensors["sequence_mask"][row]]
        return example


def collate_fusion(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack ``<s>_embedding`` (B, D), pad ``<s>_sequence`` to (B, T, D) with ``<s>_sequence_mask``."""
    batch: dict[str, torch.Tensor] = {
        "label": torch.tensor([e["label"] for e in examples], dtype=torch.long),
        "soft_label": torch.from_numpy(np.stack([e["soft_label"] for e in examples])).float(),
        "attributes": torch.from_numpy(np.stack([e["attributes"] for e in examples])).float(),
        "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
    }
    for key in examples[0]:
        if key.endswith("_embedding"):
            batch[key] = torch.stack([e[key].float() for e in examples])
        elif key.endswith("_sequence"):
            stream = key[: -len("_sequence")]
            batch[key], batch[mask_key(stream)] = pad_sequences([e[key].float() for e in examples])
    return batch


# ---------------------------------------------------------------------- from a trained run


def collect_run_outputs(run_dir: str | Path, outputs_dir: str | Path, splits: Sequence[str] = ("train", "dev", "test"),
                        *, name: str | None = None, corpus: Any = None, overrides: Sequence[str] = (),
                        sequence_fn: SequenceFn | None = None, sequence_stride: int = 1,
                        progress: bool = True) -> dict[str, Path]:
    """Cache a trained branch's outputs on ``splits``, from its run folder (``best/`` with ``recipe.yaml``).

    Each split is read the way the engine reads its test split (every file, no augmentation, one fixed
    prompt), so training files get the same deterministic outputs as dev and test. ``name`` is the
    folder under ``outputs_dir`` (default: the recipe's branch). Returns split -> file written.
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

            corpus = MSPPodcast.from_folder(recipe.data.corpus, ReaderConfig(on_error=recipe.data.on_error))
        if trained_on is None:
            trained_on = corpus.resolve_split(load_recipe(best / "recipe.yaml").data.train_split)
        spec = get_branch(recipe.branch)
        setup = spec.prepare_fn(recipe, branch_config(recipe), corpus, PartialState())
        if model is None:
            model = _load_best(spec, setup.model, best)
        if votes(model, setup.test_set):  # LLM branches: the recipe's prompt vote, each variant kept
            names, tensors, variants = collect_vote_outputs(model, setup.test_set, setup.collate_fn,
                                                            batch_size=recipe.data.eval_batch_size, progress=progress)
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
    if hasattr(model, "load_trained_weights"):  # LLM branches: reload the adapter, not the base
        model.load_trained_weights(best)
        return model
    return spec.model_cls.from_pretrained(best)
