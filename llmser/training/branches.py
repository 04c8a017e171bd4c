"""Registry of trainable branches: a name in a recipe -> its config class and its set-up function.

Adding a branch means adding a folder under ``llmser/models/<name>/`` with ``config.py``,
``model.py`` and ``training.py`` (whose ``prepare`` builds the model and datasets) and one line
here. Entries are import paths so that choosing a branch imports only that branch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BranchSpec:
    name: str
    config: str  # "module:Class" of the branch's model config dataclass
    model: str  # "module:Class" with from_pretrained / save_pretrained
    prepare: str  # "module:function" (recipe, model_config, corpus, accelerator) -> BranchSetup
    predict_data: str | None = None  # "module:function" (model, recipe, utterances) -> (dataset, collate)
    reads_transcripts: bool = False  # prediction needs a transcript per file (Whisper makes one if absent)

    @property
    def config_cls(self) -> type:
        return _load(self.config)

    @property
    def model_cls(self) -> type:
        return _load(self.model)

    @property
    def prepare_fn(self):
        return _load(self.prepare)

    @property
    def predict_data_fn(self):
        if self.predict_data is None:
            raise NotImplementedError(f"branch {self.name!r} cannot predict raw audio files (no predict_data)")
        return _load(self.predict_data)


@dataclass
class BranchSetup:
    """What the engine needs from a branch to train and evaluate it."""

    model: Any
    train_set: Any
    eval_set: Any
    test_set: Any
    collate_fn: Any
    test_utterances: list
    class_counts: list[int] | None = None
    train_labels: list[int] | None = None


BRANCHES: dict[str, BranchSpec] = {
    "wavlm": BranchSpec("wavlm", "llmser.models.wavlm.config:SSLBranchConfig",
                        "llmser.models.wavlm.model:SSLEmotionModel", "llmser.models.wavlm.training:prepare",
                        predict_data="llmser.models.wavlm.training:predict_data"),
    "text_llm": BranchSpec("text_llm", "llmser.models.text_llm.config:TextBranchConfig",
                           "llmser.models.text_llm.model:TextEmotionModel", "llmser.models.text_llm.training:prepare",
                           predict_data="llmser.models.text_llm.training:predict_data", reads_transcripts=True),
    "audio_llm": BranchSpec("audio_llm", "llmser.models.audio_llm.config:AudioLLMConfig",
                            "llmser.models.audio_llm.model:AudioLLMModel", "llmser.models.audio_llm.training:prepare",
                            predict_data="llmser.models.audio_llm.training:predict_data", reads_transcripts=True),
    "fusion": BranchSpec("fusion", "llmser.models.fusion.config:FusionConfig",
                         "llmser.models.fusion.model:FusionModel", "llmser.models.fusion.training:prepare"),
}


def get_branch(name: str) -> BranchSpec:
    try:
        return BRANCHES[name]
    except KeyError:
        raise KeyError(f"branch {name!r} is not known; choose one of {', '.join(BRANCHES)}") from None


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
