"""Prompted-transcript examples for the text branch, shared by the head trainer, SFT and inference.

Training draws one prompt variant per (seed, epoch, example), so every variant is seen and the same
example gets the same variant whatever the process count or resume point; evaluation uses the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from llmser.data.examples import _targets, example_targets
from llmser.models.llm.prompts import PromptTemplate


class MissingTranscriptError(ValueError):
    """Utterances without a transcript were given to a branch that reads transcripts."""


def check_transcripts(utterances: Sequence, split: str) -> None:
    """Report every utterance without a transcript at once, with the ways to get one."""
    missing = [str(u.audio_path) for u in utterances if not (u.transcript or "").strip()]
    if missing:
        raise MissingTranscriptError(
            f"{len(missing)} {split} utterance(s) have no transcript, e.g. {missing[:3]}. This reads transcripts: "
            "let Whisper make the missing ones (recipe data.missing_transcripts=asr, or --missing-transcripts asr; "
            "cached, the corpus is not changed), add Transcripts/<stem>.txt files, or write them into the corpus "
            "with `llmser transcribe --corpus DIR`")


def resolve_transcripts(utterances: Sequence, split: str, *, policy: str = "error", asr: str = "smol",
                        cache_dir: str | Path = ".cache/llmser/features", progress: bool = True) -> list:
    """The utterances with a transcript each: ``policy="asr"`` makes the missing ones with Whisper ``asr``
    (cached by audio content, never written into the corpus); ``"error"`` names the files and the options."""
    if policy == "asr":
        from llmser.models.whisper.asr import fill_transcripts

        return fill_transcripts(utterances, asr=asr, cache_dir=cache_dir, what=split, progress=progress)
    if policy != "error":
        raise ValueError(f"missing_transcripts must be 'error' or 'asr', got {policy!r}")
    check_transcripts(utterances, split)
    return list(utterances)


def truncate_transcript(tokenizer: Any, text: str, max_tokens: int) -> str:
    """The transcript cut to ``max_tokens`` tokens (the prompt around it is never cut)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def pick_variant(num_variants: int, seed: int, epoch: int, index: int) -> int:
    return int(np.random.default_rng([seed, epoch, index]).integers(num_variants))


class PromptExampleDataset(Dataset):
    """Utterances -> rendered prompt text + training targets."""

    def __init__(self, utterances: Sequence, templates: Sequence[PromptTemplate], tokenizer: Any, *,
                 max_transcript_tokens: int = 128, sample_variants: bool = False, seed: int = 0):
        self.utterances = list(utterances)
        self.templates = list(templates)
        self.tokenizer = tokenizer
        self.max_transcript_tokens = max_transcript_tokens
        self.sample_variants = sample_variants
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.utterances)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def template_for(self, index: int) -> PromptTemplate:
        if not self.sample_variants:
            return self.templates[0]
        return self.templates[pick_variant(len(self.templates), self.seed, self.epoch, index)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        utt = self.utterances[index]
        if utt.transcript is None:
            raise MissingTranscriptError(f"{utt.audio_path}: no transcript (and none could be made from the audio); "
                                         "add a transcript file or fix the audio")
        template = self.template_for(index)
        transcript = truncate_transcript(self.tokenizer, utt.transcript, self.max_transcript_tokens)
        return {"index": index, "file_name": utt.file_name, "prompt": template.render(self.tokenizer, transcript),
                "variant": template.name, **example_targets(utt)}


class PromptCollator:
    """Tokenise a batch of prompts, left-padded so every row's last token is its answer position."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer([e["prompt"] for e in examples], add_special_tokens=False, padding=True,
                             padding_side="left", return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], **_targets(examples)}
