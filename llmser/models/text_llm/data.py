"""Prompted-transcript examples for the text branch, shared by the head trainer, SFT and inference.

Training draws one prompt variant per (seed, epoch, example), so every variant is seen and the same
example gets the same variant whatever the process count or resume point; evaluation uses the first.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    missing = [u.file_name for u in utterances if not (u.transcript or "").strip()]
    if missing:
        raise MissingTranscriptError(
            f"{len(missing)} {split} utterance(s) have no transcript, e.g. {missing[:3]}. The text branch reads "
            "transcripts: add Transcripts/<stem>.txt files to the corpus, transcribe the audio with "
            "`llmser transcribe`, or set data.on_error=skip to drop them")


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
        self.vote_templates: list[PromptTemplate] = []  # set by with_voting: every file through each of them

    def with_voting(self, variants: Sequence[str]) -> PromptExampleDataset:
        """A copy whose examples carry the prompt of every voting variant (``TextLLMEmotionModel.vote_batch``)."""
        import copy

        by_name = {t.name: t for t in self.templates}
        missing = [v for v in variants if v not in by_name]
        if missing:
            raise ValueError(f"voting variants {missing} are not among this dataset's prompts ({', '.join(by_name)})")
        voting = copy.copy(self)
        voting.vote_templates = [by_name[v] for v in variants]
        return voting

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
        transcript = truncate_transcript(self.tokenizer, utt.transcript, self.max_transcript_tokens)
        if self.vote_templates:  # the transcript is cut once and shared by every variant
            return {"index": index, "file_name": utt.file_name, **example_targets(utt),
                    "prompts": [t.render(self.tokenizer, transcript) for t in self.vote_templates]}
        template = self.template_for(index)
        return {"index": index, "file_name": utt.file_name, "prompt": template.render(self.tokenizer, transcript),
                "variant": template.name, **example_targets(utt)}


class PromptCollator:
    """Tokenise a batch of prompts, left-padded so every row's last token is its answer position."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if "prompts" in examples[0]:  # voting: row b * K + k is file b through variant k
            enc = self.tokenizer([p for e in examples for p in e["prompts"]], add_special_tokens=False,
                                 padding=True, padding_side="left", return_tensors="pt")
            return {"vote_input_ids": enc["input_ids"], "vote_attention_mask": enc["attention_mask"],
                    **_targets(examples)}
        enc = self.tokenizer([e["prompt"] for e in examples], add_special_tokens=False, padding=True,
                             padding_side="left", return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], **_targets(examples)}
