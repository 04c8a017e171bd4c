"""``llmser plan``: parameter counts and per-process GPU memory of llmser's full-size systems.

Nothing is downloaded and nothing is allocated: the models are built on the ``meta`` device from
the configs written out in ``full_configs.py`` (or a local ``config.json``), so the whole table for
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

from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmser.config import ConfigError

LLAMA3_8B = "meta-llama/Meta-Llama-3-8B-Instruct"
WHISPER_LARGE_V3 = "openai/whisper-large-v3"
WAVLM_LARGE = "microsoft/wavlm-large"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
WHISPER_TINY_EN = "openai/whisper-tiny.en"
WAVLM_LORA_TARGETS = ["intermediate_dense", "output_dense"]  # as llmser.models.wavlm.config


def _preset(name: str, branch: str, **kwargs: Any) -> Callable[[], Any]:
    def make() -> Any:
        from llmser.planning.memory import PlanSpec

        return PlanSpec(name=name, branch=branch, **kwargs)

    return make


#: name -> the default full-size recipe of a branch (and the CPU demo's small models).
PRESETS: dict[str, Callable[[], Any]] = {
    "text-llama3-8b": _preset("text-llama3-8b", "text_llm", llm=LLAMA3_8B, method="lora", batch_size=8,
                              seq_len=512),
    "audio-llm-full": _preset("audio-llm-full", "audio_llm", llm=LLAMA3_8B, whisper=WHISPER_LARGE_V3,
                              wavlm=WAVLM_LARGE, method="lora", batch_size=8, seq_len=256, audio_seconds=15.0),
    "wavlm-large": _preset("wavlm-large", "wavlm", wavlm=WAVLM_LARGE, method="full", batch_size=16,
                           audio_seconds=15.0, head_hidden_size=1024, lora_target_modules=WAVLM_LORA_TARGETS),
    "text-smollm2-135m": _preset("text-smollm2-135m", "text_llm", llm=SMOLLM2, method="lora", batch_size=8,
                                 seq_len=256),
    "audio-llm-demo": _preset("audio-llm-demo", "audio_llm", llm=SMOLLM2, whisper=WHISPER_TINY_EN,
                              method="lora", batch_size=8, seq_len=128, audio_seconds=6.0),
}
ALL_PRESETS = ["text-llama3-8b", "audio-llm-full", "wavlm-large"]
GPU_SIZES_GIB = (24, 40, 80)


# --------------------------------------------------------------------------------------------------
# Recipes


def spec_from_recipe(path: str | Path) -> Any:
    """A PlanSpec from a training recipe's ``branch:``, ``model:`` and ``data:`` sections.

    Lenient on purpose: other sections and unknown model keys are ignored, so any recipe of any
    branch can be planned. Model keys read: ``encoder``, ``base_model``/``llm``, ``whisper``,
    ``wavlm``, ``quantization``, ``method``/``encoder_mode``, ``lora_r``, ``lora_alpha``,
    ``lora_dropout``, ``lora_target_modules``, Q-Former sizes, head sizes.
    """
    import dataclasses

    from llmser.config import read_yaml

    path = Path(path)
    data = read_yaml(path)  # duplicate keys and aliases refused, like llmser train
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with a branch: and a model: section")
    branch = data.get("branch")
    presets = {"text_llm": "text-llama3-8b", "audio_llm": "audio-llm-full", "wavlm": "wavlm-large"}
    if branch not in presets:
        raise ConfigError(f"{path}: branch {branch!r} is not one of {', '.join(presets)}; set branch: to one of them")
    model = data.get("model") or {}
    data_section = data.get("data") or {}
    train = data.get("train") or {}
    if not isinstance(model, dict) or not isinstance(data_section, dict) or not isinstance(train, dict):
        raise ConfigError(f"{path}: the model:, data: and train: sections must be mappings")
    base = PRESETS[presets[branch]]()
    changes: dict[str, Any] = {"name": str(path)}
    if branch == "wavlm":
        changes["wavlm"] = _speech_encoder_id(str(model.get("encoder", base.wavlm)), path)
        mode = model.get("encoder_mode", "frozen")
        changes["method"] = {"finetune": "full", "frozen": "frozen", "lora": "lora"}.get(mode, mode)
        for key in ("freeze_feature_extractor", "layer_weighting", "pooling_attention_size", "head_hidden_size"):
            if key in model:
                changes[key] = model[key]
        if model.get("window_seconds") is not None:
            changes["encoder_window_seconds"] = float(model["window_seconds"])
    else:
        llm = str(_first(model, ("base_model", "llm", "llm_model", "model_name"), base.llm))
        changes["llm"] = _preset_id(llm, "llm", path)
        changes["method"] = _llm_method(model, base.method)
        if branch == "audio_llm":
            encoder = model.get("encoder")
            whisper = _first(model, ("whisper", "whisper_encoder", "speech_encoder"),
                             encoder if encoder and "wavlm" not in str(encoder).lower() else base.whisper)
            changes["whisper"] = _preset_id(str(whisper), "whisper", path)
            # llmser's recipes name the optional second encoder second_encoder (default none); wavlm /
            # use_wavlm are read too, for recipes written for other SALMONN-style code
            wavlm = _first(model, ("second_encoder", "wavlm", "use_wavlm"), None)
            changes["wavlm"] = WAVLM_LARGE if wavlm is True else (wavlm or None)
            if changes["wavlm"] == "wavlm-tiny":
                changes["wavlm"] = "tiny"  # the random test WavLM, as the speech branch names it
            if _first(model, ("qformer_hidden_size", "qformer_hidden"), None) is None:
                from llmser.planning.full_configs import resolve_config

                changes["qformer_hidden_size"] = resolve_config(changes["whisper"]).d_model  # the branch's default
            if model.get("max_audio_seconds") is not None:  # below 30 s the branch crops Whisper's window too
                changes["encoder_window_seconds"] = float(model["max_audio_seconds"])
            for key, names in (("qformer_layers", ("qformer_layers", "qformer_num_layers")),
                               ("qformer_hidden_size", ("qformer_hidden_size", "qformer_hidden")),
                               ("window_seconds", ("window_seconds", "second_per_window")),
                               ("queries_per_window", ("queries_per_window", "num_query_tokens")),
                               ("trim_audio_padding", ("trim_audio_padding",))):
                value = _first(model, names, None)
                if value is not None:
                    changes[key] = value
    if branch in ("text_llm", "audio_llm") and "lora_target_modules" not in model:
        from llmser.models.llm.config import LLMConfig  # what training would use: the recipe's default

        changes["lora_target_modules"] = LLMConfig().lora_target_modules
        changes["lora_r"] = LLMConfig().lora_r
        changes["lora_alpha"] = LLMConfig().lora_alpha
    for key in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"):
        if key in model:
            changes[key] = model[key]
    if "batch_size" in data_section:
        changes["batch_size"] = int(data_section["batch_size"])
    if "max_seconds" in data_section:
        changes["audio_seconds"] = float(data_section["max_seconds"])
    seq_len = _first(data_section, ("max_length", "max_tokens", "max_seq_length", "seq_len"),
                     _first(model, ("max_length", "max_seq_length"), None))
    if seq_len is not None:
        changes["seq_len"] = int(seq_len)
    gc = _first(train, ("gradient_checkpointing",), _first(model, ("gradient_checkpointing",), None))
    if gc is not None:
        changes["gradient_checkpointing"] = bool(gc)
    if branch in ("text_llm", "audio_llm"):
        changes.update(_phase_fields(path, branch))
    return dataclasses.replace(base, **changes)


#: Tokens of a text prompt around its transcript (system turn, instruction, label list, chat tail): the
#: shipped text_* variants are 300-550 characters, ~150 LLaMA-3 tokens with the chat template.
PROMPT_TOKENS = 160
INSTRUCTION_TOKENS = 140  # of which before the transcript: cached once per variant when voting


def _phase_fields(path: Path, branch: str) -> dict[str, Any]:
    """What the evaluation and voting phases read, from the typed recipe (``load_recipe`` + the branch's
    config dataclass): eval batch and token budget, mode, voting variants, the text prompt's length."""
    from llmser.models.registry import branch_config, load_recipe

    recipe = load_recipe(path)
    config = branch_config(recipe)
    fields: dict[str, Any] = {"eval_batch_size": recipe.data.eval_batch_size,
                              "eval_max_tokens": recipe.data.eval_max_tokens,
                              "vote_variants": len(config.voting.select(list(config.prompts)))}
    whole = getattr(config, "answer_scoring", "first_token") == "whole"
    fields["answer_tokens"] = 3 if whole else 0  # packed answer tokens: label words are 2-4 tokens
    if branch == "text_llm":
        fields.update(llm_mode=config.mode, seq_len=config.max_transcript_tokens + PROMPT_TOKENS,
                      prefix_tokens=INSTRUCTION_TOKENS)
    return fields


