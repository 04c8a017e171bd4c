"""Constrained label scoring: the log-likelihood of every answer as a continuation of a prompt.

Free generation can say anything ("The speaker sounds a bit..."), so llmser never parses generated
text: it scores each candidate answer (a label word, or a rating digit) as the continuation of the
prompt and takes a softmax over the candidates. That is always a valid label, whatever a transcript
says, and the scores are probabilities that ensembles can average.

Efficiency (what ``scripts/bench_label_scoring.py`` measures against free generation): the prompt and
every candidate's tokens run in one forward - the candidates packed after the prompt behind a 4-D
attention mask in which each candidate token sees the prompt and its own candidate's earlier tokens
(``score_after_prefix``), so no key/value cache is copied per candidate. A prompt prefix shared by many
inputs can come from a ``PrefixCache`` instead of being run again (the audio-LLM's instructions).
``score_with_prefix_cache`` (prompt once, then the candidates' remaining tokens on the repeated cache)
stays for scoring with gradients; ``score_naive`` (prompt + candidate in full for each candidate) is
the reference the tests compare with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from llmser.models.llm.compat import cache_kwargs
from llmser.models.llm.prefix_cache import PrefixCache, cache_of
from llmser.utils.budget import split_to_budget

Reduction = Literal["sum", "mean"]
AnswerScoring = Literal["whole", "first_token"]


def candidate_token_ids(tokenizer: Any, candidates: Sequence[str], end_of_answer: bool = True) -> list[list[int]]:
    """Token ids of each answer, with the end-of-turn token so that "sad" and "sadness" differ."""
    ids = []
    for text in candidates:
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        if end_of_answer and tokenizer.eos_token_id is not None:
            tokens = tokens + [tokenizer.eos_token_id]
        if not tokens:
            raise ValueError(f"candidate answer {text!r} tokenizes to nothing")
        ids.append(tokens)
    return ids


def first_tokens(tokenizer: Any, candidates: Sequence[str]) -> list[list[int]]:
    """Each answer's first token alone; an error if two answers start with the same token (first-token
    scoring could not tell them apart)."""
    ids = [tokens[:1] for tokens in candidate_token_ids(tokenizer, candidates, end_of_answer=False)]
    seen: dict[int, str] = {}
    for text, (token,) in zip(candidates, ids):
        if token in seen:
            raise ValueError(f"answers {seen[token]!r} and {text!r} start with the same token ({token}): score "
                             "whole answers (answer_scoring: whole) or reword one of them")
        seen[token] = text
    return ids


def prefix_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for left-padded rows: 0 at each row's first real token, as ``generate`` does."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def score_with_prefix_cache(model: Any, attention_mask: torch.Tensor, candidates: list[list[int]], *,
                            input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                            reduction: Reduction = "sum", pad_token_id: int = 0) -> torch.Tensor:
    """(B, C) log-likelihoods of C candidate token sequences after B left-padded prefixes.

    The prefix is given as ``input_ids`` or ``inputs_embeds`` (an audio-LLM splices speech there).
    """
    device = attention_mask.device
    out = model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                position_ids=prefix_positions(attention_mask), use_cache=True, logits_to_keep=1)
    last = out.logits[:, -1].float().log_softmax(-1)  # (B, V)
    first = torch.tensor([c[0] for c in candidates], device=device)
    scores = last[:, first]  # (B, C)
    rest = max(len(c) for c in candidates) - 1
    if rest > 0:
        scores = scores + _score_rest(model, cache_of(out), attention_mask, candidates, rest, pad_token_id)
    if reduction == "mean":
        scores = scores / torch.tensor([len(c) for c in candidates], device=device, dtype=scores.dtype)
    return scores


def _score_rest(model: Any, cache: Any, prefix_mask: torch.Tensor, candidates: list[list[int]], rest: int,
                pad_token_id: int) -> torch.Tensor:
    """Log-probability of each candidate's tokens after its first, for every (prefix, candidate) pair."""
    device = prefix_mask.device
    batch, num = prefix_mask.shape[0], len(candidates)
    inputs = torch.full((num, rest), pad_token_id, dtype=torch.long, device=device)
    targets = torch.zeros((num, rest), dtype=torch.long, device=device)
    valid = torch.zeros((num, rest), dtype=torch.long, device=device)
    for c, ids in enumerate(candidates):
        n = len(ids) - 1
        if n:
            inputs[c, :n] = torch.tensor(ids[:-1], device=device)
            targets[c, :n] = torch.tensor(ids[1:], device=device)
            valid[c, :n] = 1
    cache.batch_repeat_interleave(num)  # rows become (prefix b, candidate c) at b * num + c
    mask = torch.cat([prefix_mask.repeat_interleave(num, 0), valid.repeat(batch, 1)], dim=1)
    positions = prefix_mask.sum(-1).repeat_interleave(num)[:, None] + torch.arange(rest, device=device)
    logits = model(input_ids=inputs.repeat(batch, 1), attention_mask=mask, position_ids=positions,
                   use_cache=True, **cache_kwargs(cache)).logits  # (B*C, rest, V)
    logp = torch.log_softmax(logits, -1, dtype=torch.float32).gather(-1, targets.repeat(batch, 1)[..., None]).squeeze(-1)
    return (logp * valid.repeat(batch, 1)).sum(-1).view(batch, num)


