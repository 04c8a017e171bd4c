"""Cost of prompt voting where it runs: ``llmser predict`` of a built system with 1 prompt variant and with 5.

    python scripts/bench_system_predict.py --quick          # 4 files
    python scripts/bench_system_predict.py --files 16 --batch-size 8

Builds, in a temporary folder, the demo's system with the ``smol`` presets: WavLM (the tiny preset), the
text LLM (SmolLM2-135M-Instruct, head mode), the audio-LLM (Whisper tiny.en + Q-Former + SmolLM2, the
recipe's speech attention) and the fusion adapter over the three - LoRA, heads, Q-Former and fusion
randomly initialised (the cost does not depend on what was learnt) - runs ``llmser build-system``'s
``build_system`` and loads the folder with ``Predictor.from_pretrained``, as ``llmser predict`` does.
Then it predicts the same files twice in one process: with every LLM member voting over its 5 prompt
variants, and with 1 (``model.voting.variants``). Each run starts from empty instruction caches and
first predicts one file, which computes each variant's instruction (the one-off cost of a run, printed
separately and in ``predict_voting_ratio_with_instructions``), then the files. Transcripts are given,
so Whisper's ASR is not timed. Audio is synthetic (tone plus noise, 2-4 s).

Prints files per second of both runs, each member's share of the time (its batched forward: where the
extra variants' cost lies) and, last, ``predict_voting_ratio: X`` (5 variants / 1 variant, per-file cost
once the run's instructions are cached).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]


def write_audio(folder: Path, n: int, seed: int = 0) -> tuple[list[Path], dict[str, str]]:
    """``n`` synthetic clips of 2-4 s and a transcript for each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    words = ["i cannot believe it", "we won the game today", "please leave me alone", "that is so strange",
             "the meeting starts at ten", "oh no not again"]
    paths, texts = [], {}
    for i in range(n):
        seconds = 2.0 + 2.0 * rng.random()
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.2 * np.sin(2 * np.pi * (120 + 80 * rng.random()) * t) + 0.02 * rng.standard_normal(len(t))
        path = folder / f"clip{i:03d}.wav"
        sf.write(path, wave.astype(np.float32), 16000)
        paths.append(path)
        texts[path.stem] = words[i % len(words)]
    return paths, texts


def recipe_section(name: str) -> dict:
    import yaml

    return yaml.safe_load((ROOT / "adapters" / name).read_text())["model"]


def save_run(root: Path, name: str, model, branch: str, section: dict) -> Path:
    from llmser.config import save_config
    from llmser.recipe import Recipe

    model.save_pretrained(root / name / "best")
    save_config(Recipe(branch=branch, model=section), root / name / "best" / "recipe.yaml")
    return root / name


def random_lora(model) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)


def build(root: Path, speech_attention: str | None) -> Path:
    """The system folder: wavlm + text_llm + audio_llm members and the fusion adapter."""
    from llmser.inference.system import build_system
    from llmser.models.registry import get_branch

    torch.manual_seed(0)
    sections = {"wavlm": recipe_section("wavlm_tiny.yaml"), "text_llm": recipe_section("text_smol.yaml"),
                "audio_llm": recipe_section("audio_smol.yaml")}
    if speech_attention:
        sections["audio_llm"]["speech_attention"] = speech_attention
    models = {}
    for branch, section in sections.items():
        spec = get_branch(branch)
        models[branch] = spec.model_cls.from_config(spec.config_cls(**section))
        random_lora(models[branch])
    sizes = {"wavlm": models["wavlm"].pooling.output_size,
             "text_llm": models["text_llm"].llm.get_base_model().config.hidden_size,
             "audio_llm": models["audio_llm"].speech.queries.shape[-1]}
    fusion_section = {"streams": ["audio_llm", "text_llm", "wavlm"], "hidden": 64, "heads": 2,
                      "head_hidden_size": 64, "stream_sizes": sizes,
                      "sequence_sizes": {"wavlm": models["wavlm"].encoder.config.hidden_size}}
    spec = get_branch("fusion")
    fusion = spec.model_cls(spec.config_cls(**fusion_section))
    runs = {branch: save_run(root, branch, model, branch, sections[branch]) for branch, model in models.items()}
    del models
    fusion_run = save_run(root, "fusion", fusion, "fusion", fusion_section)
    return build_system(root / "system", runs, fusion=fusion_run, method="fusion")


