"""Memory of every phase of an LLM branch's run, not only its training step.

A run trains, evaluates every ``eval_every`` steps, and after training votes over prompt variants on
dev and test (or scores label answers). Each of these holds the weights and the optimizer states (the
optimizer lives for the whole run; gradients are freed by ``zero_grad``) plus its own working memory,
and the run's peak is the largest phase: on an H200 the QLoRA 8-B recipe peaked at 28.5 GiB in the
dev vote while its training step took 16.4 GiB (issue 28). Per phase (``tests/test_phase_memory.py``
measures each on small LLaMA configs and holds these within 10 %)::

    evaluation   a no-grad forward over eval rows x tokens: the largest working set of one layer
    vote         the same over files x K variants after a cached instruction of P tokens, plus every
                 layer's key/value cache (instruction + suffix) the forward keeps, and the 4-D mask
    scoring      a vote that reads logits at the answer positions (full vocabulary, fp32 log-softmax)

Rows per forward are capped by ``data.eval_max_tokens`` exactly as ``llmser.utils.budget`` splits them.
"""

from __future__ import annotations

from typing import Any

from llmser.planning.memory import BF16, FP32, METHODS, LayerDims
from llmser.utils.budget import split_to_budget


def forward_working_bytes(dims: LayerDims, residual: int, lora_up: bool, adapter: int = FP32) -> float:
    """Per token: what a no-grad LLaMA forward holds at its peak, inside one layer's MLP.

    The residual stream is held four times (the embeddings the decoder keeps, the layer's input, the
    residual after attention, its normalised copy), plus RoPE's cos and sin. In the MLP ``down(act(gate)
    * up)``: act and up and their product (3 I); with LoRA on ``up_proj`` peft adds the base result, the
    adapter's scaled output and the sum in the adapter's dtype, and casts the input to it (``residual``:
    bytes of the residual stream: 2 in bf16, 4 after k-bit preparation or in fp32).
    """
    h, inter = dims.hidden, dims.intermediate
    stream = 4 * residual * h + 2 * residual * dims.head_dim
    if not lora_up:
        return stream + 3 * residual * inter
    cast = adapter * h if adapter != residual else 0
    return stream + 2 * residual * inter + 2 * adapter * inter + cast


def backward_working_bytes(dims: LayerDims, residual: int, lora_inputs: list[int]) -> float:
    """Per token, at the start of the backward: the gradient of the top layer's output and of its MLP
    input (in the residual dtype and, through a LoRA adapter on down_proj, in fp32)."""
    h, inter = dims.hidden, dims.intermediate
    adapted = inter in lora_inputs  # down_proj is the one adapted module whose input is I wide
    extra = FP32 if adapted else 0
    return (residual + extra) * h + (residual + extra) * inter


def rows_per_forward(rows: int, row_tokens: int, max_tokens: int | None, group: int = 1) -> int:
    """Rows in the largest forward once ``budget_batches`` has split ``rows`` (``group`` rows per file)."""
    files = split_to_budget(list(range(max(1, rows // group))), lambda g: len(g) * group * row_tokens, max_tokens)
    return len(files[0]) * group


def llm_phases(plan: Any, method: str, gc: bool) -> dict[str, float]:
    """Bytes per phase (overhead included) for one (method, checkpointing) column of an LLM branch plan."""
    from llmser.planning.full_configs import resolve_config

    spec, a = plan.spec, plan.assumptions
    estimate = plan.estimate(method, gc)
    dims = LayerDims.from_config(resolve_config(spec.llm))
    m = METHODS[method]
    residual = FP32 if (m.quantization != "none" and a.kbit_upcast) else BF16
    lora_up = m.adapters and _targets_up(spec.lora_target_modules)
    per_token = forward_working_bytes(dims, residual, lora_up)
    resident = estimate.weights + estimate.optimizer + estimate.overhead
    if m.quantization == "4bit":  # bitsandbytes dequantises one Linear's weight at a time (bf16)
        resident += BF16 * dims.hidden * max(dims.intermediate, dims.hidden)
    tokens = plan.workload.get("llm_tokens", spec.seq_len)
    phases = {"train step": estimate.total}
    rows = rows_per_forward(spec.eval_batch_size, tokens, spec.eval_max_tokens)
    phases["evaluation"] = resident + rows * tokens * per_token
    suffix = max(1, tokens - spec.prefix_tokens) + spec.answer_tokens
    k = max(1, spec.vote_variants)
    vote_rows = rows_per_forward(spec.eval_batch_size * k, suffix, spec.eval_max_tokens, group=k)
    keys = dims.layers * 2 * dims.kv_dim * residual * vote_rows * (spec.prefix_tokens + suffix)
    mask = vote_rows * suffix * (spec.prefix_tokens + suffix)  # the 4-D boolean attention mask
    name = "prompt voting" if (spec.branch == "text_llm" and spec.llm_mode == "head") else "label scoring"
    logits = 0.0
    if name == "label scoring":  # logits at the read positions: model dtype + fp32 log-softmax
        logits = vote_rows * (1 + spec.answer_tokens) * dims.vocab * (BF16 + FP32)
    phases[name] = resident + vote_rows * suffix * per_token + keys + mask + logits
    return phases


def _targets_up(targets: Any) -> bool:
    return isinstance(targets, str) or "up_proj" in targets
