"""Cached branch outputs: the format every consumer of a trained branch's outputs shares.

The fusion adapter, stacking and averaging ensembles, system selection (``build-system --method auto``)
and cross-fitting all read a branch's outputs from this store instead of re-running the branch; the
collectors that fill it live in :mod:`llmser.inference.collect`.

Layout of a branch-outputs folder (one file pair per branch and split)::

    <dir>/<branch>/<split>.safetensors        embedding (N, D) pooled; optional sequence (N, T, D')
                                               + sequence_mask (N, T); optional probs (N, 8), attributes (N, 3);
                                               LLM branches: labels (N,) (the vote) and variant_probs (N, K, 8)
    <dir>/<branch>/<split>.file_names.json     the N file names, row-aligned (a readable copy of the
                                               list kept in the safetensors metadata)

    save_branch_outputs("runs/outputs", "wavlm", "dev", names, tensors)
    outputs = load_branch_outputs("runs/outputs", "wavlm", "dev")

Caching matters because the branches (LLMs above all) cost seconds per batch on CPU, while what learns
from their outputs trains for many epochs over the same inputs in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmser.schema import ATTRIBUTES, NUM_CLASSES

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
        from llmser.data.splits import splits_overlap

        if self.cross_fitted or not self.trained_on:
            return False
        return splits_overlap(split, self.trained_on)

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


def missing_files(utterances: Sequence, outputs: Mapping[str, BranchOutputs]) -> dict[str, list[str]]:
    """Stream -> the utterances' file names that stream has no cached row for."""
    result = {}
    for stream, out in outputs.items():
        index = out.index()
        absent = [u.file_name for u in utterances if u.file_name not in index]
        if absent:
            result[stream] = absent
    return result
