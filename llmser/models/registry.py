"""The one registry of branches: a name in a recipe or a system manifest -> its config, model and branch module.

The engine (``llmser train``), ``collect-outputs``, ``build-system``, the predictor and the Hub loader
all look branches up here. Adding a branch means adding a folder ``llmser/models/<name>/`` with
``config.py``, ``model.py`` and ``branch.py`` (see ``models/branch.py``) and one
:func:`register_branch` call below. Entries are import paths, so choosing a branch imports only that
branch (``llmser --help`` stays instant); they are checked once, when registered.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmser.config import collect, config_error, from_dict, read_config_data
from llmser.models.branch import Branch, BranchSetup, PredictsAudio
from llmser.recipe import Recipe

_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_MODULE = re.compile(r"^[A-Za-z_][\w.]*$")


@dataclass(frozen=True)
class BranchSpec:
    name: str
    config: str  # "module:Class" of the branch's model config dataclass (the recipe's model: section)
    model: str  # "module:Class" with from_pretrained / save_pretrained
    module: str  # the branch's ``branch.py``: prepare (and predict_data)
    reads_transcripts: bool = False  # prediction needs a transcript per file (Whisper makes one if absent)
    plan: str | None = None  # "module:function": (recipe, typed config, name) -> PlanSpec for llmser plan

    @property
    def config_cls(self) -> type:
        return _load(self.config)

    @property
    def model_cls(self) -> type:
        return _load(self.model)

    @property
    def branch(self) -> Branch:
        module = importlib.import_module(self.module)
        if not isinstance(module, Branch):
            raise TypeError(f"{self.module} does not implement the Branch protocol (a prepare function)")
        return module

    @property
    def prepare_fn(self):
        return self.branch.prepare

    @property
    def plan_fn(self):
        """What ``llmser plan`` sizes for a recipe of this branch, read from its typed config."""
        if self.plan is None:
            raise NotImplementedError(f"branch {self.name!r} has no plan (llmser plan sizes "
                                      f"{', '.join(n for n, s in BRANCHES.items() if s.plan)})")
        return _load(self.plan)

    @property
    def predicts_audio(self) -> bool:
        return isinstance(self.branch, PredictsAudio)

    @property
    def predict_data_fn(self):
        branch = self.branch
        if not isinstance(branch, PredictsAudio):
            raise NotImplementedError(f"branch {self.name!r} cannot predict raw audio files (it has no predict_data)")
        return branch.predict_data


BRANCHES: dict[str, BranchSpec] = {}


def register_branch(spec: BranchSpec) -> BranchSpec:
    """Add ``spec`` to the registry, refusing a duplicate name or a malformed import path."""
    problems = []
    if not re.match(r"^[a-z][a-z0-9_]*$", spec.name):
        problems.append(f"name {spec.name!r} must be lower_snake_case")
    if spec.name in BRANCHES:
        problems.append(f"a branch named {spec.name!r} is already registered ({BRANCHES[spec.name].module})")
    problems += [f"{field} {value!r} is not 'module:Class'" for field, value in
                 (("config", spec.config), ("model", spec.model), ("plan", spec.plan or "m:f"))
                 if not _TARGET.match(value)]
    if not _MODULE.match(spec.module):
        problems.append(f"module {spec.module!r} is not a dotted module path")
    if problems:
        raise ValueError(f"cannot register branch {spec.name!r}: " + "; ".join(problems))
    BRANCHES[spec.name] = spec
    return spec


def get_branch(name: str) -> BranchSpec:
    try:
        return BRANCHES[name]
    except KeyError:
        raise KeyError(_unknown_branch(name)) from None


def _unknown_branch(name: Any) -> str:
    import difflib

    close = difflib.get_close_matches(str(name), list(BRANCHES), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"branch {name!r} is not known; {hint}choose one of {', '.join(BRANCHES)}"


def branch_config(recipe: Recipe) -> Any:
    """The branch's own typed model config, parsed from the recipe's ``model:`` section."""
    spec = get_branch(recipe.branch)
    return from_dict(spec.config_cls, recipe.model, source=f"model section ({recipe.branch})")


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe and validate its branch's model section in the same pass, so every mistake of the
    shared sections and of the model section is reported at once, before anything is built."""
    data = read_config_data(path, overrides)
    recipe, issues = collect(Recipe, data)
    branch = data.get("branch", Recipe.__dataclass_fields__["branch"].default)
    model = data.get("model") or {}
    if not isinstance(branch, str) or branch not in BRANCHES:
        issues.append(_unknown_branch(branch))
    elif isinstance(model, dict):
        issues += collect(BRANCHES[branch].config_cls, model, prefix="model.")[1]
    if issues:
        raise config_error(str(path) if path is not None else "<defaults>", issues)
    return recipe


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


for _spec in (
    BranchSpec("wavlm", "llmser.models.wavlm.config:WavLMBranchConfig", "llmser.models.wavlm.model:WavLMEmotionModel",
               "llmser.models.wavlm.branch", plan="llmser.models.wavlm.plan:plan_spec"),
    BranchSpec("text_llm", "llmser.models.text_llm.config:TextLLMBranchConfig",
               "llmser.models.text_llm.model:TextLLMEmotionModel", "llmser.models.text_llm.branch",
               reads_transcripts=True, plan="llmser.models.text_llm.plan:plan_spec"),
    BranchSpec("audio_llm", "llmser.models.audio_llm.config:AudioLLMBranchConfig",
               "llmser.models.audio_llm.model:AudioLLMEmotionModel", "llmser.models.audio_llm.branch",
               reads_transcripts=True, plan="llmser.models.audio_llm.plan:plan_spec"),
    BranchSpec("fusion", "llmser.models.fusion.config:FusionBranchConfig", "llmser.models.fusion.model:FusionEmotionModel",
               "llmser.models.fusion.branch"),
):
    register_branch(_spec)

__all__ = ["BRANCHES", "BranchSetup", "BranchSpec", "branch_config", "get_branch", "load_recipe", "register_branch"]
