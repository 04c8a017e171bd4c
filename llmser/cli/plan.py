"""``llmser plan``: parameters and GPU memory per process for full-size models (see ``llmser.planning``).

    llmser plan                                    # all three full-size branches
    llmser plan text-llama3-8b --batch-size 4 --seq-len 1024
    llmser plan adapters/wavlm_large.yaml --accelerate-config scripts/accelerate/multi_gpu.yaml
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from llmser.cli.args import non_negative_float, non_negative_int, positive_float, positive_int
from llmser.config import ConfigError
from llmser.planning import PRESETS, format_plan, resolve_specs


def add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="parameters and GPU memory per process for full-size models (meta device)",
                       description="Build a recipe's models at full size on the meta device (nothing downloaded) "
                                   "and estimate GPU memory for full fine-tuning, LoRA and QLoRA.")
    build_plan_parser(p)
    p.set_defaults(handler=plan_command)


def build_plan_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="llmser plan", description="Parameter counts and per-process GPU memory of llmser's full-size "
                                        "models (built on the meta device: nothing is downloaded or allocated).")
    parser.add_argument("target", nargs="?", default="all",
                        help=f"a YAML recipe, or a preset: all (default), {', '.join(PRESETS)}")
    parser.add_argument("--accelerate-config", default=None,
                        help="accelerate YAML: num_processes and distributed_type (FSDP/DeepSpeed shard, DDP replicates)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="examples per process (default: recipe/preset)")
    parser.add_argument("--seq-len", type=positive_int, default=None, help="text tokens per example (default: recipe/preset)")
    parser.add_argument("--audio-seconds", type=positive_float, default=None, help="seconds of audio per example")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="estimate with (or without) gradient checkpointing only (default: both)")
    parser.add_argument("--lora-r", type=positive_int, default=None, help="LoRA rank (default: recipe/preset, 8)")
    parser.add_argument("--lora-targets", default=None,
                        help="comma-separated LoRA target modules, or all-linear (default: q_proj,v_proj)")
    parser.add_argument("--trim-audio-padding", action="store_true",
                        help="audio-LLM: window only the real audio, not Whisper's 30-s padding")
    parser.add_argument("--no-master-weights", action="store_true",
                        help="pure bf16 training: no fp32 master copy of trained weights (12 instead of 16 B/param)")
    parser.add_argument("--no-kbit-upcast", action="store_true",
                        help="QLoRA: keep non-quantised weights in bf16 (peft's k-bit preparation casts them to fp32)")
    parser.add_argument("--overhead-gib", type=non_negative_float, default=1.0, help="CUDA context + fragmentation (default: 1)")
    parser.add_argument("--train-clips", type=positive_int, default=None,
                        help="train clips the ridge readout's fit reads at once (default: 85,000, MSP-Podcast's scale)")
    parser.add_argument("--dev-clips", type=non_negative_int, default=None,
                        help="dev clips the ridge readout's fit reads at once (default: 30,000)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the plans as JSON")
    return parser


def run_plan(args: argparse.Namespace) -> list[Any]:
    """Build the plans an argparse namespace asks for (see ``build_plan_parser``)."""
    import dataclasses

    from llmser.planning.memory import Assumptions, Parallelism, build_plan

    parallel = Parallelism.from_accelerate_config(args.accelerate_config) if args.accelerate_config else None
    assumptions = Assumptions(master_weights=not args.no_master_weights, kbit_upcast=not args.no_kbit_upcast,
                              overhead_gib=args.overhead_gib)
    overrides = {key: value for key, value in (
        ("batch_size", args.batch_size), ("seq_len", args.seq_len), ("audio_seconds", args.audio_seconds),
        ("gradient_checkpointing", args.gradient_checkpointing), ("lora_r", args.lora_r),
        ("train_clips", args.train_clips), ("dev_clips", args.dev_clips)) if value is not None}
    if args.lora_targets:
        targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
        overrides["lora_target_modules"] = targets[0] if targets == ["all-linear"] else targets
    if args.trim_audio_padding:
        overrides["trim_audio_padding"] = True
    specs = [dataclasses.replace(spec, **overrides) for spec in resolve_specs(args.target)]
    return [build_plan(spec, parallel, assumptions) for spec in specs]


def plan_main(argv: list[str] | None = None) -> int:
    """``llmser plan ...``: print the tables; 0 on success, 2 on a bad recipe / preset / config."""
    return plan_command(build_plan_parser().parse_args(argv))


def plan_command(args: argparse.Namespace) -> int:
    """Run a parsed ``llmser plan`` command line (for a parser made with ``build_plan_parser(subparser)``)."""
    try:
        plans = run_plan(args)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"llmser plan: error: {exc}", file=sys.stderr)
        return 2
    print("\n\n".join(format_plan(plan) for plan in plans))
    if args.json:
        from llmser.utils.io import atomic_write_json

        atomic_write_json(args.json, [plan.to_dict() for plan in plans])
        print(f"\nwrote {args.json}")
    return 0
