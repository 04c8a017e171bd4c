"""Torch datasets and collate functions for audio branches.

An example is a dict: ``index``, ``file_name``, ``wave`` (float32 16 kHz) or cached ``hidden``,
``label`` (int, -1 = no task-1 label), ``soft_label`` (8 floats, zeros = none) and ``attributes``
(3 floats, NaN = none). Augmentation draws from a generator seeded by (seed, epoch, index), so an
example is augmented the same way whatever the process count or a resume point.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from llmser.data.audio import load_audio
from llmser.schema import ATTRIBUTES, NUM_CLASSES


def utterance_wave(utt: Any, max_seconds: float | None, min_samples: int = 1) -> np.ndarray:
    """The utterance's audio: its ``segment`` of the file when it has one (a window of a long file), else
    the file from the start; cropped at ``max_seconds`` either way; fewer than ``min_samples`` refused."""
    segment = getattr(utt, "segment", None)
    if segment is None:
        return load_audio(utt.audio_path, max_seconds=max_seconds, min_samples=min_samples)
    start, seconds = segment
    limit = seconds if max_seconds is None else min(seconds, max_seconds)
    return load_audio(utt.audio_path, max_seconds=limit, offset_seconds=start, min_samples=min_samples)


def count_longer(utterances: Sequence, max_seconds: float | None) -> int:
    """How many utterances' files are longer than ``max_seconds`` (read from the headers only)."""
    from llmser.data.audio import AudioError, audio_duration

    if max_seconds is None:
        return 0
    count = 0
    for utt in utterances:
        with contextlib.suppress(AudioError):  # an unreadable file is reported when it is loaded
            count += audio_duration(utt.audio_path) > max_seconds + 1e-6
    return count


def log_cropped(logger: Any, utterances: Sequence, max_seconds: float | None, what: str) -> int:
    """Training crops long files (as the challenge baseline does, at 12 s); say how many, once."""
    count = count_longer(utterances, max_seconds)
    if count:
        logger.info("%s: %d of %d file(s) are longer than %.1f s and are cropped to their first %.1f s for "
                    "training and evaluation (prediction reads them window by window; llmser predict --long-audio)",
                    what, count, len(utterances), max_seconds, max_seconds)
    return count


def example_targets(utt) -> dict[str, Any]:
    """Training targets of one Utterance in the engine's conventions."""
    label = utt.class_index if utt.class_index is not None else -1
    soft = utt.soft_label
    soft = np.zeros(NUM_CLASSES, np.float32) if soft is None else np.asarray(soft, np.float32)
    attrs = np.array([np.nan if getattr(utt, a) is None else getattr(utt, a) for a in ATTRIBUTES], np.float32)
    return {"label": label, "soft_label": soft, "attributes": attrs}


def recipe_splits(recipe: Any, corpus: Any) -> tuple[list, list, list]:
    """The recipe's train/eval/test utterances: train and eval for its task, test with every file."""
    data = recipe.data
    train = corpus.utterances(corpus.resolve_split(data.train_split), task=data.task)
    dev = corpus.utterances(corpus.resolve_split(data.eval_split), task=data.task) if data.eval_split else []
    test = corpus.utterances(corpus.resolve_split(data.test_split), task="all") if data.test_split else []
    return train, dev, test


def class_counts(utterances: Sequence) -> list[int]:
    """How many utterances carry each task-1 class (for inverse-frequency loss weights)."""
    counts = [0] * NUM_CLASSES
    for utt in utterances:
        if utt.class_index is not None:
            counts[utt.class_index] += 1
    return counts


def class_labels(utterances: Sequence) -> list[int]:
    """Each utterance's class index, -1 where it has no task-1 label (for balanced batch samplers)."""
    return [u.class_index if u.class_index is not None else -1 for u in utterances]


