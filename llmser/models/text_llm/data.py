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
        voting._heads = {}
        return voting

    def __len__(self) -> int:
        return len(self.utterances)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _pieces(self, template: PromptTemplate, transcript: str) -> tuple[list[int], list[int]]:
        """Token ids of the variant's instruction (the same for every file; [] if the transcript comes first)
        and of the rest of the prompt."""
        from llmser.models.llm.scoring import instruction_text

        if template.name not in self._heads:
            head = instruction_text(self.tokenizer, template)
            self._heads[template.name] = (head, self.tokenizer(head, add_special_tokens=False)["input_ids"] if head else [])
        head, head_ids = self._heads[template.name]
        rest = template.render(self.tokenizer, transcript)[len(head):]
        return head_ids, self.tokenizer(rest, add_special_tokens=False)["input_ids"]

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
                    "vote_pieces": [self._pieces(t, transcript) for t in self.vote_templates]}
        template = self.template_for(index)
        return {"index": index, "file_name": utt.file_name, "prompt": template.render(self.tokenizer, transcript),
                "variant": template.name, **example_targets(utt)}


class PromptCollator:
    """Tokenise a batch of prompts, left-padded so every row's last token is its answer position."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if "vote_pieces" in examples[0]:  # voting: row b * K + k is file b through variant k
            return {**self.vote_batch([p for e in examples for p in e["vote_pieces"]]), **_targets(examples)}
        enc = self.tokenizer([e["prompt"] for e in examples], add_special_tokens=False, padding=True,
                             padding_side="left", return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], **_targets(examples)}

    def vote_batch(self, pieces: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
        """(instruction, rest) ids per row -> the instructions (``vote_prefixes``, served from the model's
        prefix cache) and the rests left-padded; with any instruction empty, whole prompts and no prefixes."""
        shared = all(head for head, _ in pieces)
        rows = [rest if shared else head + rest for head, rest in pieces]
        width = max(1, max(len(r) for r in rows))
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
                mask[i, width - len(row):] = 1
        return {"vote_input_ids": ids, "vote_attention_mask": mask,
                "vote_prefixes": [head for head, _ in pieces] if shared else None}
