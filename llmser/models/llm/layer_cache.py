"""Run a decoder's layers in two parts, and cache what enters the first tuned layer.

With LoRA on the top N layers only (``LLMConfig.lora_top_layers``), the layers below are frozen: their
output for a prompt never changes during training. So the hidden states entering the first tuned
layer are computed once per prompt (``lower_states``), stored (:class:`LayerStateCache`), and every
epoch runs only the top layers on them (``upper_states``). The two halves are the decoder's own
forward split at a layer: the same causal + padding mask (``create_causal_mask``), the same position
ids and rotary embeddings, the same layers and final norm, so ``upper_states(lower_states(x))`` is
numerically the full forward (tests/test_llm_layer_cache.py checks it, padding included).

The cache stores each prompt's real tokens only (T_i, H) in the model's compute dtype; batches are
left-padded again with zeros, which the attention mask hides exactly as it hides pad tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from llmser.models.llm.compat import cache_kwargs, mask_cache_kwargs
from llmser.models.llm.scoring import prefix_positions
from llmser.utils.hashing import hash_weights


def decoder_layers(decoder: nn.Module) -> nn.ModuleList:
    """The decoder's transformer blocks (LLaMA, Mistral, Qwen2 and kin keep them in ``.layers``)."""
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(decoder).__name__} has no .layers ModuleList; layer caching supports "
                        "LLaMA-style decoders (embed_tokens, layers, norm, rotary_emb)")
    return layers


def run_layers(decoder: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int,
               *, final_norm: bool) -> torch.Tensor:
    """Hidden states (B, T, H) entering layer ``start`` -> leaving layer ``stop - 1`` (then the final
    norm if asked), exactly as the decoder's own forward runs them (left padding: positions from the mask)."""
    from transformers.masking_utils import create_causal_mask

    position_ids = prefix_positions(attention_mask)  # (B, T)
    mask = create_causal_mask(config=decoder.config, inputs_embeds=hidden, attention_mask=attention_mask,
                              position_ids=position_ids, **mask_cache_kwargs(None))
    position_embeddings = decoder.rotary_emb(hidden, position_ids=position_ids)  # (cos, sin), each (B, T, d)
    for layer in decoder_layers(decoder)[start:stop]:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings,
                       position_ids=position_ids, use_cache=False, **cache_kwargs(None))
    return decoder.norm(hidden) if final_norm else hidden


@torch.no_grad()
def lower_states(decoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, split: int) -> torch.Tensor:
    """(B, T) left-padded prompts -> (B, T, H) hidden states entering layer ``split`` (no autograd)."""
    return run_layers(decoder, decoder.embed_tokens(input_ids), attention_mask, 0, split, final_norm=False)


def upper_states(decoder: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor, split: int) -> torch.Tensor:
    """(B, T, H) states entering layer ``split`` -> the decoder's ``last_hidden_state`` (B, T, H)."""
    return run_layers(decoder, hidden, attention_mask, split, len(decoder_layers(decoder)), final_norm=True)


def frozen_fingerprint(decoder: nn.Module, split: int) -> str:
    """Id of what the cached states depend on: the embeddings and layers below ``split`` (class, config,
    weights, byte for byte) and ``split`` itself. LoRA on the upper layers does not enter it."""
    digest = hashlib.sha256(f"{type(decoder).__name__}|{split}".encode())
    config = getattr(decoder, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        digest.update(config.to_json_string(use_diff=False).encode())
    parts = {"embed_tokens": decoder.embed_tokens, **{f"layers.{i}": decoder_layers(decoder)[i] for i in range(split)}}
    for prefix, module in parts.items():
        hash_weights(digest, module, prefix=f"{prefix}.")
    return digest.hexdigest()[:16]


class LayerStateCache:
    """Prompt token ids -> the (T, H) states entering the first tuned layer, one safetensors file each.

    Keyed by the exact token ids (template, transcript and tokenizer all enter them) and the frozen
    part's fingerprint, so a changed prompt or base model never reads stale states. Writes are atomic.
    """

    def __init__(self, directory: str | Path, fingerprint: str):
        self.directory = Path(directory) / "llm_states" / fingerprint
        self.fingerprint = fingerprint

    def path_for(self, ids: Sequence[int]) -> Path:
        name = hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()
        return self.directory / name[:2] / f"{name}.safetensors"

    def __contains__(self, ids: Sequence[int]) -> bool:
        return self.path_for(ids).is_file()

    def get(self, ids: Sequence[int]) -> torch.Tensor:
        from safetensors.torch import load_file

        path = self.path_for(ids)
        if not path.is_file():
            raise KeyError(f"no cached LLM states for a prompt of {len(ids)} tokens under {self.directory}; "
                           "fill the cache first (fill_layer_cache)")
        return load_file(str(path))["hidden"]

    def put(self, ids: Sequence[int], hidden: torch.Tensor) -> None:
        from llmser.utils.weights import save_safetensors

        save_safetensors({"hidden": hidden.contiguous()}, self.path_for(ids))


def fill_layer_cache(decoder: nn.Module, prompts: Sequence[Sequence[int]], cache: LayerStateCache, split: int, *,
                     pad_token_id: int, batch_size: int = 8, rank: int = 0, world_size: int = 1,
                     progress: bool = True) -> int:
    """Compute and store the states of every prompt (token ids) not yet cached: this rank's share,
    in length order so batches carry little padding. Returns how many were computed."""
    from tqdm.auto import tqdm

    unique = list(dict.fromkeys(tuple(p) for p in prompts))
    todo = sorted((p for i, p in enumerate(unique) if i % world_size == rank and p not in cache), key=len)
    training = decoder.training
    decoder.eval()
    device = next(decoder.parameters()).device
    for start in tqdm(range(0, len(todo), batch_size), disable=not progress or not todo,
                      desc="caching LLM states", leave=False):
        rows = todo[start: start + batch_size]
        input_ids, attention_mask = left_pad(rows, pad_token_id)
        hidden = lower_states(decoder, input_ids.to(device), attention_mask.to(device), split)  # (B, T, H)
        for i, row in enumerate(rows):
            cache.put(row, hidden[i, hidden.shape[1] - len(row):].cpu())
    decoder.train(training)
    return len(todo)


def left_pad(rows: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows -> left-padded ``input_ids`` and ``attention_mask`` (B, T)."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row):] = 1
    return input_ids, attention_mask


def pad_states(states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached (T_i, H) states -> left-padded (B, T, H) with zeros and the attention mask (B, T)."""
    width = max(s.shape[0] for s in states)
    hidden = states[0].new_zeros(len(states), width, states[0].shape[1])
    attention_mask = torch.zeros(len(states), width, dtype=torch.long)
    for i, s in enumerate(states):
        hidden[i, width - s.shape[0]:] = s
        attention_mask[i, width - s.shape[0]:] = 1
    return hidden, attention_mask


def tuned_split(num_layers: int, lora_top_layers: int | None) -> int | None:
    """Index of the first tuned layer when LoRA sits on the top layers only (None: every layer is tuned)."""
    if lora_top_layers is None or lora_top_layers >= num_layers:
        return None
    return num_layers - lora_top_layers


__all__ = ["LayerStateCache", "fill_layer_cache", "frozen_fingerprint", "left_pad", "lower_states", "pad_states",
           "run_layers", "tuned_split", "upper_states"]
