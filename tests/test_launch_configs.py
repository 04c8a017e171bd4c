"""Every shipped accelerate config and training recipe parses with the tools that will read it."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = sorted((ROOT / "scripts" / "accelerate").glob("*.yaml"))
RECIPES = sorted((ROOT / "adapters").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_parses_with_accelerate(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes >= 1
    if "cpu" in path.name:
        assert config.mixed_precision == "no" and config.use_cpu in (False, True)
    else:
        assert config.mixed_precision == "bf16", "GPU configs train in bf16"


def test_the_expected_launch_configs_are_shipped():
    names = {p.name for p in ACCELERATE_CONFIGS}
    assert {"cpu_1proc.yaml", "cpu_2proc.yaml", "multi_gpu.yaml", "multi_node.yaml", "fsdp.yaml",
            "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_into_typed_configs(path):
    import yaml

    from llmser.models.registry import BRANCHES, branch_config, load_recipe

    branch = yaml.safe_load(path.read_text())["branch"]
    if branch not in BRANCHES:
        pytest.skip(f"branch {branch!r} is not registered in this checkout")
    recipe = load_recipe(path)
    config = branch_config(recipe)
    assert recipe.train.output_dir and config is not None
