"""Prompts whose speech tokens do not attend to the instruction before them.

Why: with ordinary causal attention, the speech tokens' key/value states depend on the prompt variant's
text before them, so voting over K variants runs the speech K times. If the speech tokens attend only to
each other (``speech_attention: isolated``; the text after the speech still sees everything), their
states are the same for every variant: voting runs them once per clip, and per (variant, clip) only the
text after the speech remains - with the ``speech_last_*`` prompts, the 6-token chat tail. On a CPU,
where every token through SmolLM2 costs ~3 ms, this is what lets five variants cost little more than one.

The model trains with the same attention pattern (``isolated_attention_mask``), so scoring here and
training see the same thing. Because the speech sees no earlier token, its hidden states do not depend
on where it sits: ``score_isolated_input`` computes it at positions 0.. and moves each variant's cached
instruction states to negative positions instead (a RoPE rotation of the cached keys), which keeps
every query-key distance what it is in the full prompt. ``tests/test_audio_llm.py`` checks the result
against full-prompt scoring with the isolation mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llmser.models.llm.compat import cache_kwargs
from llmser.models.llm.scoring import additive_mask, gather_answers, packed_answers

BEFORE, INPUT, AFTER = 0, 1, 2  # instruction, speech, the text after it and answers; padding is -1


def isolated_attention_mask(mask: torch.Tensor, segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, L, L) additive mask: causal over real tokens, except that input (speech) tokens see only each other."""
    length = mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    allowed = causal[None] & mask.bool()[:, None, :]
    is_input = segments == INPUT
    allowed &= ~(is_input[:, :, None] & ~is_input[:, None, :])
    allowed |= torch.eye(length, dtype=torch.bool, device=mask.device)[None]  # padding rows: no empty softmax
    return additive_mask(allowed, dtype)


def rotary_embedding(model: Any) -> Any:
    """The model's rotary position embedding module (LLaMA-style decoders)."""
    for name, module in model.named_modules():
        if name.endswith("rotary_emb"):
            if "dynamic" in str(getattr(module, "rope_type", "default")):
                raise ValueError("isolated speech attention needs a position-independent RoPE; dynamic RoPE scaling "
                                 "changes the frequencies with the length - use speech_attention: causal")
            return module
    raise ValueError(f"{type(model).__name__} has no rotary position embedding; isolated speech attention "
                     "moves cached keys by a RoPE rotation - use speech_attention: causal")


def shift_keys(rotary: Any, keys: torch.Tensor, shift: int) -> torch.Tensor:
    """Cached RoPE keys (..., L, d) computed at positions p, as if computed at p + ``shift``."""
    position = torch.tensor([[shift]], device=keys.device)
    cos, sin = rotary(keys.float(), position)  # (1, 1, d), scaled by attention_scaling
    scale = float(getattr(rotary, "attention_scaling", 1.0))
    if cos.shape[-1] != keys.shape[-1]:
        raise ValueError("partial rotary embeddings are not supported with isolated speech attention")
    cos, sin = cos[0] / scale, sin[0] / scale  # (1, d): a pure rotation by shift * frequency
    k = keys.float()
    half = k.shape[-1] // 2
    rotated = torch.cat([-k[..., half:], k[..., :half]], dim=-1)
    return (k * cos + rotated * sin).to(keys.dtype)


@dataclass
class Item:
    """One prompt scored after a clip's speech: its cached instruction (index, or None), the token ids after
    the speech, and the index of its answer set."""

    prefix: int | None
    tail: list[int]
    answers: int

    def __post_init__(self) -> None:
        if not self.tail:
            raise ValueError("with isolated speech attention the prompt needs text after {speech} (at least the "
                             "chat template's turn end): the speech alone never sees the instruction")