@torch.no_grad()
def score_after_prefix(model: Any, prefix_cache: Any, prefix_mask: torch.Tensor | None, suffix_embeds: torch.Tensor,
                       suffix_mask: torch.Tensor, answer_sets: Sequence[list[list[int]]],
                       row_set: torch.Tensor | None = None, reduction: Reduction = "sum") -> torch.Tensor:
    """(N, C) log-likelihoods of each row's C answers after N prompts whose prefixes are in ``prefix_cache``.

    Row n's prompt is its cached prefix (``prefix_mask`` (N, P), left-padded) followed by its suffix
    (``suffix_embeds`` (N, T, H), left-padded, ``suffix_mask`` (N, T)); it is scored against the answers
    ``answer_sets[row_set[n]]`` (every set holds C token sequences; ``row_set`` defaults to set 0).
    One forward runs the suffixes and all answers: each row's answer tokens are packed after its suffix,
    and a 4-D attention mask lets an answer token see the prompt and its own answer's earlier tokens only,
    so no key/value cache is repeated per answer and prompts with different answer sets share the batch.
    Equal, up to float rounding, to ``score_with_prefix_cache`` on the whole prompt. With no prefix
    (``prefix_cache`` and ``prefix_mask`` None) the suffix is the whole prompt.
    """
    device, dtype = suffix_embeds.device, suffix_embeds.dtype
    rows, width = suffix_mask.shape
    if prefix_mask is None:
        prefix_mask = torch.zeros((rows, 0), dtype=torch.long, device=device)
    row_set = torch.zeros(rows, dtype=torch.long, device=device) if row_set is None else row_set.to(device)
    packs = [packed_answers(answers) for answers in answer_sets]
    packed = max(len(tokens) for _, _, tokens in packs)  # 0 when every answer is one token (first-token scoring)
    table = torch.zeros((len(packs), 4, packed), dtype=torch.long)  # owner, step, token, valid per set
    for g, (owner, step, tokens) in enumerate(packs):
        table[g, :, : len(tokens)] = torch.tensor([owner, step, tokens, [1] * len(tokens)], dtype=torch.long)
    owner, step, tokens, valid = table.to(device)[row_set].unbind(1)  # (N, M) each
    embeds = torch.cat([suffix_embeds, model.get_input_embeddings()(tokens).to(dtype)], dim=1)  # (N, T + M, H)
    real = suffix_mask.bool()
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    sees_suffix = torch.cat([causal[None] & real[:, None, :],  # the suffix: causal over its real tokens
                             real[:, None, :].expand(-1, packed, -1)], dim=1)  # the answers: all of it
    own_answer = (owner[:, :, None] == owner[:, None, :]) & (step[:, None, :] <= step[:, :, None]) \
        & valid.bool()[:, None, :]  # (N, M, M)
    sees_answers = torch.cat([torch.zeros(rows, width, packed, dtype=torch.bool, device=device), own_answer], 1)
    allowed = torch.cat([prefix_mask.bool()[:, None, :].expand(-1, width + packed, -1), sees_suffix, sees_answers],
                        dim=2)  # (N, T + M, P + T + M)
    mask = additive_mask(allowed, dtype)
    start = prefix_mask.sum(-1, keepdim=True)  # (N, 1) real prefix tokens
    positions = torch.cat([start + (suffix_mask.cumsum(-1) - 1).clamp(min=0),
                           start + suffix_mask.sum(-1, keepdim=True) + step], dim=1)
    out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                use_cache=prefix_cache is not None, **cache_kwargs(prefix_cache), logits_to_keep=packed + 1)
    logp = torch.log_softmax(out.logits, -1, dtype=torch.float32)  # (N, 1 + M, V): after the suffix, then after each packed token
    scores = torch.zeros(rows, len(answer_sets[0]), device=device)
    for g, answers in enumerate(answer_sets):
        members = (row_set == g).nonzero().squeeze(1)
        if len(members):
            scores[members] = gather_answers(logp[members], answers)
    if reduction == "mean":
        lengths = torch.tensor([[len(a) for a in answers] for answers in answer_sets], device=device)
        scores = scores / lengths[row_set].to(scores.dtype)
    return scores


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, Q, K) booleans (True: query may attend to key) -> the (B, 1, Q, K) float mask transformers adds."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[:, None]