def set_variants(predictor, count: int) -> list[str]:
    """Every LLM member votes with its first ``count`` variants; caches emptied (a fresh run)."""
    from llmser.models.branch import VotesOverPrompts
    from llmser.models.voting import VotingConfig

    used = []
    for member in predictor.members:
        model = member.model
        if isinstance(model, VotesOverPrompts):
            model.config.voting = VotingConfig(variants=model.variant_names[:count], rule=model.config.voting.rule)
            used.append(f"{member.name}: {len(model.voting_variants)}")
            model.prefix_cache.clear()
    return used


def timed_predictor_class():
    """``Predictor`` that adds up the seconds of each member's batched forward (``member_seconds``)."""
    from llmser.inference.predictor import Predictor

    class TimedPredictor(Predictor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.member_seconds: dict[str, float] = {}

        def _forward(self, member, batch):
            start = time.perf_counter()
            out = super()._forward(member, batch)
            self.member_seconds[member.name] = self.member_seconds.get(member.name, 0.0) + time.perf_counter() - start
            return out

    return TimedPredictor


def timed(predictor, paths: list[Path], texts: dict[str, str], batch_size: int) -> tuple[float, object]:
    start = time.perf_counter()
    result = predictor(paths, texts, batch_size=batch_size, progress=False)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--speech-attention", choices=["causal", "isolated"], default=None,
                        help="the audio-LLM's speech attention (default: the audio_smol recipe's)")
    parser.add_argument("--quick", action="store_true", help="4 files in one batch")
    args = parser.parse_args()
    files = 4 if args.quick else args.files
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths, texts = write_audio(root / "audio", files)
        start = time.perf_counter()
        system = build(root / "runs", args.speech_attention)
        predictor = timed_predictor_class().from_pretrained(system)
        print(f"system built and loaded in {time.perf_counter() - start:.1f}s: members "
              f"{', '.join(m.name for m in predictor.members)} + fusion; {files} files, batch {args.batch_size}")
        audio = next(m.model for m in predictor.members if m.branch == "audio_llm")
        print(f"audio-LLM speech attention: {audio.config.speech_attention}")
        set_variants(predictor, 1)
        timed(predictor, paths[:1], texts, 1)  # warm-up: lazy imports and first-call allocations, not timed
        times, once, shares = {}, {}, {}
        for count in (5, 1):
            used = set_variants(predictor, count)
            # The run's one-off cost: each variant's instruction (key/value states) computed on first use.
            once[count], _ = timed(predictor, paths[:1], texts, 1)
            predictor.member_seconds = {}
            seconds, result = timed(predictor, paths, texts, args.batch_size)
            shares[count] = dict(predictor.member_seconds, rest=seconds - sum(predictor.member_seconds.values()))
            times[count] = seconds
            columns = [k for k in result.predictions.extras
                       if any(k.startswith(f"vote_{m.name}_") for m in predictor.members)]
            print(f"{count} variant(s) ({'; '.join(used)}): first file (instructions computed) {once[count]:.2f}s; "
                  f"then {files} files {seconds:.2f}s, {files / seconds:.3f} files/s, "
                  f"{len(columns)} per-variant vote columns")
    for name in shares[1]:
        print(f"  {name:<10} 1 variant {shares[1][name]:.3f}s  5 variants {shares[5][name]:.3f}s  "
              f"(+{shares[5][name] - shares[1][name]:.3f}s)")
    print(f"predict_voting_ratio_with_instructions: {(times[5] + once[5]) / (times[1] + once[1]):.3f} "
          f"(the one-off instruction cost included, {files + 1} files)")
    print(f"files_per_second_1_variant: {files / times[1]:.3f}")
    print(f"files_per_second_5_variants: {files / times[5]:.3f}")
    print(f"predict_voting_ratio: {times[5] / times[1]:.3f}")


if __name__ == "__main__":
    main()