class AudioExampleDataset(Dataset):
    """Utterances -> waveform examples, optionally augmented (training only)."""

    def __init__(self, utterances: Sequence, *, max_seconds: float | None, augmenter: Any = None, seed: int = 0,
                 min_samples: int = 1):
        self.utterances = list(utterances)
        self.max_seconds = max_seconds
        self.min_samples = min_samples  # shorter clips raise AudioError (the model's receptive field)
        self.augmenter = augmenter
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.utterances)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _load(self, index: int) -> dict[str, Any]:
        utt = self.utterances[index]
        wave = utterance_wave(utt, self.max_seconds, self.min_samples)
        return {"index": index, "file_name": utt.file_name, "audio_path": str(utt.audio_path), "wave": wave,
                "annotations": getattr(utt, "annotations", ()), **example_targets(utt)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self._load(index)
        if self.augmenter is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            partner = None
            if self.augmenter.wants_partner(rng):
                other = int(rng.integers(len(self.utterances)))
                partner = self._load(other)
            example = self.augmenter(example, rng, partner=partner)
        return example


class CachedHiddenDataset(Dataset):
    """Examples whose encoder outputs come from a ``FeatureCache`` (filled by ``fill_feature_cache``)."""

    def __init__(self, utterances: Sequence, cache: Any):
        self.utterances = list(utterances)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict[str, Any]:
        utt = self.utterances[index]
        tensors = self.cache.get(utt.audio_path)
        if tensors is None:
            raise RuntimeError(f"no cached features for {utt.audio_path}; run fill_feature_cache first")
        return {"index": index, "file_name": utt.file_name, "hidden": tensors["hidden"], **example_targets(utt)}


def _targets(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "label": torch.tensor([e["label"] for e in examples], dtype=torch.long),
        "soft_label": torch.from_numpy(np.stack([e["soft_label"] for e in examples])).float(),
        "attributes": torch.from_numpy(np.stack([e["attributes"] for e in examples])).float(),
        "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
    }


def normalise_wave(wave: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per utterance, as WavLM/HuBERT/wav2vec2 feature extractors do."""
    return (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)


def collate_waveforms(examples: list[dict], normalise: bool = True) -> dict[str, torch.Tensor]:
    """Pad waves to the longest: ``input_values`` (B, S) and ``attention_mask`` (B, S); ``normalise``
    per utterance for SSL encoders (off for Whisper, whose log-mel front end reads the raw amplitude)."""
    lengths = [len(e["wave"]) for e in examples]
    values = torch.zeros(len(examples), max(lengths))
    mask = torch.zeros(len(examples), max(lengths), dtype=torch.long)
    for i, e in enumerate(examples):
        wave = normalise_wave(e["wave"]) if normalise else np.asarray(e["wave"], np.float32)
        values[i, : lengths[i]] = torch.from_numpy(wave)
        mask[i, : lengths[i]] = 1
    return {"input_values": values, "attention_mask": mask, **_targets(examples)}


def collate_hidden(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Pad cached hidden states (L, T, H) to ``hidden_states`` (L, B, T, H) and ``frame_mask`` (B, T)."""
    frames = [e["hidden"].shape[1] for e in examples]
    num_layers, _, hidden = examples[0]["hidden"].shape
    states = torch.zeros(num_layers, len(examples), max(frames), hidden)
    mask = torch.zeros(len(examples), max(frames), dtype=torch.bool)
    for i, e in enumerate(examples):
        states[:, i, : frames[i]] = e["hidden"].float()
        mask[i, : frames[i]] = True
    return {"hidden_states": states, "frame_mask": mask, **_targets(examples)}


@torch.no_grad()
def fill_feature_cache(model: Any, utterances: Sequence, cache: Any, *, max_seconds: float | None,
                       batch_size: int = 8, rank: int = 0, world_size: int = 1, progress: bool = True) -> int:
    """Encode every utterance not yet cached (this rank's share) and store its hidden states (L, T, H)."""
    from tqdm.auto import tqdm

    todo = [u for i, u in enumerate(utterances) if i % world_size == rank and u.audio_path not in cache]
    dataset = AudioExampleDataset(todo, max_seconds=max_seconds)
    model.eval()
    for start in tqdm(range(0, len(todo), batch_size), disable=not progress or not todo,
                      desc="caching encoder features", leave=False):
        examples = [dataset[i] for i in range(start, min(start + batch_size, len(todo)))]
        batch = collate_waveforms(examples, normalise=getattr(model, "normalises_waveforms", True))
        hidden, mask = model.encode(batch["input_values"], batch["attention_mask"])  # (L, B, T, H), (B, T)
        for i, example in enumerate(examples):
            frames = int(mask[i].sum())
            cache.put(Path(example["audio_path"]), {"hidden": hidden[:, i, :frames].to(torch.float16)})
    return len(todo)
