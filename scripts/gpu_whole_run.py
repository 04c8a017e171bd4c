"""The whole-run GPU memory peak of `llmser train RECIPE` at full size, offline, on one GPU (issue 28's "fits 24 GB").

scripts/gpu_checks.py measures each phase (train step, evaluation, vote, generation) in a loop of its own; this
runs the real command - accelerate's prepare, the training steps, the dev evaluation with its prompt vote, the
test report with every variant - in this process, and reads ``torch.cuda.max_memory_allocated`` /
``max_memory_reserved`` after it, with ``nvidia-smi``'s process-level peak polled beside it. The base is the
``llama3-8b`` preset's architecture with random bf16 weights (gpu_checks.build_base); the corpus is written here
in the MSP-Podcast layout (tones for audio, every transcript past the recipe's ``max_transcript_tokens``), so
nothing is downloaded and nothing is carried::

    python scripts/gpu_whole_run.py adapters/text_llama3_8b.yaml        # ~1 min on an H200 after the base is built
    python scripts/gpu_whole_run.py adapters/text_llama3_8b_lora.yaml --work /tmp/w   # reuses the base in /tmp/w
    python scripts/gpu_whole_run.py adapters/text_llama3_8b.yaml --dry-run            # CPU, a 2-layer LLaMA, seconds
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GIB = 1024**3
CLASSES = "ASHUFDCN"
LINE = ("the meeting went on and nobody said what they really felt about it so we kept talking about the game "
        "and the weather and the trip we never took last summer")
WORDS = LINE.split()


def _gpu_checks():
    spec = importlib.util.spec_from_file_location("gpu_checks", ROOT / "scripts" / "gpu_checks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_long_corpus(root: Path, per_class: dict[str, int], words: int) -> Path:
    """A corpus in the MSP-Podcast layout (labels_consensus.csv, Audios/, Transcripts/) whose transcripts run
    to ``words`` words each: the recipe's token caps are what is measured, not the demo's 10-word lines."""
    import soundfile as sf

    (root / "Labels").mkdir(parents=True)
    (root / "Audios").mkdir()
    (root / "Transcripts").mkdir()
    rate, rows, n = 16000, [], 0
    for split, count in per_class.items():
        for cls in CLASSES + "X":  # X: no consensus class (the sampler keeps a share of them)
            for _ in range(count):
                name = f"MSP-PODCAST_{9000 + n // 50:04d}_{n % 50:04d}.wav"
                t = np.arange(rate) / rate
                sf.write(root / "Audios" / name, (0.2 * np.sin(2 * np.pi * (150 + 10 * n) * t)).astype(np.float32), rate)
                text = " ".join((WORDS[n % 7:] + WORDS) * (words // len(WORDS) + 1))
                (root / "Transcripts" / name.replace(".wav", ".txt")).write_text(" ".join(text.split()[:words]))
                rows.append([name, cls, 4.0, 4.0, 4.0, str(n % 6), "Female" if n % 2 else "Male", split])
                n += 1
    with open(root / "Labels" / "labels_consensus.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"])
        writer.writerows(rows)
    return root


class SmiPeak:
    """Polls ``nvidia-smi`` for the GPU's used memory (the process-level peak: context and cache included)."""

    def __init__(self) -> None:
        self.peak_mib, self._stop = 0, threading.Event()

    def __enter__(self) -> SmiPeak:
        threading.Thread(target=self._poll, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.is_set():
            with_cmd = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
            try:
                used = subprocess.run(with_cmd, capture_output=True, text=True, timeout=5).stdout.split()
                self.peak_mib = max(self.peak_mib, int(used[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="a text-branch recipe, e.g. adapters/text_llama3_8b.yaml")
    parser.add_argument("--work", type=Path, help="folder for the base, corpus and run (default: a temporary one); "
                                                  "a base already there is reused")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps (default 6)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, a 2-layer LLaMA, small batches: the same path")
    args = parser.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_whole_run: no CUDA GPU here; run with --dry-run for the CPU version", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="llmser-whole-run-"))
    for old in ("corpus", "run"):
        shutil.rmtree(work / old, ignore_errors=True)
    checks = _gpu_checks()
    base = work / "base"
    start = time.perf_counter()
    if not (base / "config.json").is_file():
        checks.build_base(checks.SHAPES["dry" if args.dry_run else "gpu"], device, base)
    print(f"base ready in {time.perf_counter() - start:.0f}s: {base}", flush=True)
    corpus = write_long_corpus(work / "corpus", {"Train": 4, "Development": 4, "Test1": 4},
                               words=40 if args.dry_run else 400)

    from llmser.cli import main as llmser

    overrides = [f"model.llm={base}", f"data.corpus={corpus}", f"train.max_steps={args.steps}",
                 f"train.eval_every={args.steps}", f"train.save_every={args.steps}", "optim.warmup_steps=0",
                 f"train.output_dir={work / 'run'}"]
    if args.dry_run:
        overrides += ["model.quantization=none", "model.max_transcript_tokens=32", "data.batch_size=2",
                      "data.eval_batch_size=4", "optim.gradient_accumulation_steps=1"]
    print(f"== llmser plan {args.recipe} (the recipe as shipped)", flush=True)
    llmser(["plan", args.recipe])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start, code = time.perf_counter(), 0
    with SmiPeak() as smi:
        try:
            code = llmser(["train", args.recipe, *overrides]) or 0
        except SystemExit as stop:
            code = stop.code
    line = f"RESULT {args.recipe}: exit {code}, {time.perf_counter() - start:.0f}s"
    if device == "cuda":
        line += (f"; max_memory_allocated {torch.cuda.max_memory_allocated() / GIB:.2f} GiB, max_memory_reserved "
                 f"{torch.cuda.max_memory_reserved() / GIB:.2f} GiB, nvidia-smi peak {smi.peak_mib} MiB")
    print(line, flush=True)
    sys.stdout.flush()
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    if device == "cuda":
        os._exit(0 if code == 0 else 1)  # a finished CUDA run can linger on exit (docs/gpu-checks.md)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
