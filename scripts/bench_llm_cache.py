"""Benchmark: per-epoch training time of the text branch (LoRA on the top layers + heads) with and without the
cache of the states entering its first tuned layer.

    python scripts/bench_llm_cache.py --quick                # < 1 minute on 2 CPU cores (SmolLM2-135M)
    python scripts/bench_llm_cache.py                        # more prompts and epochs
    python scripts/bench_llm_cache.py --recipe adapters/text_llama3_8b_lora.yaml --llm llama3-8b   # on a GPU

Both paths train the same model (the recipe's base LLM, LoRA on its top ``lora_top_layers`` layers,
heads) from the same initial weights on the same prompts (the recipe's prompt variants around
demo-like transcripts) in the same order, in one run. Without the cache every step runs the whole
decoder forward (backprop stops at the first tuned layer either way); with it, one filling pass runs
the frozen lower layers once per prompt and every step runs only the top layers. Ends with a
machine-readable line ``llm_cache_speedup: X`` (per-epoch time without the cache / with it; the
one-off filling pass is reported separately, with the number of epochs after which it has paid off).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("i can not believe you did that again honestly what were you thinking today we finally won the "
         "match and everyone was cheering so loud please leave me alone i am tired of all of this the meeting "
         "is at noon and the report is on your desk")


@dataclass
class _Utterance:
    """The fields the prompt datasets read."""

    file_name: str
    transcript: str
    class_index: int
    soft_label: None = None
    arousal: float = 4.0
    valence: float = 4.0
    dominance: float = 4.0


def make_utterances(n: int, seed: int = 0) -> list[_Utterance]:
    generator = torch.Generator().manual_seed(seed)
    words = TEXT.split()
    utts = []
    for i in range(n):
        length = int(torch.randint(6, 24, (1,), generator=generator))
        picked = [words[int(j)] for j in torch.randint(len(words), (length,), generator=generator)]
        utts.append(_Utterance(f"utt_{i:04d}.wav", " ".join(picked), i % 8))
    return utts


def train_epoch(model, dataset, collate, batch_size: int, optimizer) -> float:
    """One epoch over ``dataset`` in index order; returns the seconds it took."""
    model.train()
    start = time.perf_counter()
    for first in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(first, min(first + batch_size, len(dataset)))])
        out = model(**batch)
        loss = torch.nn.functional.cross_entropy(out.class_logits, batch["label"]) + out.attributes.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "adapters/text_smol.yaml"), help="text-branch recipe")
    parser.add_argument("--llm", default=None, help="override the recipe's base LLM (smol, tiny, a Hub id)")
    parser.add_argument("--lora-top-layers", type=int, default=None, help="override the recipe's lora_top_layers")
    parser.add_argument("--n", type=int, default=64, help="utterances (each with a sampled prompt variant)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per path (the best one is reported)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="24 utterances, 2 epochs per path")
    args = parser.parse_args()
    if args.quick:
        args.n, args.epochs = 24, 2

    from llmser.models.llm.layer_cache import LayerStateCache, fill_layer_cache, frozen_fingerprint
    from llmser.models.llm.prompts import load_prompts
    from llmser.models.registry import branch_config, load_recipe
    from llmser.models.text_llm.data import (
        CachedStatesDataset,
        PromptCollator,
        PromptExampleDataset,
        collate_cached_states,
    )
    from llmser.models.text_llm.model import TextLLMEmotionModel

    torch.manual_seed(0)
    overrides = [f"model.llm={args.llm}"] if args.llm else []
    if args.lora_top_layers is not None:
        overrides.append(f"model.lora_top_layers={args.lora_top_layers}")
    config = branch_config(load_recipe(args.recipe, overrides))
    config.lora_dropout = 0.0  # the two paths then compute the same thing step by step
    start = time.perf_counter()
    model = TextLLMEmotionModel.from_config(config)
    load_seconds = time.perf_counter() - start
    if model.cache_split is None:
        raise SystemExit("bench_llm_cache: the recipe tunes every layer (lora_top_layers unset); nothing to cache")
    templates = load_prompts(config.prompts, task="class", inputs="transcript", folder=config.prompt_dir)
    prompts = PromptExampleDataset(make_utterances(args.n), templates, model.tokenizer,
                                   max_transcript_tokens=config.max_transcript_tokens, sample_variants=True)
    initial = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k or k.startswith("heads.")}
    layers = model.llm.get_base_model().config.num_hidden_layers
    print(f"model: {config.llm}, {layers} layers, LoRA on the top {config.lora_top_layers} (loaded in "
          f"{load_seconds:.1f} s); {args.n} utterances x {len(templates)} prompt variants, batch {args.batch_size}")

    def timed(dataset, collate) -> list[float]:
        model.load_state_dict(initial, strict=False)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        times = []
        for epoch in range(args.epochs):
            dataset.set_epoch(epoch)
            times.append(train_epoch(model, dataset, collate, args.batch_size, optimizer))
        return times

    plain = timed(prompts, PromptCollator(model.tokenizer))
    with tempfile.TemporaryDirectory() as tmp:
        decoder = model.decoder()
        cache = LayerStateCache(tmp, frozen_fingerprint(decoder, model.cache_split))
        cached_set = CachedStatesDataset(prompts, cache, lambda ids: fill_layer_cache(
            decoder, ids, cache, model.cache_split, pad_token_id=model.tokenizer.pad_token_id or 0,
            batch_size=args.batch_size, progress=False))
        start = time.perf_counter()
        filled = cached_set.ensure_filled()
        fill_seconds = time.perf_counter() - start
        cached = timed(cached_set, collate_cached_states)
    best_plain, best_cached = min(plain), min(cached)
    print(f"without cache: epochs {', '.join(f'{t:.2f}' for t in plain)} s")
    print(f"with cache:    filling {fill_seconds:.2f} s ({filled} prompts: every variant of every utterance), "
          f"epochs {', '.join(f'{t:.2f}' for t in cached)} s")
    saved = best_plain - best_cached
    if saved > 0:
        print(f"the filling pass pays off after {fill_seconds / saved:.1f} epochs")
    print(f"llm_cache_speedup: {best_plain / best_cached:.2f}")


if __name__ == "__main__":
    main()