@torch.no_grad()
def score_isolated_input(model: Any, instructions: Instructions | None,
                         input_embeds: torch.Tensor, input_mask: torch.Tensor, items: Sequence[Sequence[Item]],
                         answer_sets: Sequence[list[list[int]]]) -> torch.Tensor:
    """(B, K, C) summed answer log-likelihoods of K prompts per clip, in one forward.

    ``instructions`` holds the cached instructions (``Instructions.join``; None when no prompt has one);
    ``input_embeds`` (B, S, H) / ``input_mask`` (B, S) are each row's input block (real tokens first);
    ``items[b][k]`` is row b's k-th prompt. Row b's sequence is [input | tail 1 + answers 1 | ... |
    tail K + answers K]: the input sees itself; tail k (the text after the speech) sees its instruction,
    the input and itself; its packed answer tokens (as in ``score_after_prefix``) also see their own answer's
    earlier tokens.
    Equal, up to float rounding, to scoring each full prompt [instruction | input | tail | answer] under
    ``isolated_attention_mask``.
    """
    device = input_embeds.device
    rows, slots = input_mask.shape[0], len(items[0])
    layout, inputs = _isolated_inputs(model.get_input_embeddings(), instructions, input_embeds, input_mask, items,
                                      answer_sets)
    keep = torch.tensor([c for k in range(slots) for c in layout.read[k]], device=device)
    out = model(**inputs, logits_to_keep=keep)
    logp = torch.log_softmax(out.logits, -1, dtype=torch.float32)  # (B, read columns, V)
    scores = torch.zeros(rows, slots, len(answer_sets[0]), device=device)
    start = 0
    for k in range(slots):
        reads = len(layout.read[k])
        for g in {item[k].answers for item in items}:
            members = torch.tensor([b for b in range(rows) if items[b][k].answers == g], device=device)
            scores[members, k] = gather_answers(logp[members, start:start + reads], answer_sets[g])
        start += reads
    return scores


@torch.no_grad()
def isolated_last_states(decoder: Any, embed: Any, instructions: Instructions | None, input_embeds: torch.Tensor,
                         input_mask: torch.Tensor, items: Sequence[Sequence[Item]]) -> torch.Tensor:
    """(B, K, H) float32 final hidden state of the last token of each of K prompts per clip, in one forward.

    The same sequence as ``score_isolated_input`` without answers: [input | tail 1 | ... | tail K]; the
    state at the end of tail k (where the model would start answering) is what a head reads.
    ``decoder`` is the transformer stack without the LM head, ``embed`` its token embedding.
    """
    slots = len(items[0])
    layout, inputs = _isolated_inputs(embed, instructions, input_embeds, input_mask, items, [[]])
    hidden = decoder(**inputs).last_hidden_state  # (B, Q, H)
    ends = torch.tensor([layout.read[k][0] for k in range(slots)], device=hidden.device)
    return hidden[:, ends].float()


def _isolated_inputs(embed: Any, instructions: Instructions | None, input_embeds: torch.Tensor,
                     input_mask: torch.Tensor, items: Sequence[Sequence[Item]],
                     answer_sets: Sequence[list[list[int]]]) -> tuple[_Layout, dict[str, Any]]:
    """The layout of [input | tail + packed answers per slot] and the keyword arguments of its forward."""
    device, dtype = input_embeds.device, input_embeds.dtype
    rows = input_mask.shape[0]
    cache = instructions.cache(rows) if instructions is not None else None
    past_owner = instructions.owner if instructions is not None else torch.zeros(0, dtype=torch.long, device=device)
    layout = _Layout(items, answer_sets, input_mask, device)
    embeds = torch.cat([input_embeds, embed(layout.ids).to(dtype)], dim=1)  # (B, Q, H)
    mask = additive_mask(torch.cat([layout.sees_past(past_owner), layout.sees_new()], dim=2), dtype)  # (B,1,Q,P+Q)
    return layout, {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": layout.positions,
                    "use_cache": cache is not None, **cache_kwargs(cache)}


@dataclass
class Instructions:
    """Cached instructions joined along the sequence, each moved to end at position -1 (batch 1).

    ``layers``: per layer (keys, values) (1, heads, P, d); ``owner`` (P,): which instruction each entry is.
    """

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    owner: torch.Tensor

    @classmethod
    def join(cls, model: Any, prefix_states: Sequence[list[tuple[torch.Tensor, torch.Tensor]]]) -> Instructions:
        rotary = rotary_embedding(model)
        lengths = [states[0][0].shape[2] for states in prefix_states]
        layers = []
        for layer in range(len(prefix_states[0])):
            keys = torch.cat([shift_keys(rotary, s[layer][0], -n) for s, n in zip(prefix_states, lengths)], dim=2)
            layers.append((keys, torch.cat([s[layer][1] for s in prefix_states], dim=2)))
        device = layers[0][0].device
        owner = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))
        return cls(layers, owner)

    def cache(self, rows: int) -> Any:
        """A ``DynamicCache`` with the instructions for ``rows`` rows (expanded, not copied)."""
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
                                            for k, v in self.layers])


