"""``llmser plan``: parameter counts and per-process GPU memory of llmser's full-size systems.

Nothing is downloaded and nothing is allocated: the models are built on the ``meta`` device from
the configs written out in ``llmser.models.presets`` (or a local ``config.json``), so the whole table for
LLaMA-3-8B + Whisper-large-v3 + WavLM-large takes seconds on a laptop::

    llmser plan                                    # all three full-size branches
    llmser plan text-llama3-8b --batch-size 4 --seq-len 1024
    llmser plan audio-llm-full --audio-seconds 15 --gradient-checkpointing
    llmser plan adapters/wavlm_large.yaml --accelerate-config scripts/accelerate/multi_gpu.yaml
    llmser plan text-llama3-8b --accelerate-config scripts/accelerate/fsdp.yaml --json plan.json

The formulas, assumptions and a comparison with published figures are in docs/planning.md.
Heavy imports (torch, transformers, peft) happen inside the functions, so ``--help`` is instant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmser.config import ConfigError

#: Named plans: the shipped full-size recipes (and the CPU demo's), under adapters/, planned with and
#: without gradient checkpointing. ``llmser plan`` (all) plans the first three.
RECIPES: dict[str, str] = {
    "text-llama3-8b": "text_llama3_8b.yaml",
    "audio-llm-full": "audio_llama3_8b.yaml",
    "wavlm-large": "wavlm_large.yaml",
    "text-smollm2-135m": "text_smol.yaml",
    "audio-llm-demo": "audio_smol.yaml",
}
ALL_PRESETS = ["text-llama3-8b", "audio-llm-full", "wavlm-large"]
GPU_SIZES_GIB = (24, 40, 80)
ADAPTERS = Path(__file__).resolve().parents[2] / "adapters"


def _named_plan(name: str) -> Callable[[], Any]:
    def make() -> Any:
        import dataclasses

        path = ADAPTERS / RECIPES[name]
        if not path.is_file():
            raise ConfigError(f"plan {name!r} reads {path}, which is not there (an installed copy without the "
                              "project's adapters/ folder); pass a recipe path instead")
        return dataclasses.replace(spec_from_recipe(path), name=name, gradient_checkpointing=None)

    return make


PRESETS: dict[str, Callable[[], Any]] = {name: _named_plan(name) for name in RECIPES}


# --------------------------------------------------------------------------------------------------
# Recipes


def spec_from_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Any:
    """A PlanSpec from a training recipe and ``overrides`` (``key=value``), read as ``llmser train`` reads them
    (``load_recipe``: every section typed and checked) and turned into a plan by the branch's own plan function
    (``BranchSpec.plan``)."""
    from llmser.models.registry import branch_config, get_branch, load_recipe

    recipe = load_recipe(path, list(overrides))
    spec = get_branch(recipe.branch)
    if spec.plan is None:
        raise ConfigError(f"{path}: branch {recipe.branch!r} has no plan; llmser plan sizes the text_llm, "
                          "audio_llm and wavlm branches (a fusion model is small: plan its members)")
    return spec.plan_fn(recipe, branch_config(recipe), str(path))


def resolve_specs(target: str) -> list[Any]:
    """``all``, a preset name, or a YAML recipe path -> the PlanSpecs to plan."""
    if target == "all":
        return [PRESETS[name]() for name in ALL_PRESETS]
    if target in PRESETS:
        return [PRESETS[target]()]
    path = Path(target)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist; recipes live under adapters/ (e.g. adapters/*.yaml)")
        return [spec_from_recipe(path)]
    import difflib

    close = difflib.get_close_matches(target, ["all", *PRESETS], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{target!r} is neither a preset ({', '.join(['all', *PRESETS])}) nor a YAML recipe path{hint}")


# --------------------------------------------------------------------------------------------------
# Table


def format_params(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)}"


def fits_on(total_bytes: float) -> str:
    """The smallest of the common GPU sizes (24, 40, 80 GB cards have that many GiB) that holds it."""
    from llmser.planning.memory import GIB

    for size in GPU_SIZES_GIB:
        if total_bytes <= size * GIB:
            return f"{size} GB"
    return f"> {GPU_SIZES_GIB[-1]} GB"


def format_plan(plan: Any) -> str:
    """The plan as a plain-text table: parameters per component, then memory per method."""
    from llmser.planning.memory import GIB, METHODS

    spec = plan.spec
    methods = spec.methods
    mark = {m: METHODS[m].label + ("*" if m == spec.method else "") for m in methods}
    lines = [f"== {spec.name}: {spec.branch} branch (* = the recipe's method)"]
    lines.append(f"   per process: {_workload_line(plan)}")
    lora = ("no LoRA (frozen encoder)" if spec.whisper_speech_encoder else
            f"LoRA: r={spec.lora_r}, alpha={spec.lora_alpha}, targets={_targets(spec.lora_target_modules)}")
    lines.append(f"   {lora}; {plan.parallel.describe()}")
    roles = {"body": "", "frozen": " (frozen)", "trained": " (always trained)"}
    names = [c.name + roles[c.role] for c in plan.components]
    name_width = max(len("component"), *(len(n) for n in names)) + 2
    header = f"{'component':<{name_width}}{'params':>10}  {'trained:':<8}" + "".join(f"{mark[m]:>12}" for m in methods)
    lines += ["", header]
    for name, c in zip(names, plan.components):
        lines.append(f"{name:<{name_width}}{format_params(c.counts[methods[0]].total):>10}  {'':<8}"
                     + "".join(f"{format_params(c.counts[m].trained):>12}" for m in methods))
    lines.append(f"{'total':<{name_width}}{format_params(plan.total_params()):>10}  {'':<8}"
                 + "".join(f"{format_params(plan.trained_params(m)):>12}" for m in methods))

    cols = plan.columns
    labels = [mark[m] + ("+GC" if gc else "") for m, gc in cols]
    width = max(11, *(len(label) + 2 for label in labels))
    lines += ["", f"{'GPU memory per process (GiB)':<34}" + "".join(f"{label:>{width}}" for label in labels)]
    rows = [("weights", "weights"), ("gradients", "gradients"),
            ("optimizer (AdamW" + (" + fp32 master)" if plan.assumptions.master_weights else ")"), "optimizer"),
            ("activations", "activations"), ("CUDA context + fragmentation", "overhead"), ("total", "total")]
    for label, key in rows:
        values = [getattr(plan.estimate(m, gc), key) / GIB for m, gc in cols]
        lines.append(f"  {label:<32}" + "".join(f"{v:>{width}.2f}" for v in values))
    lines.append(f"  {'fits on':<32}" + "".join(f"{fits_on(plan.estimate(m, gc).total):>{width}}" for m, gc in cols))
    lines.append("   " + _fit_summary(plan, labels))
    lines += _phase_lines(plan, labels, width)
    lines += _host_lines(plan)
    return "\n".join(lines)


def _host_lines(plan: Any) -> list[str]:
    """Phases that need host (CPU) memory rather than GPU memory: the ridge readout's closed-form fit."""
    from llmser.planning.memory import GIB

    spec, lines = plan.spec, []
    if "ridge readout fit" in plan.host:
        features = plan.workload["readout_features"]
        lines.append(f"   host memory per process, planned: ridge readout fit {plan.host['ridge readout fit'] / GIB:.2f} GiB "
                     f"({spec.train_clips:,} train + {spec.dev_clips:,} dev clips x {features:,} features; "
                     f"--train-clips / --dev-clips give your corpus's counts; model.encoder_layers=last reads "
                     f"one layer's)")
    return lines


