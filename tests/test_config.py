"""Typed configs: YAML + overrides map onto dataclasses; every problem is reported at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from llmser.config import ConfigError, apply_overrides, from_dict, load_config, save_config, to_dict


@dataclass
class Optim:
    lr: float = 1e-3
    schedule: Literal["cosine", "exponential"] = "cosine"
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Recipe:
    name: str
    steps: int = 10
    use_lora: bool = False
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    optim: Optim = field(default_factory=Optim)
    output_dir: Path | None = None


def test_yaml_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: demo\nsteps: 5\noptim:\n  lr: 1e-4\n")
    cfg = load_config(Recipe, recipe, ["optim.schedule=exponential", "use_lora=true", "targets=[q_proj]"])
    assert cfg.name == "demo" and cfg.steps == 5
    assert cfg.optim.lr == pytest.approx(1e-4)  # YAML reads 1e-4 as a string; the loader makes it a float
    assert cfg.optim.schedule == "exponential" and cfg.use_lora is True and cfg.targets == ["q_proj"]
    assert cfg.optim.betas == (0.9, 0.999)


def test_every_problem_reported_with_did_you_mean(tmp_path):
    with pytest.raises(ConfigError) as err:
        from_dict(Recipe, {"stepz": 3, "use_lora": "yes", "optim": {"lr": "fast", "schedule": "linear"}})
    message = str(err.value)
    assert "missing required key 'name'" in message
    assert "unknown key 'stepz'; did you mean 'steps'?" in message
    assert "use_lora: expected true or false" in message
    assert "optim.lr: expected a number" in message
    assert "optim.schedule: 'linear' is not one of 'cosine', 'exponential'" in message
    assert "5 problem(s)" in message


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["steps"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Recipe, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Recipe, bad)


def test_save_round_trip(tmp_path):
    cfg = Recipe(name="x", output_dir=Path("runs/x"))
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(Recipe, tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert again.output_dir == Path("runs/x")