class _Layout:
    """Columns of the new tokens: the input block, then per slot k its tail (left-padded) and packed answers."""

    def __init__(self, items: Sequence[Sequence[Item]], answer_sets: Sequence[list[list[int]]],
                 input_mask: torch.Tensor, device: torch.device):
        rows, width = input_mask.shape
        packs = [packed_answers(a) for a in answer_sets]
        spans, self.read, column = [], [], width
        for k in range(len(items[0])):
            tail = max(len(row[k].tail) for row in items)
            packed = max(len(packs[row[k].answers][2]) for row in items)
            spans.append((column, tail, packed))
            self.read.append([column + tail - 1] + list(range(column + tail, column + tail + packed)))
            column += tail + packed
        total = column
        self.ids = torch.zeros(rows, total - width, dtype=torch.long)
        real = torch.zeros(rows, total, dtype=torch.bool)
        real[:, :width] = input_mask.bool().cpu()
        slot = torch.full((total,), -1, dtype=torch.long)
        positions = torch.arange(total)[None].repeat(rows, 1)
        owner = torch.full((rows, total), -1, dtype=torch.long)  # the answer a packed token belongs to
        step = torch.zeros(rows, total, dtype=torch.long)
        prefix = torch.full((rows, total), -2, dtype=torch.long)  # the instruction a column's item reads
        lengths = input_mask.long().sum(-1).cpu()
        for k, (column, tail, packed) in enumerate(spans):
            slot[column: column + tail + packed] = k
            for b, row in enumerate(items):
                item = row[k]
                start = column + tail - len(item.tail)
                self.ids[b, start - width: column + tail - width] = torch.tensor(item.tail)
                real[b, start: column + tail] = True
                positions[b, start: column + tail] = lengths[b] + torch.arange(len(item.tail))
                who, when, tokens = packs[item.answers]
                span = slice(column + tail, column + tail + len(tokens))
                if tokens:
                    self.ids[b, span.start - width: span.stop - width] = torch.tensor(tokens)
                    real[b, span] = True
                    owner[b, span] = torch.tensor(who)
                    step[b, span] = torch.tensor(when)
                    positions[b, span] = lengths[b] + len(item.tail) + torch.tensor(when)
                prefix[b, column: column + tail + packed] = -1 if item.prefix is None else item.prefix
        self.slot = slot.to(device)
        self.ids, self.real, self.positions = self.ids.to(device), real.to(device), positions.to(device)
        self.owner, self.step, self.prefix = owner.to(device), step.to(device), prefix.to(device)

    def sees_past(self, past_owner: torch.Tensor) -> torch.Tensor:
        """(B, Q, P): a tail or answer token sees the whole instruction its item reads; input tokens none."""
        return self.prefix[:, :, None] == past_owner[None, None, :]

    def sees_new(self) -> torch.Tensor:
        """(B, Q, Q) over the new tokens."""
        total = self.real.shape[1]
        column = torch.arange(total, device=self.real.device)
        is_input = self.slot < 0
        earlier = column[None, :] <= column[:, None]
        same_slot = self.slot[:, None] == self.slot[None, :]
        key_real = self.real[:, None, :]
        input_key = is_input[None, None, :] & key_real  # every query may read the whole input ...
        input_key = input_key & (~is_input[:, None] | earlier)[None]  # ... input queries causally
        is_answer = self.owner >= 0
        tail_key = (same_slot & ~is_input[:, None])[None] & key_real & ~is_answer[:, None, :] \
            & (earlier[None] | is_answer[:, :, None])
        answer_key = same_slot[None] & is_answer[:, :, None] & is_answer[:, None, :] & key_real \
            & (self.owner[:, :, None] == self.owner[:, None, :]) & (self.step[:, None, :] <= self.step[:, :, None])
        allowed = input_key | tail_key | answer_key
        return allowed | torch.eye(total, dtype=torch.bool, device=self.real.device)[None]  # no empty softmax rows
