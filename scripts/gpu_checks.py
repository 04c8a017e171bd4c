"""GPU checks of the full-size recipes, offline, on one GPU, written to fit in 10 minutes (issue 28).

Needs only the project and its Python dependencies (bitsandbytes for the QLoRA check): every model is built
here with random weights, nothing is downloaded. A LLaMA-3-8B-shaped ``LlamaForCausalLM`` (the ``llama3-8b``
preset of ``llmser.models.presets``) is built in bf16 directly on the GPU and saved to a temporary folder
with an offline tokenizer (``build_tiny_tokenizer``); the branches' CUDA paths run their ``*_tiny`` recipes
(random WavLM, Whisper and LLaMA presets). One line per check:

- ``cuda_path[<branch>]``: the tiny recipe's model on the device, a forward with backward and an evaluation
  forward through the branch's own prediction data (noise clips);
- ``train[qlora]``, ``train[lora]``: the text_llama3_8b recipes' model (NF4 + LoRA, bf16 + LoRA, gradient
  checkpointing) at the recipe's caps: examples/s over a few steps;
- ``phase[<method>/<phase>]``: peak memory of the train step, evaluation, prompt voting and generation
  (``torch.cuda.max_memory_allocated``, reset per phase; on CPU the peak of live tensor storage) against
  ``llmser plan``'s figure for the same shapes (without its 1 GiB context margin);
- ``scoring[5-vs-1]``: label scoring of 5 prompt variants against 1 (seconds per file, first-token);
- ``scoring[naive-vs-fast]``: the prefix-cached scorer against one forward per (prompt, label) in bf16.

Then a dated row goes to docs/gpu-checks.md (``--docs`` names another file). ``--dry-run`` runs the same
code on the CPU at small shapes in seconds; the test suite runs it (tests/test_gpu_checks.py)::

    python scripts/gpu_checks.py                       # one CUDA GPU (98 s on an H200), appends to docs/gpu-checks.md
    python scripts/gpu_checks.py --dry-run --docs /tmp/gpu-checks.md
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from llmser.models import presets  # noqa: E402
from llmser.models.plan import GENERATION_TOKENS, INSTRUCTION_TOKENS, PROMPT_TOKENS  # noqa: E402

GIB = 1024**3
TINY_RECIPES = {"wavlm": "wavlm_tiny.yaml", "text_llm": "text_tiny.yaml", "audio_llm": "audio_tiny.yaml"}
#: Shapes per mode: the 8-B recipe's caps on a GPU; a 2-layer LLaMA with the same code path on a CPU.
SHAPES = {
    "gpu": dict(llm={}, batch=8, tokens=None, prefix=INSTRUCTION_TOKENS, eval_files=32, eval_max_tokens=4096,
                variants=5, steps=4, score_files=16, transcript=256),
    "dry": dict(llm=dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2),
                batch=2, tokens=64, prefix=24, eval_files=4, eval_max_tokens=None, variants=5, steps=2, score_files=2,
                transcript=16),
}
#: tokens None: the recipe's caps (max_transcript_tokens + the prompt); prefix: instruction tokens cached once
#: per variant when voting, as the planner assumes.


class Report:
    """Prints each check's line as it comes and keeps them for the docs row."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, status: str, name: str, detail: str) -> None:
        line = f"{status} {name}: {detail}"
        self.lines.append(line)
        print(line, flush=True)

    def count(self, status: str) -> int:
        return sum(line.startswith(status + " ") for line in self.lines)

    def check(self, name: str, run: Callable[[], str]) -> None:
        """Run one check; a failure is reported on its line (with the error) and the next check still runs."""
        try:
            self("PASS", name, run())
        except Skip as skip:
            self("SKIP", name, str(skip))
        except Exception as exc:  # noqa: BLE001 - every check reports, none stops the others
            traceback.print_exc(file=sys.stderr)
            self("FAIL", name, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


class Skip(Exception):
    """A check that cannot run here (a missing optional package)."""


# ---------------------------------------------------------------------------------------------- memory


@contextlib.contextmanager
def peak_bytes(device: str, hold: list[torch.Tensor]) -> Iterator[dict[str, int]]:
    """The peak bytes of the block: ``max_memory_allocated`` after a reset on CUDA; on a CPU the peak of live
    tensor storage (``LiveStorage``), the tensors in ``hold`` (weights, optimizer states) counted too."""
    result: dict[str, int] = {}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        yield result
        torch.cuda.synchronize()
        result["peak"] = torch.cuda.max_memory_allocated()
        return
    from llmser.planning.measure import LiveStorage

    with LiveStorage().hold(hold) as mode:
        yield result
    result["peak"] = mode.peak


# ---------------------------------------------------------------------------------------------- models


def build_base(shape: dict[str, Any], device: str, folder: Path) -> Path:
    """The llama3-8b preset's architecture (or the dry run's small one) with random bf16 weights, built on
    ``device`` and saved with an offline tokenizer: a base model folder ``load_causal_lm`` reads."""
    from transformers import LlamaForCausalLM

    from llmser.models.llm.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = presets.from_name("llama3-8b", "llm").to_hf(**shape["llm"], bos_token_id=tokenizer.bos_token_id,
                                                          eos_token_id=tokenizer.eos_token_id,
                                                          pad_token_id=tokenizer.pad_token_id)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    _free(device)
    return folder


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _to(batch: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _loss(out: Any) -> torch.Tensor:
    return out.class_logits.float().logsumexp(-1).mean() + out.attributes.float().square().mean()


# ---------------------------------------------------------------------------------------------- checks


def cuda_path(branch: str, device: str, tmp: Path) -> str:
    """The ``<branch>_tiny`` recipe's model on ``device``: its own prediction data (noise clips with a
    transcript), a forward with backward (finite gradients), then an evaluation forward."""
    import soundfile as sf

    from llmser.data.msp_podcast import Utterance
    from llmser.models.registry import branch_config, get_branch, load_recipe

    recipe = load_recipe(ROOT / "adapters" / TINY_RECIPES[branch])
    spec = get_branch(branch)
    torch.manual_seed(0)
    model = spec.model_cls.from_config(branch_config(recipe)).to(device)
    rng = np.random.default_rng(0)
    utterances = []
    for i, seconds in enumerate((1.0, 1.5)):
        path = tmp / f"{branch}_{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
        utterances.append(Utterance(file_name=path.name, audio_path=path, split="predict", emo_class=None,
                                    arousal=None, valence=None, dominance=None, speaker="", gender="",
                                    transcript=f"this is clip number {i}"))
    dataset, collate = spec.predict_data_fn(model, recipe, utterances)
    batch = _to(collate([dataset[i] for i in range(len(utterances))]), device)
    start = time.perf_counter()
    model.eval()  # dropout off; gradients still flow
    _loss(model(**batch)).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    if not grads or not all(torch.isfinite(g).all() for g in grads):
        raise RuntimeError(f"{len(grads)} gradients, not all finite")
    with torch.no_grad():
        out = model(**batch)
    where = {p.device.type for p in model.parameters()} | {out.class_logits.device.type}
    if where != {torch.device(device).type}:
        raise RuntimeError(f"tensors on {sorted(where)}, expected {device} only")
    return f"{recipe.branch} on {device}: forward + backward ({len(grads)} trained tensors) and eval, " \
           f"{time.perf_counter() - start:.2f}s"


def text_model(folder: Path, method: str, device: str) -> Any:
    """The text_llama3_8b(_lora) recipe's model on the base in ``folder``: mode head, LoRA r 16 on every
    projection, gradient checkpointing; NF4 for qlora."""
    from llmser.models.registry import branch_config, load_recipe
    from llmser.models.text_llm.model import TextLLMEmotionModel

    name = "text_llama3_8b.yaml" if method == "qlora" else "text_llama3_8b_lora.yaml"
    recipe = load_recipe(ROOT / "adapters" / name, [f"model.llm={folder}"])
    config = branch_config(recipe)
    if device == "cpu":  # the CPU has no bf16 autocast; the dry run keeps the recipe's bf16 weights
        config = dataclasses.replace(config, dtype="bfloat16")
    torch.manual_seed(0)
    # The whole model moves, as accelerate's prepare moves it in `llmser train`: under QLoRA the 4-bit LLM is
    # already on the GPU (device_map), but the heads are not (a first GPU run failed on exactly that).
    model = TextLLMEmotionModel.from_config(config).to(device)
    return model, recipe, config


def planned(recipe: Any, config: Any, shape: dict[str, Any], tokens: int, device: str, method: str) -> dict[str, float]:
    """``llmser plan``'s phases for the shapes the check runs (allocated bytes: no context margin)."""
    from llmser.models.registry import get_branch
    from llmser.planning.memory import Assumptions, build_plan

    recipe.data.batch_size, recipe.data.eval_batch_size = shape["batch"], shape["eval_files"]
    recipe.data.eval_max_tokens = shape["eval_max_tokens"]
    spec = get_branch("text_llm").plan_fn(recipe, config, f"gpu check {method}")
    spec = dataclasses.replace(spec, vote_variants=shape["variants"], prefix_tokens=shape["prefix"], seq_len=tokens)
    cpu = device == "cpu"
    assumptions = Assumptions(overhead_gib=0.0, autocast=not cpu, dropout_mask="dtype" if cpu else "bool")
    plan = build_plan(spec, assumptions=assumptions)
    return plan.phases[(spec.method, bool(spec.gradient_checkpointing))]


def train_and_phases(folder: Path, method: str, shape: dict[str, Any], device: str, report: Report) -> str:
    """Training steps (examples/s), then each phase's peak against the plan, each on its own line."""
    from llmser.planning.measure import module_tensors
    from llmser.planning.memory import rows_per_forward

    if method == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise Skip("bitsandbytes is not installed (pip install bitsandbytes)") from None
    model, recipe, config = text_model(folder, method, device)
    tokens = shape["tokens"] or config.max_transcript_tokens + PROMPT_TOKENS
    vocab = model.llm.get_base_model().config.vocab_size
    plan = planned(recipe, config, shape, tokens, device, method)
    where = next(model.parameters()).device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(3, min(vocab, 1000), (shape["batch"], tokens), device=where)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            _loss(model(input_ids=ids, attention_mask=torch.ones_like(ids))).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    step()  # AdamW makes its states in the first step
    start = time.perf_counter()
    for _ in range(shape["steps"] - 1):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    rate = shape["batch"] * (shape["steps"] - 1) / (time.perf_counter() - start)
    measured = {}
    hold = module_tensors(model, optimizer=optimizer)
    with peak_bytes(device, hold) as peak:
        step()
    measured["train step"] = peak["peak"]
    model.eval()
    rows = rows_per_forward(shape["eval_files"], tokens, shape["eval_max_tokens"])
    eval_ids = torch.randint(3, min(vocab, 1000), (rows, tokens), device=where)
    with peak_bytes(device, hold) as peak, torch.no_grad(), autocast:
        model(input_ids=eval_ids, attention_mask=torch.ones_like(eval_ids))
    measured["evaluation"] = peak["peak"]
    k, prefix = shape["variants"], shape["prefix"]
    suffix = tokens - prefix
    vote_rows = rows_per_forward(shape["eval_files"] * k, suffix, shape["eval_max_tokens"], group=k)
    prefixes = [[5 + v] * prefix for v in range(k)] * (vote_rows // k)
    vote_ids = torch.randint(3, min(vocab, 1000), (vote_rows, suffix), device=where)
    with autocast:
        model.vote_batch(vote_ids[:k], torch.ones_like(vote_ids[:k]), prefixes[:k])  # instructions cached once
        with peak_bytes(device, hold) as peak:
            model.vote_batch(vote_ids, torch.ones_like(vote_ids), prefixes)
    measured["prompt voting"] = peak["peak"]
    with peak_bytes(device, hold) as peak, torch.no_grad():
        model.llm.generate(input_ids=eval_ids, attention_mask=torch.ones_like(eval_ids), do_sample=False,
                           max_new_tokens=GENERATION_TOKENS, min_new_tokens=GENERATION_TOKENS, pad_token_id=0)
    measured["generation"] = peak["peak"]
    for phase, value in measured.items():
        ratio = value / plan[phase]
        # On the GPU a phase over its plan by more than 10 % fails (under it is reported). The dry run's
        # 2-layer model is too small for that test (the heads and buffers the planner leaves out are a
        # quarter of it): tests/test_phase_memory.py holds the planner to 10 % on CPU at sizes it models.
        status = "PASS" if device == "cpu" or ratio <= 1.10 else "FAIL"
        note = " (dry run: not held to 10 %)" if device == "cpu" else ""
        report(status, f"phase[{method}/{phase}]", f"measured {value / GIB:.4f} GiB, planned {plan[phase] / GIB:.4f} "
                                                   f"GiB (measured/planned {ratio:.2f}){note}")
    return f"{shape['steps'] - 1} steps of {shape['batch']} x {tokens} tokens: {rate:.2f} examples/s"


def scoring_checks(folder: Path, shape: dict[str, Any], device: str, report: Report) -> None:
    """Label scoring of 5 variants against 1 (first-token, seconds per file) and the fast scorer against
    one forward per (prompt, label), in bf16 on the base in ``folder``."""
    from llmser.models.llm.loading import load_causal_lm
    from llmser.models.llm.prompts import load_prompts
    from llmser.models.llm.scoring import LabelScorer, score_naive
    from llmser.models.text_llm.config import TextLLMBranchConfig

    loaded = load_causal_lm(str(folder), dtype="bfloat16")
    model, tok = loaded.model.to(device).eval(), loaded.tokenizer
    templates = load_prompts(TextLLMBranchConfig().prompts[:5], task="class", inputs="transcript")
    words = ["the", "meeting", "went", "on", "and", "nobody", "said", "what", "they", "really", "felt", "about", "it"]
    texts = [" ".join(words[i % 5:] + words) * max(1, shape["transcript"] // 16) for i in range(shape["score_files"])]

    def per_file(k: int) -> float:
        scorer = LabelScorer(model, tok, answer_scoring="first_token", max_tokens=shape["eval_max_tokens"])
        scorer.variant_probabilities(templates[:k], texts[:1])  # instructions computed once per run, untimed
        start = time.perf_counter()
        scorer.variant_probabilities(templates[:k], texts)
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / len(texts)

    def five_vs_one() -> str:
        one, five = per_file(1), per_file(5)
        return f"{five:.4f} vs {one:.4f} s per file: 5 variants cost {five / one:.2f}x one"

    def naive_vs_fast() -> str:
        """Held in fp32, where the two ways must agree (1e-3); bf16's gap is reported, not held: at the 8-B
        shape with random weights it reached 0.14 (a first GPU run), rounding over 32 layers, not the cache."""
        template = templates[0]
        prompts = [template.render(tok, t) for t in texts[:3]]

        def gap() -> tuple[float, int]:
            fast = LabelScorer(model, tok, answer_scoring="whole").log_likelihoods(prompts, template.candidates)
            naive = score_naive(model, tok, prompts, template.candidates)
            norm = [s - np.logaddexp.reduce(s, axis=1, keepdims=True) for s in (fast, naive)]
            return float(np.abs(norm[0] - norm[1]).max()), int((fast.argmax(1) == naive.argmax(1)).sum())

        bf16, same_bf16 = gap()
        model.float()
        fp32, same = gap()
        if fp32 > 1e-3:
            raise RuntimeError(f"fp32: max |log p fast - log p naive| = {fp32:.2e} > 1e-3 (bf16: {bf16:.3f})")
        return f"{len(prompts)} prompts x {len(template.candidates)} labels: max |log p fast - log p naive| " \
               f"fp32 {fp32:.2e} (same argmax {same}/{len(prompts)}), bf16 {bf16:.2e} (same argmax " \
               f"{same_bf16}/{len(prompts)})"

    report.check("scoring[5-vs-1]", five_vs_one)
    report.check("scoring[naive-vs-fast]", naive_vs_fast)


# ---------------------------------------------------------------------------------------------- docs


def docs_row(report: Report, machine: str, when: datetime.date | None = None) -> str:
    """One row of docs/gpu-checks.md's table: date, machine, the counts and the lines that carry figures."""
    when = when or datetime.date.today()
    figures = [line.split(": ", 1)[0].split(" ", 1)[1] + ": " + line.split(": ", 1)[1]
               for line in report.lines if line.startswith(("PASS train", "PASS scoring", "FAIL", "PASS phase"))]
    summary = f"{report.count('PASS')} pass, {report.count('FAIL')} fail, {report.count('SKIP')} skip"
    text = "; ".join([summary, *figures]).replace("|", "/")
    return f"| {when.isoformat()} (scripts/gpu_checks.py) | {machine} | {text} |"


def append_row(path: Path, row: str) -> None:
    """Put ``row`` first in the results table (``| date | machine | result |``), or start one at the end."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    header = next((i for i, line in enumerate(lines) if line.replace(" ", "") == "|date|machine|result|"), None)
    if header is None:
        lines += ["", "| date | machine | result |", "|---|---|---|", row]
    else:
        lines.insert(header + 2, row)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def machine(device: str) -> str:
    import transformers

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)} ({versions})"
    return f"CPU dry run, small shapes ({versions})"


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, small shapes, seconds: the same code path")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "gpu-checks.md",
                        help="the markdown file the dated row goes to (default: docs/gpu-checks.md)")
    args = parser.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_checks: no CUDA GPU here; run with --dry-run for the CPU version", file=sys.stderr)
        return 2
    shape = SHAPES["dry" if args.dry_run else "gpu"]
    report = Report()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmser-gpu-checks-") as tmp:
        tmp = Path(tmp)
        for branch in ("wavlm", "text_llm", "audio_llm"):
            report.check(f"cuda_path[{branch}]", lambda b=branch: cuda_path(b, device, tmp))
        folder = build_base(shape, device, tmp / "llama3-8b-random")
        for method in ("qlora", "lora"):
            report.check(f"train[{method}]", lambda m=method: train_and_phases(folder, m, shape, device, report))
            _free(device)  # the model of one method is gone before the next loads
        scoring_checks(folder, shape, device, report)
    print(f"{report.count('PASS')} pass, {report.count('FAIL')} fail, {report.count('SKIP')} skip in "
          f"{time.perf_counter() - start:.0f}s", flush=True)
    row = docs_row(report, machine(device))
    append_row(args.docs, row)
    print(f"row added to {args.docs}")
    return 1 if report.count("FAIL") else 0


if __name__ == "__main__":
    sys.exit(main())
