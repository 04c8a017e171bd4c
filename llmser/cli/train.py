"""``llmser train RECIPE``: train any branch from a YAML recipe (also ``accelerate launch -m llmser train``).

    llmser train adapters/wavlm_tiny.yaml optim.lr=5e-4 train.max_steps=200
    llmser train adapters/wavlm_tiny.yaml --help        # every field of the recipe, its value and its help
    accelerate launch --config_file scripts/accelerate/cpu_2proc.yaml -m llmser train adapters/wavlm_tiny.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a branch from a YAML recipe (one process; see accelerate launch)",
                       description="Train a branch from a recipe under adapters/. For several processes or "
                                   "GPUs: accelerate launch -m llmser train RECIPE [key=value ...]. "
                                   "`llmser train RECIPE --help` lists the recipe's fields.")
    add_train_arguments(p)
    p.set_defaults(handler=run_train)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="YAML recipe (see adapters/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=3e-4 train.max_steps=50")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from a checkpoint folder (default: the latest in output_dir)")


def run_train(args: argparse.Namespace) -> int:
    from llmser.training.run import run

    result = run(args.recipe, args.overrides, args.resume)
    test = result.get("test") or {}
    if test.get("report") or test.get("blind"):  # the main process's result (every process runs this)
        # The select split is what choices are made on; test scores are in the report, read once (docs/protocol.md).
        dev = result.get("dev") or {}
        select = (result.get("splits") or {}).get("data.eval_split", {}).get("split", "none")
        print(f"select split {select} (data.eval_split), best step {result.get('best_step')}: "
              + "  ".join(f"{k} {v:.4f}" for k, v in dev.items()))
        if test.get("blind"):
            print("report split has no labels (blind): submission files " + ", ".join(test["submission"].values()))
        else:
            print(f"report split predicted; report: {test['report']}")
    if result.get("test_fit"):
        print("WARNING: test was used for more than a report (data.allow_test_fit): " + "; ".join(result["test_fit"]))
    return 0


def recipe_help(argv: list[str]) -> str | None:
    """For ``train RECIPE --help``: the usual help plus every field of that recipe; None for anything else."""
    if len(argv) < 3 or argv[0] != "train" or not {"-h", "--help"} & set(argv):
        return None
    recipe_path = next((a for a in argv[1:] if not a.startswith("-") and "=" not in a), None)
    if recipe_path is None or not Path(recipe_path).is_file():
        return None
    from llmser.models.registry import branch_config, load_recipe

    overrides = [a for a in argv[1:] if "=" in a and not a.startswith("-")]
    recipe = load_recipe(recipe_path, overrides)
    usage = argparse.ArgumentParser(prog="llmser train", description="Train a branch from a recipe.")
    add_train_arguments(usage)
    lines = [usage.format_help(), f"Fields of {recipe_path} (branch {recipe.branch}); override any with section.field=value:", ""]
    sections: list[tuple[str, Any]] = [("model", branch_config(recipe))]
    sections += [(f.name, getattr(recipe, f.name)) for f in dataclasses.fields(recipe) if f.name not in ("branch", "model")]
    for name, section in sections:
        lines += describe_fields(section, name)
    return "\n".join(lines)


def describe_fields(config: Any, prefix: str) -> list[str]:
    """One line per leaf field of a config dataclass: dotted name, type, value, and its ``metadata['help']``."""
    lines = []
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(value):
            lines += describe_fields(value, key)
            continue
        hint = hints.get(f.name)
        type_name = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        help_text = f.metadata.get("help", "")
        lines.append(f"  {key} ({type_name}) = {value!r}" + (f"\n      {help_text}" if help_text else ""))
    return lines