def packed_answers(answers: list[list[int]]) -> tuple[list[int], list[int], list[int]]:
    """Every answer's tokens but its last (the last is only predicted), with their answer and step."""
    owner, step, tokens = [], [], []
    for c, ids in enumerate(answers):
        for j, token in enumerate(ids[:-1]):
            owner.append(c)
            step.append(j)
            tokens.append(token)
    return owner, step, tokens


def gather_answers(logp: torch.Tensor, answers: list[list[int]]) -> torch.Tensor:
    """(N, C) summed log-probabilities: an answer's first token is predicted after the suffix (column 0),
    its token j after its packed token j - 1."""
    columns, targets, owners = [], [], []
    offset = 1
    for c, ids in enumerate(answers):
        columns += [0] + list(range(offset, offset + len(ids) - 1))
        targets += ids
        owners += [c] * len(ids)
        offset += len(ids) - 1
    device = logp.device
    picked = logp[:, torch.tensor(columns, device=device), torch.tensor(targets, device=device)]  # (N, sum len)
    return torch.zeros(logp.shape[0], len(answers), device=device).index_add_(
        1, torch.tensor(owners, device=device), picked)


@torch.no_grad()
def score_naive(model: Any, tokenizer: Any, prompts: Sequence[str], candidates: Sequence[str], *,
                reduction: Reduction = "sum", end_of_answer: bool = True) -> np.ndarray:
    """Reference implementation: one full forward of prompt + answer per (prompt, candidate) pair."""
    cands = candidate_token_ids(tokenizer, candidates, end_of_answer)
    scores = np.zeros((len(prompts), len(cands)))
    device = next(model.parameters()).device  # every index on the model's device (CUDA refuses a CPU index)
    for i, prompt in enumerate(prompts):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for c, ids in enumerate(cands):
            full = torch.tensor([prompt_ids + ids], device=device)
            logp = model(input_ids=full).logits[0].float().log_softmax(-1)
            positions = torch.arange(len(prompt_ids) - 1, len(prompt_ids) + len(ids) - 1, device=device)
            total = logp[positions, torch.tensor(ids, device=device)].sum().item()
            scores[i, c] = total / len(ids) if reduction == "mean" else total
    return scores


