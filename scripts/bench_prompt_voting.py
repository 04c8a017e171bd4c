"""Cost of voting over prompt variants in the audio-LLM: shared audio encoding vs the naive per-variant loop.

    .venv/bin/python scripts/bench_prompt_voting.py --quick          # tiny + smol, < 1 min
    .venv/bin/python scripts/bench_prompt_voting.py --clips 16 --repeats 3
    .venv/bin/python scripts/bench_prompt_voting.py --presets smol --model runs/audio_smol/best

Per clip, it times:

- **1 variant**: Whisper encoder + Q-Former + constrained label scoring with one prompt;
- **5 shared**: the audio encoded once and the Q-Former run once, the speech tokens reused for the
  five variants (``AudioLLMEmotionModel.vote_probabilities``); each variant's instruction (the prompt before
  the speech) comes from the key/value cache kept across clips. With the recipe's
  ``speech_attention: isolated`` (the ``smol`` and ``tiny`` recipes) the speech tokens attend only to
  each other, so one forward per batch of clips runs the speech once per clip and each variant's short
  chat tail after it; with ``causal`` the speech, the text after it and the answers run once per
  (variant, clip).
  1 variant is the same path with one prompt;
- **5 naive**: for each variant, encode the audio, run the Q-Former and generate the answer greedily,
  as a SALMONN-style ``generate`` loop does (with plain causal attention: the cost, not the answers, is
  what is compared).

The last two lines are machine-readable, for the ``smol`` preset (Whisper tiny.en + SmolLM2-135M;
random Q-Former/LoRA unless ``--model`` names a trained folder, which does not change the cost):
``voting_naive_ratio: Y`` (5 naive / 1 variant) and, last, ``voting_shared_ratio: X`` (5 shared / 1 variant).
Audio is synthetic (3-s tone plus noise); the cost does not depend on what is said.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def build(preset: str, model_dir: str | None, speech_attention: str | None = None):
    from llmser.config import load_config
    from llmser.models.audio_llm.config import AudioLLMBranchConfig
    from llmser.models.audio_llm.model import AudioLLMEmotionModel
    from llmser.recipe import Recipe

    if model_dir:
        return AudioLLMEmotionModel.from_pretrained(model_dir).eval()
    recipe = load_config(Recipe, ROOT / "adapters" / f"audio_{preset}.yaml")
    from llmser.config import from_dict

    overrides = {"speech_attention": speech_attention} if speech_attention else {}
    torch.manual_seed(0)
    return AudioLLMEmotionModel.from_config(from_dict(AudioLLMBranchConfig, {**recipe.model, **overrides}, source=preset)).eval()


def clips(count: int, seconds: float) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(int(16000 * seconds)) / 16000
    return [(0.2 * np.sin(2 * np.pi * (150 + 20 * i) * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
            for i in range(count)]


@torch.no_grad()
def one_variant(model, waves):
    frames, mask = model.encoders(waves)
    return model.vote_probabilities(frames, mask, model.templates[:1])


@torch.no_grad()
def shared(model, waves):
    frames, mask = model.encoders(waves)
    return model.vote_probabilities(frames, mask, model.templates)


@torch.no_grad()
def naive(model, waves, max_new_tokens: int = 4):
    from llmser.models.audio_llm.model import pad_pieces, prompt_pieces

    tok = model.tokenizer
    answers = []
    for template in model.templates:
        frames, mask = model.encoders(waves)  # encoded again for every variant
        tokens, token_mask, _ = model.speech(frames, mask)
        ids = pad_pieces(tok, [prompt_pieces(tok, template)] * len(waves))
        embeds, attention = model.splice(tokens, token_mask, *ids)
        out = model.llm.generate(inputs_embeds=embeds, attention_mask=attention, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        answers.append(tok.batch_decode(out, skip_special_tokens=True))
    return answers


def seconds_per_clip(fn, model, waves, batch: int, repeats: int) -> float:
    """Best of ``repeats`` passes over the clips (the pass least disturbed by other load), per clip."""
    fn(model, waves[:1])  # warm-up: fills the instruction cache, allocators and thread pools
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(waves), batch):
            fn(model, waves[i:i + batch])
        passes.append(time.perf_counter() - start)
    return min(passes) / len(waves)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "smol"], choices=["tiny", "smol"])
    parser.add_argument("--model", default=None, help="a trained audio-LLM folder (used for the smol row)")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=2, help="passes per path; the best one counts")
    parser.add_argument("--naive-repeats", type=int, default=None, help="passes of the naive loop (default: --repeats)")
    parser.add_argument("--speech-attention", choices=["causal", "isolated"], default=None,
                        help="override the recipe's model.speech_attention (untrained models only)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true",
                        help="4 clips in one batch, best of 5 passes (naive: 1): under a minute on an idle 2-core CPU")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.clips, args.batch, args.repeats, args.naive_repeats = 4, 4, 5, 1
    waves = clips(args.clips, args.seconds)
    print(f"{'preset':<6} {'1 variant':>12} {'5 shared':>12} {'5 naive':>12} {'shared/1':>9} {'naive/1':>8}"
          "   (seconds per clip)")
    ratios = {}
    for preset in args.presets:
        model = build(preset, args.model if preset == "smol" else None, args.speech_attention)
        if len(model.templates) != 5:
            print(f"note: {preset} votes over {len(model.templates)} variants, not 5")
        naive_repeats = args.naive_repeats or args.repeats
        times = [seconds_per_clip(fn, model, waves, args.batch, repeats)
                 for fn, repeats in ((one_variant, args.repeats), (shared, args.repeats), (naive, naive_repeats))]
        ratios[preset] = (times[1] / times[0], times[2] / times[0])
        print(f"{preset:<6} {times[0]:>12.4f} {times[1]:>12.4f} {times[2]:>12.4f} {ratios[preset][0]:>9.2f} "
              f"{ratios[preset][1]:>8.2f}", flush=True)
    final = ratios.get("smol", next(iter(ratios.values())))
    print(f"voting_naive_ratio: {final[1]:.3f}")
    print(f"voting_shared_ratio: {final[0]:.3f}")  # the target ratio, last
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
