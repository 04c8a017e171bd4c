"""Config of the text branch: the base LLM and adapter (``LLMConfig``) plus how the transcript is read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llmser.config import check_ranges, load_branch_config, save_branch_config
from llmser.models.llm.config import CONFIG_NAME, LLMConfig

DEFAULT_TEXT_PROMPTS = ["text_plain", "text_definitions", "text_shuffled", "text_annotator", "text_short"]


@dataclass
class TextLLMBranchConfig(LLMConfig):
    """The text branch: an LLM reads the transcript through a prompt variant.

    ``mode: head`` trains a classification/regression head on the LLM's last hidden state with the
    engine's losses (weighted CE / focal, 1 - CCC); ``mode: sft`` instruction-tunes the LLM with trl
    to answer with the verbalised label. Training samples one of ``prompts`` per example and epoch;
    the head evaluates with the first, SFT votes over all of them.
    """

    mode: Literal["head", "sft"] = field(default="head", metadata={"help": "head: LoRA + class/attribute heads on the LLM state; sft: instruction tuning with trl"})
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_TEXT_PROMPTS), metadata={"help": "prompt variants (names under prompts/ or YAML files)"})
    prompt_dir: str | None = field(default=None, metadata={"help": "default: the project's prompts/ folder"})
    max_transcript_tokens: int = field(default=128, metadata={"help": "longer transcripts are cut (the prompt itself is never cut)", "min": 1})
    cache_lower_layers: bool = field(default=True, metadata={"help": "head mode with lora_top_layers: cache the states entering the first tuned layer once per (file, prompt variant) and train the top layers on them"})
    calibrate: bool = field(default=False, metadata={"help": "sft: contextual calibration of each variant's votes (llmser.inference.prompting)"})
    answer_scoring: Literal["first_token", "whole"] = field(default="first_token", metadata={"help": "sft: score each label's first token (no answer token runs) or its whole answer (LabelScorer)"})
    head_hidden_size: int = field(default=256, metadata={"help": "hidden size of the heads", "min": 1})
    head_standardize: bool = field(default=True, metadata={"help": "per-feature running standardisation of the LLM state (see FeatureStandardizer)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout of the heads", "min": 0, "lt": 1})
    class_head: bool = field(default=True, metadata={"help": "predict the 8 classes (task 1)"})
    attribute_head: bool = field(default=True, metadata={"help": "predict arousal, valence, dominance (task 2)"})

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.prompts:
            raise ValueError("list at least one prompt variant in model.prompts")
        if self.mode == "head" and not (self.class_head or self.attribute_head):
            raise ValueError("enable at least one of class_head / attribute_head")

    def save(self, directory: str | Path, name: str = CONFIG_NAME) -> None:
        save_branch_config(self, Path(directory) / name, "text_llm")

    @classmethod
    def load(cls, directory: str | Path, name: str = CONFIG_NAME) -> TextLLMBranchConfig:
        return load_branch_config(cls, Path(directory) / name, "text_llm", "a text-LLM model", "a text-LLM model")
