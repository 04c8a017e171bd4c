"""The text-branch model: a LoRA-tuned causal LM reads a prompted transcript; heads read its last state.

``forward`` runs the LLM's decoder (the LoRA layers are inside it) on a left-padded prompt batch and
takes the hidden state of the last token - the position where the model is about to answer - as the
utterance's embedding; ``EmotionHeads`` turn it into 8 class logits and 3 attributes. Skipping the
LM head saves a (B, T, vocab) matmul: 128k columns for LLaMA-3.

With LoRA on the top layers only (``lora_top_layers``), ``forward`` also takes ``lower_hidden``: the
cached states entering the first tuned layer (``llmser.models.llm.layer_cache``); then only the top
layers run, which is the same model (``embed_from_lower(lower_states(x)) == embed(x)``).

Saved layout (``save_pretrained``), a folder that plain peft understands::

    adapter_config.json, adapter_model.safetensors   # standard PEFT LoRA adapter (base = Hub id)
    heads.safetensors                                # the classification/regression heads
    llmser_config.json                               # TextLLMBranchConfig: base, LoRA, prompts
    tokenizer files                                  # the tokenizer it was trained with
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llmser.models.layers import EmotionHeads, EmotionOutput
from llmser.models.llm import layer_cache
from llmser.models.llm.compat import cache_kwargs
from llmser.models.llm.member import LoRAMember
from llmser.models.llm.scoring import prefix_positions
from llmser.models.text_llm.config import TextLLMBranchConfig
from llmser.models.voting import VotedOutput, voted_output
from llmser.utils.logging import get_logger

logger = get_logger(__name__)

HEADS_NAME = "heads.safetensors"


class TextLLMEmotionModel(LoRAMember):
    """LLM + LoRA + emotion heads. Build with ``from_config``; reload with ``from_pretrained`` (``LoRAMember``)."""

    config_cls = TextLLMBranchConfig
    modules_file = HEADS_NAME
    saved_by = "TextLLMEmotionModel"
    branch_kind = ("text_llm", "a text-LLM model")

    def __init__(self, config: TextLLMBranchConfig, llm: Any, tokenizer: Any, base_name: str):
        super().__init__(config, llm, tokenizer, base_name)
        hidden = llm.get_base_model().config.hidden_size
        self.heads = EmotionHeads(hidden, config.head_hidden_size, config.dropout,
                                  classes=config.class_head, attributes=config.attribute_head,
                                  standardize_inputs=config.head_standardize)

    def trained_modules(self) -> nn.Module:
        return self.heads

    @property
    def variant_names(self) -> list[str]:
        return list(self.config.prompts)

    # ------------------------------------------------------------------ forward

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) left-padded prompts -> (B, H) float32 state of each prompt's last token."""
        out = self.decoder()(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=prefix_positions(attention_mask), use_cache=False)
        return out.last_hidden_state[:, -1].float()

    @property
    def cache_split(self) -> int | None:
        """Index of the first LoRA-tuned decoder layer when the layers below are frozen, else None."""
        num_layers = self.llm.get_base_model().config.num_hidden_layers
        return layer_cache.tuned_split(num_layers, self.config.lora_top_layers)

    def lower_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) prompts -> (B, T, H) states entering the first tuned layer: what the cache stores."""
        split = self._require_split()
        return layer_cache.lower_states(self.decoder(), input_ids, attention_mask, split)

    def embed_from_lower(self, lower_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, H) cached states entering the first tuned layer -> (B, H) float32 last-token state."""
        decoder = self.decoder()
        param = next(self.heads.parameters())
        hidden = layer_cache.upper_states(decoder, lower_hidden.to(decoder.embed_tokens.weight.dtype),
                                          attention_mask, self._require_split())
        return hidden[:, -1].to(param.device).float()

    def _require_split(self) -> int:
        split = self.cache_split
        if split is None:
            raise ValueError("cached lower-layer states need LoRA on the top layers only: set model.lora_top_layers "
                             "below the base model's number of layers")
        return split

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                lower_hidden: torch.Tensor | None = None, **_: object) -> EmotionOutput:
        if attention_mask is None:
            raise ValueError("pass the prompts' attention_mask (left-padded batches)")
        if lower_hidden is not None:
            embedding = self.embed_from_lower(lower_hidden, attention_mask)
        elif input_ids is not None:
            embedding = self.embed(input_ids, attention_mask)
        else:
            raise ValueError("pass input_ids (prompts) or lower_hidden (cached states entering the first tuned layer)")
        logits, attributes = self.heads(embedding)
        # fusion reads the standardised state: LayerNorm alone leaves the LLM's massive-activation features dominant
        return EmotionOutput(class_logits=logits, attributes=attributes, embedding=self.heads.standardized(embedding))

    # ------------------------------------------------------------------ voting

    @torch.no_grad()
    def vote_batch(self, vote_input_ids: torch.Tensor, vote_attention_mask: torch.Tensor,
                   vote_prefixes: list[list[int]] | None = None, **_: object) -> VotedOutput:
        """The configured vote on (B*K, T) prompts, row b*K + k = file b through voting variant k, all in one
        forward: the heads read each row, the variants' class probabilities vote, attributes and the
        (standardised) embedding are the variants' means. With ``vote_prefixes`` (each row's instruction
        ids) the rows hold only what follows the instruction, whose states come from ``prefix_cache``:
        computed once per variant for the whole run, not per file."""
        self.eval()
        names = self.voting_variants
        k = len(names)
        if vote_prefixes:  # each variant's instruction from the cache: only transcripts and tails run
            embedding = self._embed_after(vote_prefixes, vote_input_ids, vote_attention_mask)  # (B*K, H)
        else:
            embedding = self.embed(vote_input_ids, vote_attention_mask)  # (B*K, H)
        logits, attributes = self.heads(embedding)
        batch = embedding.shape[0] // k
        if logits is None:
            raise ValueError("voting needs the class head (model.class_head: true)")
        probs = torch.softmax(logits.float(), -1).view(batch, k, -1).transpose(0, 1).cpu().numpy()  # (K, B, 8)
        per_variant = attributes.view(batch, k, -1) if attributes is not None else None  # (B, K, 3)
        pooled = self.heads.standardized(embedding).view(batch, k, -1).mean(1)
        return voted_output(probs, names, self.config.voting.rule,
                            per_variant.mean(1) if per_variant is not None else None, pooled, per_variant)

    def _embed_after(self, prefixes: list[list[int]], input_ids: torch.Tensor, attention_mask: torch.Tensor
                     ) -> torch.Tensor:
        """(N, H) last-token state of prompts = cached instruction ``prefixes[n]`` + left-padded rest (N, T)."""
        cache, prefix_mask = self.prefix_cache.batch(self.llm, prefixes)
        positions = prefix_mask.sum(-1, keepdim=True) + prefix_positions(attention_mask)
        out = self.decoder()(input_ids=input_ids, attention_mask=torch.cat([prefix_mask, attention_mask], dim=1),
                             position_ids=positions, use_cache=True, **cache_kwargs(cache))
        return out.last_hidden_state[:, -1].float()