class LabelScorer:
    """Scores fixed answer sets after rendered prompts, in batches, with the prefix cache.

    ``answer_scoring="whole"`` sums the log-probabilities of every token of an answer, end of turn
    included; ``"first_token"`` reads only each answer's first token from the prompt's last position,
    so no answer token runs through the model (with SmolLM2's 2-5-token answers, a (file, variant) row
    shrinks from ~41 tokens to the ~16 after the instruction).
    """

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8, reduction: Reduction = "sum",
                 end_of_answer: bool = True, answer_scoring: AnswerScoring = "whole", max_tokens: int | None = None):
        if answer_scoring not in ("whole", "first_token"):
            raise ValueError(f"answer_scoring must be 'whole' or 'first_token', not {answer_scoring!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.reduction = reduction
        self.end_of_answer = end_of_answer
        self.answer_scoring = answer_scoring
        self.max_tokens = max_tokens  # rows x padded tokens of one forward (data.eval_max_tokens); None: batch_size only
        self.prefix_cache = PrefixCache()  # each variant's instruction, computed once for the scorer's life

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def log_likelihoods(self, prompts: Sequence[str], candidates: Sequence[str], progress: Any = None) -> np.ndarray:
        """(N, C) log-likelihood of each candidate after each prompt."""
        cands = self._answer_ids(candidates)
        was_training = self.model.training
        self.model.eval()
        rows = []
        width = max((len(c) for c in cands), default=1) - 1  # packed answer tokens after each prompt
        for start in range(0, len(prompts), self.batch_size):
            batch = [self._encode(p) for p in prompts[start:start + self.batch_size]]
            for part in split_to_budget(batch, lambda rows_: len(rows_) * (max(map(len, rows_)) + width),
                                        self.max_tokens):
                rows.append(self._score_rows(None, part, [cands], [0] * len(part)))
            if progress is not None:
                progress.update(len(batch))
        self.model.train(was_training)
        return np.concatenate(rows) if rows else np.zeros((0, len(cands)))

    def probabilities(self, prompts: Sequence[str], candidates: Sequence[str], progress: Any = None) -> np.ndarray:
        """(N, C) softmax over the candidates' log-likelihoods."""
        return softmax(self.log_likelihoods(prompts, candidates, progress))

    # ------------------------------------------------------------------ prompt variants over many inputs

    def variant_log_likelihoods(self, templates: Sequence[Any], transcripts: Sequence[str],
                                attribute: str | None = None, progress: Any = None) -> np.ndarray:
        """(K, N, C) log-likelihoods of each template's answers for every transcript, instructions shared.

        Each variant's text before ``{transcript}`` (system turn, instruction, label list) is the same for
        every file: its key/value states are computed once per variant for the scorer's lifetime
        (``prefix_cache``), and each forward runs ``batch_size`` files through all K variants at once -
        per (file, variant) only the transcript, the text after it and the packed answers. A template
        with nothing before the transcript runs whole. The prompt is tokenised as instruction + rest,
        which can differ from tokenising the whole text only where a transcript's first characters would
        merge with the instruction's last (a space before the transcript is kept with the transcript).
        """
        answer_sets = list(dict.fromkeys(tuple(t.candidates) for t in templates))
        answer_ids = [self._answer_ids(c) for c in answer_sets]
        heads = [instruction_text(self.tokenizer, t, attribute) for t in templates]
        head_ids = [self._encode(h) for h in heads]
        sets = [answer_sets.index(tuple(t.candidates)) for t in templates]
        was_training = self.model.training
        self.model.eval()
        out = np.zeros((len(templates), len(transcripts), len(answer_sets[0])))
        shared = [k for k, ids in enumerate(head_ids) if ids]
        whole = [k for k, ids in enumerate(head_ids) if not ids]
        for start in range(0, len(transcripts), self.batch_size):
            files = range(start, min(start + self.batch_size, len(transcripts)))
            for group in (shared, whole):
                if not group:
                    continue
                rows = [(k, i, self._encode(templates[k].render(self.tokenizer, transcripts[i], attribute)[len(heads[k]):]))
                        for i in files for k in group]  # all variants of a file side by side
                for part in split_to_budget(rows, self._row_tokens(head_ids if group is shared else None, answer_ids),
                                            self.max_tokens):
                    scores = self._score_rows([head_ids[k] for k, _, _ in part] if group is shared else None,
                                              [ids for _, _, ids in part], answer_ids, [sets[k] for k, _, _ in part])
                    for (k, i, _), row in zip(part, scores):
                        out[k, i] = row
            if progress is not None:
                progress.update(len(files))
        self.model.train(was_training)
        return out

    def variant_probabilities(self, templates: Sequence[Any], transcripts: Sequence[str],
                              attribute: str | None = None, progress: Any = None) -> np.ndarray:
        """(K, N, C) softmax over each template's answers (``variant_log_likelihoods``)."""
        return softmax(self.variant_log_likelihoods(templates, transcripts, attribute, progress))

    def _answer_ids(self, candidates: Sequence[str]) -> list[list[int]]:
        if self.answer_scoring == "first_token":
            return first_tokens(self.tokenizer, candidates)
        return candidate_token_ids(self.tokenizer, candidates, self.end_of_answer)

    @staticmethod
    def _row_tokens(head_ids: list[list[int]] | None, answer_ids: list[list[list[int]]]):
        """Padded tokens of a group of (variant, file, suffix) rows: cached instruction + suffix + packed answers."""
        packed = max(len(packed_answers(a)[2]) for a in answer_ids)

        def size(rows: Sequence[tuple[int, int, list[int]]]) -> int:
            prefix = max((len(head_ids[k]) for k, _, _ in rows), default=0) if head_ids else 0
            return len(rows) * (prefix + max(len(ids) for _, _, ids in rows) + packed)

        return size

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _score_rows(self, prefixes: list[list[int]] | None, suffixes: list[list[int]],
                    answer_ids: list[list[list[int]]], row_set: list[int]) -> np.ndarray:
        """(R, C) scores of R prompts = cached prefix (or none) + suffix, answers by ``row_set``."""
        from torch.nn.utils.rnn import pad_sequence

        device = self.device
        cache, prefix_mask = self.prefix_cache.batch(self.model, prefixes) if prefixes else (None, None)
        flipped = [torch.tensor(ids[::-1] or [self.tokenizer.pad_token_id], dtype=torch.long) for ids in suffixes]
        ids = pad_sequence(flipped, batch_first=True, padding_value=self.tokenizer.pad_token_id).flip(1)  # left-padded
        mask = pad_sequence([torch.ones(len(t), dtype=torch.long) for t in flipped], batch_first=True).flip(1)
        embeds = self.model.get_input_embeddings()(ids.to(device))
        scores = score_after_prefix(self.model, cache, prefix_mask, embeds, mask.to(device), answer_ids,
                                    torch.tensor(row_set, device=device), reduction=self.reduction)
        return scores.cpu().numpy()


TRANSCRIPT_MARK = "\u2063llmser-transcript\u2063"  # never in a transcript: sanitising keeps it, templates pass it


def instruction_text(tokenizer: Any, template: Any, attribute: str | None = None) -> str:
    """The rendered prompt before its transcript: the same for every file ("" when the transcript comes first)."""
    if "transcript" not in template.inputs:
        return ""
    rendered = template.render(tokenizer, TRANSCRIPT_MARK, attribute)
    if TRANSCRIPT_MARK not in rendered:
        return ""
    # A space before the transcript stays with it: BPE tokenisers merge it into the transcript's first word.
    return rendered.split(TRANSCRIPT_MARK)[0].rstrip(" ")


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
