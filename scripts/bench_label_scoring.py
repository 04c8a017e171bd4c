"""Benchmark: constrained label scoring vs free generation on the same instruction prompts.

    python scripts/bench_label_scoring.py --quick                 # < 1 minute on 2 CPU cores (smol)
    python scripts/bench_label_scoring.py                         # all five class variants, more clips
    python scripts/bench_label_scoring.py --llm llama3-8b --corpus /data/MSP-Podcast --device cuda

Both ways answer the same rendered prompts (transcripts of a corpus split, or built-in sentences)
with the same model. Scoring (``LabelScorer.variant_probabilities``, what prompt voting runs): each
variant's instruction - the text before ``{transcript}`` - is computed once for the whole run (timed
apart: the run's one-off cost), and each batch of files goes through every variant in one forward,
with ``--answer-scoring whole`` all eight labels' tokens packed behind a 4-D mask, with ``first_token``
only each label's first token read after the prompt; always a valid label. Generation: greedy
``generate`` of up to ``--max-new-tokens`` tokens per prompt, parsed with ``parse_label``; an answer
naming no label is unparseable. Ends with machine-readable lines ``unparseable_generation_share: Y``,
``scoring_speedup_with_instructions: Z`` (the one-off instruction cost counted), ``scoring_seconds_per_file: S``
(all variants) and, last, ``scoring_speedup: X`` (generation time / scoring time, per file once the run's
instructions are cached).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from llmser.models.llm.generation import generate_answers, parse_label
from llmser.models.llm.loading import load_causal_lm
from llmser.models.llm.prompts import load_prompts
from llmser.models.llm.scoring import LabelScorer, score_naive
from llmser.models.text_llm.config import DEFAULT_TEXT_PROMPTS

SENTENCES = [
    "i cannot believe you did that again, this is outrageous", "we won and it feels wonderful",
    "i miss her every single day", "wait, what? you are moving to japan tomorrow?",
    "please do not leave me alone in the dark", "that smell is absolutely revolting",
    "oh sure, as if you would know anything about it", "the meeting starts at ten in room four",
    "i am so proud of what we built together", "nobody called, nobody cares, it is over",
    "get out of my office right now", "honestly the results were about what we expected",
]


def transcripts(corpus: str | None, split: str, n: int) -> list[str]:
    if corpus is None:
        return (SENTENCES * (n // len(SENTENCES) + 1))[:n]
    from llmser.data.msp_podcast import MSPPodcast

    data = MSPPodcast.from_folder(corpus)
    return [u.transcript for u in data.utterances(data.resolve_split(split), task="all") if u.transcript][:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm", default="smol", help="preset, Hub id or folder (default: smol)")
    parser.add_argument("--corpus", default=None, help="read transcripts from this corpus (default: built-in)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n", type=int, default=48, help="transcripts per prompt variant")
    parser.add_argument("--prompts", default=",".join(DEFAULT_TEXT_PROMPTS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--answer-scoring", choices=("whole", "first_token"), default="first_token",
                        help="what llmser predict-prompts scores (default: its default, first_token)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="all variants x 8 transcripts")
    parser.add_argument("--check-naive", action="store_true", help="also check scores against the naive way")
    args = parser.parse_args()
    if args.check_naive and args.answer_scoring != "whole":
        parser.error("--check-naive compares whole-answer scores: use it with --answer-scoring whole")
    names = args.prompts.split(",")
    n = 8 if args.quick else args.n
    torch.set_grad_enabled(False)
    loaded = load_causal_lm(args.llm)
    model, tok = loaded.model.to(args.device).eval(), loaded.tokenizer
    texts = transcripts(args.corpus, args.split, n)
    templates = load_prompts(names, task="class", inputs="transcript")
    print(f"model {loaded.name} on {args.device}; {len(templates)} variants x {len(texts)} transcripts")

    # Warm-up of both ways on one prompt, untimed (first-call allocations and lazy imports are no one's cost).
    warm = templates[0].render(tok, texts[0])
    LabelScorer(model, tok).log_likelihoods([warm], templates[0].candidates)
    generate_answers(model, tok, [warm], max_new_tokens=2, batch_size=1)
    scorer = LabelScorer(model, tok, batch_size=args.batch_size, answer_scoring=args.answer_scoring)
    # Scoring as llmser runs it: every variant's instruction computed once for the run (timed apart, with
    # the first file), then each batch of files through all variants in one forward.
    start = time.perf_counter()
    scorer.variant_probabilities(templates, texts[:1])
    instructions_s = time.perf_counter() - start
    start = time.perf_counter()
    probs = scorer.variant_probabilities(templates, texts)  # (K, N, C)
    scoring_s = time.perf_counter() - start
    generation_s = 0.0
    unparseable = total = agree = 0
    for k, template in enumerate(templates):
        prompts = [template.render(tok, t) for t in texts]
        start = time.perf_counter()
        answers = generate_answers(model, tok, prompts, max_new_tokens=args.max_new_tokens,
                                   batch_size=args.batch_size)
        gen_t = time.perf_counter() - start
        generation_s += gen_t
        parsed = [parse_label(a, template) for a in answers]
        unparseable += sum(p is None for p in parsed)
        total += len(parsed)
        scored = [template.targets[i] for i in probs[k].argmax(1)]
        agree += sum(p == s for p, s in zip(parsed, scored))
        examples = "; ".join(repr(a.strip()[:30]) for a in answers[:3])
        print(f"  {template.name:<18} generation {gen_t:7.2f}s  unparseable {sum(p is None for p in parsed)}/"
              f"{len(parsed)}  e.g. {examples}")
        if args.check_naive:
            naive = score_naive(model, tok, prompts[:4], template.candidates)
            diff = np.abs(np.log(probs[k, :4]) - (naive - naive.max(1, keepdims=True))
                          + np.log(np.exp(naive - naive.max(1, keepdims=True)).sum(1, keepdims=True))).max()
            print(f"    max |log p fast - log p naive| = {diff:.2e}")
    print(f"scoring ({args.answer_scoring}): instructions and first file {instructions_s:.2f}s (once per run), then "
          f"{scoring_s:.2f}s, {1000 * scoring_s / total:.1f} ms per prompt; "
          f"generation: {generation_s:.2f}s, {1000 * generation_s / total:.1f} ms per prompt")
    print(f"generation and scoring name the same label on {agree}/{total} prompts")
    print(f"unparseable_scored_answers: 0 (scoring picks one of the {len(templates[0].candidates)} labels)")
    print(f"unparseable_generation_share: {unparseable / total:.3f}")
    print(f"scoring_speedup_with_instructions: {generation_s / (scoring_s + instructions_s):.2f}")
    print(f"scoring_seconds_per_file: {scoring_s / len(texts):.4f} (8 labels x {len(templates)} variants)")
    print(f"scoring_speedup: {generation_s / scoring_s:.2f}")


if __name__ == "__main__":
    main()