def _phase_lines(plan: Any, labels: list[str], width: int) -> list[str]:
    """Each phase's memory (weights + optimizer + its working set + overhead) and the peak phase."""
    from llmser.planning.memory import GIB

    if not plan.phases:
        return []
    cols = plan.columns
    names = list(plan.phases[cols[0]])
    lines = ["", f"{'peak memory per phase (GiB), planned':<34}" + "".join(f"{label:>{width}}" for label in labels)]
    for name in names:
        lines.append(f"  {name:<32}" + "".join(f"{plan.phases[c][name] / GIB:>{width}.2f}" for c in cols))
    spec = plan.spec
    column = next((c for c in cols if c[0] == spec.method), cols[0])
    peak, value = plan.peak_phase(*column)
    lines.append(f"   peak phase ({labels[cols.index(column)]}): {peak}, {value / GIB:.2f} GiB planned "
                 f"(allocated + {plan.assumptions.overhead_gib:g} GiB context/fragmentation margin) -> fits "
                 f"{fits_on(value)}; eval {spec.eval_batch_size} files, token budget "
                 f"{spec.eval_max_tokens or 'none'}, {spec.vote_variants} voting variants")
    return lines


def _targets(targets: Any) -> str:
    return targets if isinstance(targets, str) else ",".join(targets)


def _workload_line(plan: Any) -> str:
    w, spec = plan.workload, plan.spec
    if spec.branch == "text_llm":
        return f"batch {spec.batch_size} x {spec.seq_len} text tokens, bf16"
    if spec.branch == "wavlm" and spec.whisper_speech_encoder:
        return (f"batch {spec.batch_size} x {spec.audio_seconds:g} s of audio (padded to Whisper's "
                f"{w['encoder_window_seconds']:g}-s window) = {w['encoder_frames']} encoder frames, bf16")
    if spec.branch == "wavlm":
        return f"batch {spec.batch_size} x {spec.audio_seconds:g} s of audio = {w['encoder_frames']} WavLM frames, bf16"
    padded = "" if spec.trim_audio_padding else f" (padded to {w['whisper_chunks'] * w['chunk_seconds']:g} s)"
    return (f"batch {spec.batch_size} x {spec.audio_seconds:g} s of audio{padded} -> {w['encoder_frames']} encoder "
            f"frames -> {w['windows']} windows of {w['frames_per_window']} frames -> {w['speech_tokens']} speech "
            f"tokens + {w['text_tokens']} text tokens = {w['llm_tokens']} LLM tokens, bf16")


def _fit_summary(plan: Any, labels: list[str]) -> str:
    groups: dict[str, list[str]] = {}
    for label, (m, gc) in zip(labels, plan.columns):
        groups.setdefault(fits_on(plan.estimate(m, gc).total), []).append(label)
    order = [f"{s} GB" for s in GPU_SIZES_GIB] + [f"> {GPU_SIZES_GIB[-1]} GB"]
    parts = [f"{key}: {', '.join(groups[key])}" for key in order if key in groups]
    return "smallest GPU that fits -> " + " | ".join(parts)


__all__ = ["ALL_PRESETS", "PRESETS", "fits_on", "format_params", "format_plan",
           "resolve_specs", "spec_from_recipe"]
