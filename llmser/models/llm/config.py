"""Configs of the LLM branches: which base model, how it is quantised, and its LoRA adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from llmser.models.llm.identity import LLM_PRESETS
from llmser.models.voting import VotingConfig

CONFIG_NAME = "llmser_config.json"  # an LLM branch's config beside its adapter (both branches)

@dataclass
class LLMConfig:
    """The base LLM and its adapter. ``llm`` is a preset (llama3-8b, smol, tiny), a Hub id or a folder."""

    llm: str = field(default="llama3-8b", metadata={"help": "base LLM: a preset (llama3-8b, smol, tiny), a Hub id or a local folder", "presets": tuple(LLM_PRESETS)})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the base LLM"})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(default="auto", metadata={"help": "auto: bf16 on GPUs that have it"})
    quantization: Literal["none", "4bit", "8bit"] = field(default="none", metadata={"help": "4bit = QLoRA (NF4 + double quantisation)"})
    quant_type: Literal["nf4", "fp4"] = field(default="nf4", metadata={"help": "4-bit quantisation type for QLoRA: nf4 or fp4"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank", "min": 1})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)", "gt": 0})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input", "min": 0, "lt": 1})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "modules that get LoRA (names, or all-linear)"})
    # LoRA on the top N decoder layers only (None = all). Backpropagation then stops at the lowest
    # adapted layer, so a CPU/small-GPU step costs little more than a forward pass.
    lora_top_layers: int | None = field(default=None, metadata={"help": "LoRA only on the top N decoder layers (None = all layers)", "min": 1})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward to save memory"})
    # One voting setting for both LLM branches: the test report, collect-outputs and llmser predict all read it.
    voting: VotingConfig = field(default_factory=VotingConfig, metadata={"help": "which prompt variants vote (voting.variants) and how (voting.rule)"})

    def lora_config(self, task_type: str | None = "CAUSAL_LM", num_layers: int | None = None):
        """peft's LoraConfig; ``num_layers`` (the base's depth) is needed when ``lora_top_layers`` is set."""
        from peft import LoraConfig

        layers = None
        if self.lora_top_layers is not None:
            if num_layers is None:
                raise ValueError("lora_top_layers needs the base model's number of layers")
            layers = list(range(max(0, num_layers - self.lora_top_layers), num_layers))
        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=list(self.lora_target_modules), task_type=task_type,
                          layers_to_transform=layers)
