"""Free generation with a robust label parser: the comparison point for constrained label scoring.

An instruct model asked for "one word" may still answer "The speaker sounds angry." or "**Sad**" or
"I think it is disgust"; ``parse_label`` finds the first label word of the prompt's verbalisation
(case-insensitive, whole words, markdown and punctuation ignored) and returns its class code, or
None when the answer names no label or several at the same position. ``scripts/bench_label_scoring.py``
reports how often that happens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from llmser.models.llm.prompts import PromptTemplate
from llmser.utils.budget import split_to_budget


def parse_label(text: str, template: PromptTemplate) -> str | None:
    """The class code (or rating) the generated ``text`` names first, or None if it names none."""
    lowered = text.lower()
    best: tuple[int, str] | None = None
    for word, target in zip(template.candidates, template.targets):
        match = re.search(rf"(?<![a-z0-9]){re.escape(word.lower())}(?![a-z0-9])", lowered)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), target)
    return best[1] if best else None


@torch.no_grad()
def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 8,
                     batch_size: int = 8, max_tokens: int | None = None) -> list[str]:
    """Greedy answers to rendered prompts (left-padded batches), decoded without special tokens.

    ``max_tokens`` (``data.eval_max_tokens``) caps rows x padded prompt tokens of one ``generate`` call, as
    ``llmser plan``'s generation phase assumes: a batch is split into calls, in order, none dropped.
    """
    answers: list[str] = []
    model.eval()
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    batches = [part for start in range(0, len(prompts), batch_size)
               for part in split_to_budget(list(range(start, min(start + batch_size, len(prompts)))),
                                           lambda rows: len(rows) * max(lengths[i] for i in rows), max_tokens)]
    for rows in batches:
        enc = tokenizer([prompts[i] for i in rows], add_special_tokens=False, padding=True,
                        padding_side="left", return_tensors="pt").to(next(model.parameters()).device)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        answers += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return answers