def _preset_id(name: str, kind: str, path: Path) -> str:
    """The Hub id an llmser preset name stands for (``smol`` is SmolLM2 as an LLM, Whisper tiny.en as an
    encoder), so recipes written for training plan as they are; other names are returned unchanged."""
    from llmser.models.llm.identity import LLM_PRESETS
    from llmser.models.whisper.loading import WHISPER_PRESETS

    hub_id = (LLM_PRESETS if kind == "llm" else WHISPER_PRESETS).get(name, name)
    if hub_id == "tiny":
        raise ConfigError(f"{path}: {kind} 'tiny' is a random test model; the planner sizes real ones - name a "
                          f"preset (smol, {'llama3-8b' if kind == 'llm' else 'large-v3'}) or a Hub id in model.{kind}")
    return hub_id


def _speech_encoder_id(name: str, path: Path) -> str:
    """The speech branch's encoder as the planner resolves it: its Whisper presets by Hub id."""
    from llmser.models.wavlm.config import WHISPER_ENCODER_PRESETS

    if name in WHISPER_ENCODER_PRESETS:
        return _preset_id(WHISPER_ENCODER_PRESETS[name], "whisper", path)
    return name


def _first(section: dict[str, Any], keys: tuple[str, ...], default: Any) -> Any:
    for key in keys:
        if section.get(key) is not None:
            return section[key]
    return default


def _llm_method(model: dict[str, Any], default: str) -> str:
    from llmser.planning.memory import METHODS

    explicit = _first(model, ("method", "finetuning", "tuning", "train_mode"), None)
    if explicit is not None:
        explicit = {"full_finetune": "full", "finetune": "full", "peft": "lora"}.get(str(explicit), str(explicit))
        if explicit not in METHODS:
            raise ConfigError(f"model.method {explicit!r} is not one of {', '.join(METHODS)}")
        return explicit
    quantization = str(model.get("quantization", "none")).lower()
    if quantization in ("4bit", "nf4", "int4", "qlora"):
        return "qlora"
    if quantization in ("8bit", "int8"):
        return "lora-8bit"
    return default


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
    return "\n".join(lines)


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
