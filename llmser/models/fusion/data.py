"""The fusion adapter's datasets: utterances -> every stream's cached outputs (:mod:`llmser.data.branch_outputs`)
plus the training targets, and the collate function that pads frame sequences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from llmser.data.branch_outputs import BranchOutputs, missing_files, pad_sequences
from llmser.data.examples import example_targets
from llmser.models.fusion.model import attributes_key, embedding_key, mask_key, probs_key, sequence_key


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
            for name, key in (("probs", probs_key), ("attributes", attributes_key)):  # what residual fusion averages
                if name in out.tensors:
                    example[key(stream)] = out.tensors[name][row]
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
        if key.endswith(("_embedding", "_probs", "_attributes")) and key != "attributes":
            batch[key] = torch.stack([e[key].float() for e in examples])
        elif key.endswith("_sequence"):
            stream = key[: -len("_sequence")]
            batch[key], batch[mask_key(stream)] = pad_sequences([e[key].float() for e in examples])
    return batch
