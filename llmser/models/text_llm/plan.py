"""The text branch's plan: what ``llmser plan`` sizes for a recipe of this branch (see ``llmser.models.plan``)."""

from __future__ import annotations

from llmser.models.plan import INSTRUCTION_TOKENS, PROMPT_TOKENS, PlanSpec, llm_fields
from llmser.models.text_llm.config import TextLLMBranchConfig
from llmser.recipe import Recipe


def plan_spec(recipe: Recipe, config: TextLLMBranchConfig, name: str) -> PlanSpec:
    """A prompt of ~PROMPT_TOKENS around a transcript cut at ``max_transcript_tokens``; the instruction before
    it is cached once per variant when voting; ``mode`` says whether logits are computed in training."""
    return PlanSpec(name=name, branch="text_llm", **llm_fields(recipe, config), llm_mode=config.mode,
                    seq_len=config.max_transcript_tokens + PROMPT_TOKENS, prefix_tokens=INSTRUCTION_TOKENS)
