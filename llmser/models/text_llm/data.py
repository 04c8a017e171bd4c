"""Prompted-transcript examples for the text branch, shared by the head trainer, SFT and inference.

Training draws one prompt variant per (seed, epoch, example), so every variant is seen and the same
example gets the same variant whatever the process count or resume point; evaluation uses the first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from llmser.data.examples import _targets, example_targets
from llmser.models.llm.prompts import PromptTemplate


class MissingTranscriptError(ValueError):
    """Utterances without a transcript were given to a branch that reads transcripts."""


#: How a recipe (``llmser train``) asks for Whisper transcripts; a command passes its own flag.
RECIPE_ASR_OPTION = "data.missing_transcripts=asr"


def check_transcripts(utterances: Sequence, split: str, option: str = RECIPE_ASR_OPTION) -> None:
    """Report every utterance without a transcript at once, with the ways to get one (``option``: how the
    command at hand turns ASR on, so the hint is one it accepts)."""
    missing = [str(u.audio_path) for u in utterances if not (u.transcript or "").strip()]
    if missing:
        raise MissingTranscriptError(
            f"{len(missing)} {split} utterance(s) have no transcript, e.g. {missing[:3]}. This reads transcripts: "
            f"let Whisper make the missing ones ({option}; cached, the corpus is not changed), add "
            "Transcripts/<stem>.txt files, or write them into the corpus with `llmser transcribe --corpus DIR`")


def resolve_transcripts(utterances: Sequence, split: str, *, policy: str = "error", asr: str = "smol",
                        cache_dir: str | Path = ".cache/llmser/features", progress: bool = True,
                        option: str = RECIPE_ASR_OPTION) -> list:
    """The utterances with a transcript each: ``policy="asr"`` makes the missing ones with Whisper ``asr``
    (cached by audio content, never written into the corpus); ``"error"`` names the files and ``option``."""
    if policy == "asr":
        from llmser.models.whisper.asr import fill_transcripts

        return fill_transcripts(utterances, asr=asr, cache_dir=cache_dir, what=split, progress=progress)
    if policy != "error":
        raise ValueError(f"missing_transcripts must be 'error' or 'asr', got {policy!r}")
    check_transcripts(utterances, split, option)
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

def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """A rendered prompt's token ids, exactly as ``PromptCollator`` tokenises it (no special tokens added)."""
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


class CachedStatesDataset(Dataset):
    """A prompt dataset whose examples carry the cached states entering the first tuned layer (``lower_hidden``)
    instead of token ids; the prompt (variant sampling included) is the wrapped dataset's.

    The cache is filled on first access with every prompt the dataset can yield (``fill`` computes the
    missing ones): a set that is built but never read (``collect-outputs`` builds a train set it does not
    use) costs nothing.
    """

    def __init__(self, prompts: PromptExampleDataset, cache: Any, fill: Callable[[list[list[int]]], int]):
        self.prompts = prompts
        self.cache = cache
        self.fill = fill
        self._filled = False

    def __len__(self) -> int:
        return len(self.prompts)

    def set_epoch(self, epoch: int) -> None:
        self.prompts.set_epoch(epoch)

    def all_prompt_ids(self) -> list[list[int]]:
        """Every prompt this dataset can yield: all variants when it samples them, else the first one's."""
        templates = self.prompts.templates if self.prompts.sample_variants else self.prompts.templates[:1]
        tok = self.prompts.tokenizer
        ids = []
        for utt in self.prompts.utterances:
            transcript = truncate_transcript(tok, utt.transcript or "", self.prompts.max_transcript_tokens)
            ids += [prompt_ids(tok, t.render(tok, transcript)) for t in templates]
        return ids

    @property
    def utterances(self) -> list:
        return self.prompts.utterances

    def with_voting(self, variants: Sequence[str]) -> PromptExampleDataset:
        """The voting examples of the wrapped prompts: a vote runs the whole LLM per file, each variant's
        instruction computed once per run (``TextLLMEmotionModel.vote_batch``), not the layer cache."""
        return self.prompts.with_voting(variants)

    def ensure_filled(self) -> int:
        """Compute the states of every prompt not cached yet (once); returns how many were computed."""
        if self._filled:
            return 0
        done = self.fill(self.all_prompt_ids())
        self._filled = True
        return done

    def __getitem__(self, index: int) -> dict[str, Any]:
        self.ensure_filled()
        example = self.prompts[index]
        return {**example, "lower_hidden": self.cache.get(prompt_ids(self.prompts.tokenizer, example["prompt"]))}


def collate_cached_states(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Left-pad cached states (T_i, H) to ``lower_hidden`` (B, T, H) with the matching ``attention_mask``."""
    from llmser.models.llm.layer_cache import pad_states

    hidden, attention_mask = pad_states([e["lower_hidden"] for e in examples])
    return {"lower_hidden": hidden, "attention_mask": attention_mask, **_targets(examples)}


class CachedStatesCollator:
    """``collate_cached_states`` for training and single-prompt examples; voting examples (``vote_pieces``)
    are tokenised as ``PromptCollator`` does, since a vote runs the whole LLM."""

    def __init__(self, tokenizer: Any):
        self.prompts = PromptCollator(tokenizer)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return self.prompts(examples) if "vote_pieces" in examples[0] else collate_cached_states(examples)
