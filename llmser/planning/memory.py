"""Parameter counts and per-process GPU-memory estimates for llmser's full-size models.

Every model is built on the ``meta`` device from the configs in ``llmser.models.presets``: real
transformers classes (``LlamaForCausalLM``, ``WhisperEncoder``, ``WavLMModel``,
``Blip2QFormerModel``) and real peft LoRA adapters, with shapes but no storage, so an 8 B model
costs milliseconds and no memory. Memory is then the sum of these terms (docs/planning.md derives
each one and compares the totals with published figures)::

    weights      bf16 (2 B/param); QLoRA: NF4 (0.5 B + quantisation constants) for the Linear
                 weights of the quantised model, the rest fp32 after peft's k-bit preparation
    gradients    bf16 for trained base weights, fp32 for LoRA adapters (peft keeps them in fp32)
    optimizer    AdamW m and v in fp32 (8 B/param) + an fp32 master copy of bf16-trained weights
    activations  tensors autograd keeps for backward, per layer and token (formulas below,
                 checked against torch's saved-tensor hooks in tests/test_planning.py)
    + overhead   CUDA context, cuBLAS workspace, allocator fragmentation: 1 GiB

With FSDP / ZeRO-3 over N processes the weights, gradients and optimizer states divide by N; DDP
replicates them (and keeps a second copy of the gradients in its all-reduce buckets).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmser.config import ConfigError
from llmser.models import presets
from llmser.models.plan import METHOD_NAMES, PlanSpec
from llmser.utils.budget import split_to_budget

GIB = 1024**3
BF16 = 2
FP32 = 4

# --------------------------------------------------------------------------------------------------
# Quantisation storage (bitsandbytes, as QLoRA uses it)

NF4_BLOCKSIZE = 64  # one absmax per 64 weights (QLoRA paper, section 3)
DOUBLE_QUANT_BLOCKSIZE = 256  # the absmax values are themselves quantised to 8 bit, 256 per fp32 constant


def nf4_bits_per_param(double_quant: bool = True) -> float:
    """Bits per weight of NF4 storage: 4 + the quantisation constants.

    Without double quantisation each block of 64 weights keeps an fp32 absmax: 32/64 = 0.5 bit.
    With it the absmax is stored in 8 bit plus one fp32 constant per 256 blocks:
    8/64 + 32/(64*256) = 0.127 bit (Dettmers et al. 2023, section 3).
    """
    if double_quant:
        return 4 + 8 / NF4_BLOCKSIZE + 32 / (NF4_BLOCKSIZE * DOUBLE_QUANT_BLOCKSIZE)
    return 4 + 32 / NF4_BLOCKSIZE


# --------------------------------------------------------------------------------------------------
# Training methods and assumptions

Quantization = Literal["none", "4bit", "8bit"]


@dataclass(frozen=True)
class Method:
    """How the main body (the LLM, or the WavLM encoder) is trained."""

    name: str
    label: str
    train_base: bool  # every base weight trains (full fine-tuning)
    adapters: bool  # LoRA adapters train, the base is frozen
    quantization: Quantization = "none"  # storage of the frozen base's Linear weights


METHODS: dict[str, Method] = {
    "full": Method("full", "full FT", train_base=True, adapters=False),
    "lora": Method("lora", "LoRA", train_base=False, adapters=True),
    "qlora": Method("qlora", "QLoRA", train_base=False, adapters=True, quantization="4bit"),
    "lora-8bit": Method("lora-8bit", "LoRA int8", train_base=False, adapters=True, quantization="8bit"),
    "frozen": Method("frozen", "frozen", train_base=False, adapters=False),
}
if tuple(METHODS) != METHOD_NAMES:  # the names a PlanSpec accepts (llmser.models.plan)
    raise ImportError(f"planning METHODS {tuple(METHODS)} differ from llmser.models.plan.METHOD_NAMES {METHOD_NAMES}")


@dataclass(frozen=True)
class Assumptions:
    """Choices the estimate depends on; each is stated in docs/planning.md."""

    master_weights: bool = True  # mixed precision keeps an fp32 master copy of bf16-trained weights
    kbit_upcast: bool = True  # peft's prepare_model_for_kbit_training casts non-quantised weights to fp32
    double_quant: bool = True  # QLoRA's double quantisation of the NF4 constants
    dropout_mask: Literal["bool", "dtype"] = "bool"  # CUDA keeps 1-byte masks; CPU keeps input-dtype masks
    autocast: bool = True  # torch.autocast(bf16), as accelerate / trl run mixed precision
    overhead_gib: float = 1.0  # CUDA context + cuBLAS workspace + allocator fragmentation
    ddp_bucket_copy: bool = True  # DDP's gradient buckets (gradient_as_bucket_view=False, the default)

    def mask_bytes(self, element_bytes: int) -> int:
        return 1 if self.dropout_mask == "bool" else element_bytes


# --------------------------------------------------------------------------------------------------
# Parallelism (from an accelerate config)

Strategy = Literal["single", "ddp", "fsdp", "fsdp-grad-op", "zero1", "zero2", "zero3"]


@dataclass(frozen=True)
class Parallelism:
    """What each process holds: replicated (DDP) or sharded (FSDP / DeepSpeed ZeRO) states."""

    strategy: Strategy = "single"
    num_processes: int = 1
    num_machines: int = 1
    hybrid: bool = False  # HYBRID_SHARD: shard within a machine, replicate across machines
    activation_checkpointing: bool | None = None  # fsdp_activation_checkpointing, when the config sets it
    source: str = "one process"

    @property
    def shard_size(self) -> int:
        """Processes one copy of the sharded states is split over."""
        if self.strategy in ("single", "ddp"):
            return 1
        if self.hybrid:
            return max(1, self.num_processes // max(1, self.num_machines))
        return max(1, self.num_processes)

    @property
    def shards_weights(self) -> bool:
        return self.strategy in ("fsdp", "zero3")

    @property
    def shards_gradients(self) -> bool:
        return self.strategy in ("fsdp", "fsdp-grad-op", "zero2", "zero3")

    @property
    def shards_optimizer(self) -> bool:
        return self.strategy in ("fsdp", "fsdp-grad-op", "zero1", "zero2", "zero3")

    def describe(self) -> str:
        if self.strategy == "single":
            return "1 process, nothing sharded"
        parts = [f"{self.strategy} over {self.num_processes} processes"]
        sharded = [name for name, flag in (("weights", self.shards_weights), ("gradients", self.shards_gradients),
                                           ("optimizer states", self.shards_optimizer)) if flag]
        parts.append(f"sharded /{self.shard_size}: {', '.join(sharded)}" if sharded else "all states replicated")
        return "; ".join(parts)

    @classmethod
    def from_accelerate_config(cls, path: str | Path) -> Parallelism:
        """Read ``distributed_type``, ``num_processes`` and the sharding settings of an accelerate YAML."""

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"accelerate config {path} does not exist (see scripts/accelerate/*.yaml)")
        from llmser.config import read_yaml

        data = read_yaml(path) or {}  # duplicate keys and aliases refused
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must be a mapping of accelerate settings")
        kind = str(data.get("distributed_type", "NO")).upper()
        n = int(data.get("num_processes", 1) or 1)
        machines = int(data.get("num_machines", 1) or 1)
        common = dict(num_processes=n, num_machines=machines, source=str(path))
        if kind == "FSDP":
            fsdp = data.get("fsdp_config") or {}
            strategy, hybrid = _fsdp_strategy(fsdp)
            ac = fsdp.get("fsdp_activation_checkpointing")
            return cls(strategy=strategy, hybrid=hybrid, activation_checkpointing=bool(ac) if ac is not None else None,
                       **common)
        if kind == "DEEPSPEED":
            stage = int((data.get("deepspeed_config") or {}).get("zero_stage", 0) or 0)
            strategy = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}.get(stage)
            if strategy is None:
                raise ConfigError(f"{path}: deepspeed_config.zero_stage {stage} is not one of 0, 1, 2, 3")
            return cls(strategy=strategy, **common)
        if kind == "NO" or n <= 1:
            return cls(strategy="single", num_processes=1, source=str(path))
        return cls(strategy="ddp", **common)  # MULTI_GPU / MULTI_CPU / MULTI_XPU ...: data parallel


def _fsdp_strategy(fsdp: dict[str, Any]) -> tuple[Strategy, bool]:
    raw = fsdp.get("fsdp_sharding_strategy")
    if raw is None:  # FSDP2 configs say reshard_after_forward instead
        reshard = fsdp.get("fsdp_reshard_after_forward", True)
        return ("fsdp" if reshard in (True, "true", "True", 1) else "fsdp-grad-op"), False
    name = {1: "FULL_SHARD", 2: "SHARD_GRAD_OP", 3: "NO_SHARD", 4: "HYBRID_SHARD", 5: "HYBRID_SHARD_ZERO2"}.get(
        raw, str(raw).upper())
    table: dict[str, tuple[Strategy, bool]] = {
        "FULL_SHARD": ("fsdp", False), "SHARD_GRAD_OP": ("fsdp-grad-op", False), "NO_SHARD": ("ddp", False),
        "HYBRID_SHARD": ("fsdp", True), "HYBRID_SHARD_ZERO2": ("fsdp-grad-op", True)}
    if name not in table:
        raise ConfigError(f"fsdp_sharding_strategy {raw!r} is not one of {', '.join(table)}")
    return table[name]


# --------------------------------------------------------------------------------------------------
# Parameter counts of meta models


@dataclass(frozen=True)
class ParamCount:
    """One component's parameters under one method, by how each is stored."""

    total: int  # base parameters (adapters excluded)
    trainable: int = 0  # base parameters that train: bf16 + fp32 master + AdamW
    adapter: int = 0  # LoRA parameters: fp32, trained
    frozen: int = 0  # frozen, kept in bf16 (fp32 after k-bit preparation)
    quantized: int = 0  # frozen Linear weights kept in 4 or 8 bit
    quantized_rows: int = 0  # output rows of those weights (int8 keeps one fp32 scale per row)
    quantization: Quantization = "none"

    @property
    def trained(self) -> int:
        return self.trainable + self.adapter


def build_meta(kind: str, config: Any) -> Any:
    """A transformers model with meta tensors: the real class, shapes only, no storage.

    ``kind`` is ``causal_lm``, ``whisper_encoder``, ``speech_encoder`` (WavLM, HuBERT, wav2vec 2.0)
    or ``qformer``.
    """
    import torch

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if kind == "causal_lm":
            from transformers import AutoModelForCausalLM

            return AutoModelForCausalLM.from_config(config)
        if kind == "whisper_encoder":
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            return WhisperEncoder(config)
        if kind == "speech_encoder":
            from transformers import AutoModel

            return AutoModel.from_config(config)
        if kind == "qformer":
            from transformers import Blip2QFormerModel

            return Blip2QFormerModel(config)
    raise ValueError(f"unknown model kind {kind!r}")


def add_lora(model: Any, r: int, alpha: int, dropout: float, targets: list[str] | str,
             layers: list[int] | None = None) -> Any:
    """Inject real peft LoRA adapters (works on meta tensors: peft only reads shapes); ``layers``: the layer
    indices that get them (``LLMConfig.lora_top_layers``), None for all."""
    from peft import LoraConfig, get_peft_model

    if isinstance(targets, str) and targets.lower() in ("all", "all-linear", "all_linear"):
        targets = "all-linear"
    import torch

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        layers_to_transform=layers)
    # Created under the meta device too: otherwise peft allocates (and initialises) real adapter
    # weights on the CPU before moving them next to their meta base layers.
    device = next(model.parameters()).device
    with torch.device(device), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, config)


def lora_param_count(model: Any, r: int, targets: list[str]) -> int:
    """LoRA parameters computed by hand, r * (in + out) per targeted Linear: a cross-check for peft."""
    from torch import nn

    return sum(r * (module.in_features + module.out_features) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets)


def count_parameters(model: Any, quantization: Quantization = "none") -> ParamCount:
    """Sort every parameter into trainable / adapter / frozen / quantised, each counted once.

    Quantised are the frozen Linear weights except the output embedding (lm_head), which
    transformers' bitsandbytes integration keeps in 16 bit.
    """
    from torch import nn

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    seen: set[int] = set()
    total = trainable = adapter = frozen = quantized = rows = 0
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue  # tied weights (SmolLM2's embedding / lm_head) count once
            seen.add(id(param))
            if "lora_" in module_name or name.startswith("lora_"):
                adapter += param.numel()
                continue
            total += param.numel()
            if param.requires_grad:
                trainable += param.numel()
            elif (quantization != "none" and isinstance(module, nn.Linear) and name == "weight"
                  and module is not output):
                quantized += param.numel()
                rows += module.out_features
            else:
                frozen += param.numel()
    return ParamCount(total=total, trainable=trainable, adapter=adapter, frozen=frozen, quantized=quantized,
                      quantized_rows=rows, quantization=quantization)


def set_trainable(model: Any, trainable: bool) -> Any:
    for param in model.parameters():
        param.requires_grad_(trainable)
    return model


def decoder_layers(model: Any) -> Any:
    """The ModuleList of transformer layers (``model.layers``, ``encoder.layers``, ``layer``...)."""
    from torch import nn

    best = None
    for name, module in model.named_modules():
        named_like_layers = name.rsplit(".", 1)[-1] in ("layers", "layer", "h", "blocks")
        if isinstance(module, nn.ModuleList) and named_like_layers and (best is None or len(module) > len(best)):
            best = module
    if best is None:
        raise ValueError(f"{type(model).__name__} has no list of layers the planner recognises")
    return best


def lora_inputs_per_layer(model: Any) -> list[int]:
    """in_features of each LoRA-adapted module in one adapted layer (their fp32 inputs are kept for backward)."""
    for layer in decoder_layers(model):
        found = [module.in_features for module in layer.modules()
                 if hasattr(module, "lora_A") and hasattr(module, "in_features") and len(module.lora_A)]
        if found:
            return found
    return []


# --------------------------------------------------------------------------------------------------
# Weights, gradients and optimizer states


@dataclass
class MemoryEstimate:
    """Bytes per process, by kind; ``total`` adds them up (a conservative peak)."""

    weights: float = 0.0
    gradients: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    overhead: float = 0.0
    detail: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead

    def add(self, other: MemoryEstimate) -> MemoryEstimate:
        merged = dict(self.detail)
        for key, value in other.detail.items():
            merged[key] = merged.get(key, 0.0) + value
        return MemoryEstimate(self.weights + other.weights, self.gradients + other.gradients,
                              self.optimizer + other.optimizer, self.activations + other.activations,
                              self.overhead + other.overhead, merged)

    def as_gib(self) -> dict[str, float]:
        return {key: getattr(self, key) / GIB for key in
                ("weights", "gradients", "optimizer", "activations", "overhead", "total")}


def weight_bytes(count: ParamCount, assumptions: Assumptions) -> float:
    """Bytes to hold a component's weights (trained ones in bf16, adapters in fp32)."""
    # k-bit preparation (peft) casts every non-quantised 16-bit weight of a quantised model to fp32.
    frozen_bytes = FP32 if (count.quantization != "none" and assumptions.kbit_upcast) else BF16
    quant = 0.0
    if count.quantization == "4bit":
        quant = count.quantized * nf4_bits_per_param(assumptions.double_quant) / 8
    elif count.quantization == "8bit":
        quant = count.quantized * 1 + count.quantized_rows * FP32  # LLM.int8: int8 + one fp32 scale per row
    # Autocast keeps a bf16 copy of each fp32 adapter weight from forward to backward.
    adapter = count.adapter * (FP32 + (BF16 if assumptions.autocast else 0))
    return count.trainable * BF16 + adapter + count.frozen * frozen_bytes + quant


def gradient_bytes(count: ParamCount) -> float:
    """Gradients match their parameters' dtype: bf16 for trained base weights, fp32 for adapters."""
    return count.trainable * BF16 + count.adapter * FP32


def optimizer_bytes(count: ParamCount, assumptions: Assumptions) -> float:
    """AdamW keeps m and v in fp32 (8 B/param), plus an fp32 master copy of bf16-trained weights."""
    master = count.trainable * FP32 if assumptions.master_weights else 0
    return count.trained * 2 * FP32 + master


def static_memory(counts: list[ParamCount], parallel: Parallelism, assumptions: Assumptions,
                  gathered_unit_bytes: float = 0.0) -> MemoryEstimate:
    """Weights + gradients + optimizer states of all components, divided where they are sharded."""
    weights = sum(weight_bytes(c, assumptions) for c in counts)
    grads = sum(gradient_bytes(c) for c in counts)
    optim = sum(optimizer_bytes(c, assumptions) for c in counts)
    n = parallel.shard_size
    detail: dict[str, float] = {}
    if parallel.shards_weights:
        weights /= n
        # FSDP / ZeRO-3 all-gather one wrapped layer before it runs and prefetch the next one.
        detail["gathered layers (FSDP/ZeRO-3 prefetch)"] = 2 * gathered_unit_bytes
        weights += 2 * gathered_unit_bytes
    if parallel.shards_gradients:
        grads /= n
    elif parallel.strategy == "ddp" and parallel.num_processes > 1 and assumptions.ddp_bucket_copy:
        detail["DDP gradient buckets"] = grads
        grads *= 2
    if parallel.shards_optimizer:
        optim /= n
    return MemoryEstimate(weights=weights, gradients=grads, optimizer=optim, detail=detail)


# --------------------------------------------------------------------------------------------------
# Activations: bytes autograd keeps per token (LLM) or per frame (speech encoder)
#
# Korthikanti et al. (2022), "Reducing Activation Recomputation in Large Transformer Models", count
# s*b*h*(34 + 5*a*s/h) bytes per GPT layer in 16 bit (LayerNorm, GELU MLP of 4h, dropout, attention
# scores kept). The functions below redo that count tensor by tensor for the layers llmser trains:
# LLaMA (RMSNorm computed in fp32, SwiGLU of width I, grouped-query attention through SDPA, no
# dropout) and WavLM (pre-LN, GELU, dropout, explicit attention with a gated relative position bias).
# tests/test_planning.py checks them against the bytes torch's saved-tensor hooks see.


@dataclass(frozen=True)
class LayerDims:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    vocab: int = 0

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @classmethod
    def from_config(cls, config: Any) -> LayerDims:
        hidden = config.hidden_size
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        return cls(hidden=hidden, intermediate=config.intermediate_size, heads=heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim,
                   layers=config.num_hidden_layers, vocab=getattr(config, "vocab_size", 0) or 0)


def lora_bytes(lora_inputs: list[int], lora_r: int, lora_dropout: float, assumptions: Assumptions) -> float:
    """Per token: what LoRA adapters (fp32, as peft creates them) keep for backward.

    peft casts each adapted module's input to fp32; with ``lora_dropout > 0`` dropout keeps a mask
    of that fp32 tensor. lora_A keeps its input and lora_B its rank-r input: in bf16 under autocast
    (which casts them for the matmul), in fp32 without.
    """
    width = BF16 if assumptions.autocast else FP32
    mask = assumptions.mask_bytes(FP32) if lora_dropout > 0 else 0
    return sum((width + mask) * n_in + width * lora_r for n_in in lora_inputs)


def llama_layer_bytes(dims: LayerDims, *, base_trainable: bool, lora_inputs: list[int] = (), lora_r: int = 8,
                      lora_dropout: float = 0.0, fp32_residual: bool = False,
                      assumptions: Assumptions = Assumptions()) -> float:
    """Bytes one LLaMA decoder layer keeps for backward, per token.

    Full fine-tuning keeps 20h + 4kv + 8I + 4a + 8 bytes: 49 h for LLaMA-3-8B, against Korthikanti's
    34 h for GPT. SwiGLU's 3.5h-wide MLP keeps four tensors and transformers' RMSNorm an fp32 copy of
    its input; the s x s attention term is gone (SDPA's fused kernels keep no score matrix).
    """
    h, inter, kv, a = dims.hidden, dims.intermediate, dims.kv_dim, dims.heads
    total = 0.0
    # Two RMSNorms: the fp32 copy of the input (transformers upcasts), the fp32 1/rms per token, and
    # the normalised bf16 tensor when the norm weight trains.
    total += 2 * (FP32 * h + FP32 + (BF16 * h if base_trainable else 0))
    # SDPA (flash / memory-efficient) keeps q, k, v, its output and the fp32 log-sum-exp per head;
    # o_proj's input is that output (no copy).
    total += BF16 * (h + 2 * kv + h) + FP32 * a
    if base_trainable:
        # Inputs of trainable projections: one tensor for q/k/v, one for gate/up, one for down.
        total += BF16 * (h + h + inter)
    # SwiGLU: silu's input, and silu(gate) and up for the product: three tensors of width I. After
    # peft's k-bit preparation the residual stream is fp32 (fp32 embeddings and norms) and
    # bitsandbytes returns each 4-bit Linear's output in its input's dtype, so these become fp32.
    total += 3 * (FP32 if fp32_residual else BF16) * inter
    return total + lora_bytes(lora_inputs, lora_r, lora_dropout, assumptions)


def llama_outside_bytes(dims: LayerDims, *, base_trainable: bool) -> float:
    """Bytes per token outside the layers: final RMSNorm, lm_head input, logits and the loss.

    Logits count 10 bytes per vocabulary entry: the bf16 logits the model returns (2), the fp32
    log-softmax cross-entropy keeps (4), and the fp32 gradient at the start of backward (4). With
    LLaMA-3's 128,256-token vocabulary this is often larger than all the layers together.
    """
    h = dims.hidden
    norm = FP32 * h + FP32 + (BF16 * h if base_trainable else 0)
    head_input = BF16 * h if base_trainable else 0
    return norm + head_input + 10 * dims.vocab


def wavlm_layer_bytes(dims: LayerDims, frames: int, *, base_trainable: bool, lora_inputs: list[int] = (),
                      lora_r: int = 8, lora_dropout: float = 0.0, dropout: bool = True,
                      assumptions: Assumptions = Assumptions()) -> float:
    """Bytes one WavLM (stable layer norm) encoder layer keeps for backward, per frame.

    On a GPU without autocast (1-byte dropout masks) full fine-tuning gives 44 h + 5 a s + 8 a per
    frame; the 5 a s term is Korthikanti's (softmax output, dropout mask and output of the s x s
    attention). CUDA autocast runs softmax in fp32, which makes it 7 a s.
    """
    h, inter, a = dims.hidden, dims.intermediate, dims.heads
    d = assumptions.mask_bytes(BF16) if dropout else 0
    total = 2 * BF16 * h  # two LayerNorms keep their input (needed whether or not their weights train)
    if base_trainable:
        # F.multi_head_attention_forward keeps separate q/k/v inputs, the relative-position gate
        # projection keeps its input, out_proj and intermediate_dense keep theirs.
        total += BF16 * (3 * h + h + h + h)
    total += 8 * a  # gates of the relative position bias
    total += BF16 * 3 * h  # q and k (scores), v (weighted sum)
    # softmax output (fp32 under CUDA autocast), dropout mask, and the bf16 dropout output
    softmax = FP32 if assumptions.autocast else BF16
    total += (softmax + BF16 + d) * a * frames
    total += d * h  # dropout after attention
    total += BF16 * inter + d * inter  # GELU input, dropout mask
    if base_trainable:
        total += BF16 * inter  # output_dense input (the dropout output)
    total += d * h  # dropout after the feed-forward
    return total + lora_bytes(lora_inputs, lora_r, lora_dropout, assumptions)


def wavlm_outside_bytes(config: Any, frames: int, *, trainable: bool,
                        assumptions: Assumptions = Assumptions()) -> float:
    """Per frame, outside the layers: feature projection, positional conv, the shared position bias."""
    h, c, a = config.hidden_size, config.conv_dim[-1], config.num_attention_heads
    if not trainable:
        return 0.0
    d = assumptions.mask_bytes(BF16)
    return BF16 * 2 * c + (3 * BF16 + d) * h + BF16 * h + BF16 * a * frames


def conv_frames(samples: int, kernels: list[int], strides: list[int]) -> list[int]:
    """Output length of each conv layer of the speech front end (WavLM: 320 samples per frame)."""
    lengths = []
    length = samples
    for kernel, stride in zip(kernels, strides):
        length = max(0, (length - kernel) // stride + 1)
        lengths.append(length)
    return lengths


def conv_extractor_bytes(config: Any, samples: int) -> float:
    """Per example, when the CNN front end trains: conv input, LayerNorm input, GELU input (bf16)."""
    lengths = conv_frames(samples, list(config.conv_kernel), list(config.conv_stride))
    return sum(3 * BF16 * n * dim for n, dim in zip(lengths, config.conv_dim))


def qformer_bytes(config: Any, windows: int, frames_per_window: int) -> float:
    """Per example: the window-level Q-Former (trained), 1 query per window, cross-attention to frames.

    Per layer each encoder frame keeps its cross-attention key and value (bf16, width h_q); each query
    keeps about Korthikanti's 34 h_q bytes. The windowed encoder states (input of the key/value
    projections) are kept once.
    """
    hq, layers = config.hidden_size, config.num_hidden_layers
    frames = windows * frames_per_window
    per_layer = frames * 2 * BF16 * hq + windows * 34 * hq
    return layers * per_layer + frames * BF16 * config.encoder_hidden_size


def whisper_frames_per_chunk(config: Any) -> int:
    """Encoder frames per 30-s input: Whisper pads every input to 3000 mel frames, the conv halves them."""
    return int(config.max_source_positions)


def whisper_chunk_seconds(config: Any) -> float:
    # 2 mel frames (10 ms hop each) per encoder frame
    return config.max_source_positions * 2 * 0.01


def whisper_window(config: Any, window_seconds: float | None = None) -> tuple[float, int]:
    """(seconds, encoder frames) of one Whisper input: its 30-s padded window, or the shorter window it is
    cropped to (``window_seconds``, as llmser's branches do with max_audio_seconds / window_seconds)."""
    seconds, frames = whisper_chunk_seconds(config), whisper_frames_per_chunk(config)
    if window_seconds is not None and window_seconds < seconds:
        return window_seconds, int(round(frames * window_seconds / seconds))
    return seconds, frames


def ceil_div(a: float, b: float) -> int:
    return int(math.ceil(a / b - 1e-9))



# --------------------------------------------------------------------------------------------------
# Plans: a branch's components, each method's memory, for one workload

@dataclass
class Component:
    """One model of a plan, with its parameter counts under each method."""

    name: str
    model_id: str
    role: Literal["body", "frozen", "trained"]  # body follows the method; the others do not
    counts: dict[str, ParamCount]


@dataclass
class Plan:
    spec: PlanSpec
    parallel: Parallelism
    assumptions: Assumptions
    components: list[Component]
    columns: list[tuple[str, bool]]  # (method, gradient checkpointing)
    estimates: dict[tuple[str, bool], MemoryEstimate]
    workload: dict[str, Any]  # derived sizes: speech tokens, frames, LLM tokens...
    phases: dict[tuple[str, bool], dict[str, float]] = field(default_factory=dict)  # (method, gc) -> phase -> bytes
    host: dict[str, float] = field(default_factory=dict)  # phase -> host (CPU) memory bytes, where a phase needs much

    def peak_phase(self, method: str, gradient_checkpointing: bool) -> tuple[str, float]:
        """The phase with the most memory and its bytes (the training step when no other is modelled)."""
        phases = self.phases.get((method, gradient_checkpointing)) or {
            "train step": self.estimate(method, gradient_checkpointing).total}
        name = max(phases, key=phases.get)
        return name, phases[name]

    def estimate(self, method: str, gradient_checkpointing: bool) -> MemoryEstimate:
        return self.estimates[(method, gradient_checkpointing)]

    def total_params(self) -> int:
        return sum(c.counts[self.spec.methods[0]].total for c in self.components)

    def trained_params(self, method: str) -> int:
        return sum(c.counts[method].trained for c in self.components)

    def to_dict(self) -> dict[str, Any]:
        from llmser.config import to_dict

        return {
            "spec": to_dict(self.spec),
            "parallelism": {"strategy": self.parallel.strategy, "num_processes": self.parallel.num_processes,
                            "shard_size": self.parallel.shard_size, "source": self.parallel.source},
            "assumptions": to_dict(self.assumptions),
            "workload": self.workload,
            "components": [{"name": c.name, "model": c.model_id, "role": c.role,
                            "total_params": c.counts[self.spec.methods[0]].total,
                            "trained_params": {m: c.counts[m].trained for m in self.spec.methods}}
                           for c in self.components],
            "memory_gib": {f"{m}{'+gc' if gc else ''}": self.estimates[(m, gc)].as_gib()
                           for m, gc in self.columns},
        }


def build_plan(spec: PlanSpec, parallel: Parallelism | None = None,
               assumptions: Assumptions | None = None) -> Plan:
    """Count every component's parameters on meta models and estimate each method's memory."""
    parallel = parallel or Parallelism()
    assumptions = assumptions or Assumptions()
    builder = {"text_llm": _llm_branch, "audio_llm": _audio_llm_branch, "wavlm": _wavlm_branch}[spec.branch]
    components, activations, workload, unit = builder(spec, assumptions)
    # The CLI / recipe decides; else an FSDP config that turns activation checkpointing on; else both.
    if spec.gradient_checkpointing is not None:
        gc_options = [spec.gradient_checkpointing]
    else:
        gc_options = [True] if parallel.activation_checkpointing else [False, True]
    # A frozen body has no backward through it, so checkpointing changes nothing: one column.
    columns = [(method, gc) for method in spec.methods for gc in gc_options
               if not (method == "frozen" and gc and len(gc_options) > 1)]
    estimates = {}
    for method, gc in columns:
        counts = [c.counts[method] for c in components]
        estimate = static_memory(counts, parallel, assumptions, gathered_unit_bytes=unit[method])
        detail = activations(method, gc)
        estimate.activations = sum(detail.values())
        estimate.detail.update({f"activations: {k}": v for k, v in detail.items()})
        estimate.overhead = assumptions.overhead_gib * GIB
        estimates[(method, gc)] = estimate
    plan = Plan(spec, parallel, assumptions, components, columns, estimates, workload)
    if spec.branch in ("text_llm", "audio_llm"):
        for method, gc in columns:
            plan.phases[(method, gc)] = llm_phases(plan, method, gc)
    if "readout_features" in workload:
        from llmser.models.readout import RidgeReadout

        plan.host["ridge readout fit"] = RidgeReadout.fit_bytes(spec.train_clips, spec.dev_clips,
                                                                workload["readout_features"])["total"]
    return plan


# -- branch builders: (components, activations(method, gc) -> {part: bytes}, workload, gathered unit bytes)


def _llm_body(spec: PlanSpec) -> tuple[Component, dict[str, list[int]], Any, dict[str, float]]:
    """The LLM under each method: counts, LoRA inputs per layer, and one layer's bytes for FSDP."""
    config = presets.resolve_config(spec.llm, "llm")
    counts: dict[str, ParamCount] = {}
    lora_inputs: dict[str, list[int]] = {}
    unit: dict[str, float] = {}
    for name in spec.methods:
        method = METHODS[name]
        model = build_meta("causal_lm", config)
        if method.adapters:
            set_trainable(model, False)
            model = add_lora(model, spec.lora_r, spec.lora_alpha, spec.lora_dropout, spec.lora_target_modules,
                             spec.lora_layers)
            lora_inputs[name] = lora_inputs_per_layer(model)
        else:
            set_trainable(model, method.train_base)
            lora_inputs[name] = []
        counts[name] = count_parameters(model, method.quantization)
        layer_params = sum(p.numel() for p in decoder_layers(model)[0].parameters())
        per_param = nf4_bits_per_param() / 8 if method.quantization == "4bit" else BF16
        unit[name] = layer_params * per_param
    label = getattr(config, "_name_or_path", "") or spec.llm
    return Component(f"LLM ({_short(spec.llm)})", label or spec.llm, "body", counts), lora_inputs, config, unit


def _llm_activations(spec: PlanSpec, config: Any, lora_inputs: dict[str, list[int]], assumptions: Assumptions,
                     method: str, gc: bool, tokens: int) -> dict[str, float]:
    dims = LayerDims.from_config(config)
    m = METHODS[method]
    fp32_residual = m.quantization != "none" and assumptions.kbit_upcast
    per_layer = llama_layer_bytes(dims, base_trainable=m.train_base, lora_inputs=lora_inputs[method],
                                  lora_r=spec.lora_r, lora_dropout=spec.lora_dropout, fp32_residual=fp32_residual,
                                  assumptions=assumptions)
    n = tokens * spec.batch_size
    depth = _layers_in_backward(spec, m, dims.layers)
    if gc:
        # Checkpointing keeps each layer's input (the residual stream) and recomputes one layer at a time.
        residual = FP32 if fp32_residual else BF16
        layers = (depth * residual * dims.hidden + per_layer) * n
    else:
        layers = depth * per_layer * n
    if spec.llm_mode == "head":
        # The heads read the last hidden state: no LM head runs. The final norm keeps its fp32 input, and
        # the backward of the top layer works on the gradient of the residual stream and of the MLP.
        residual = FP32 if fp32_residual else BF16
        outside = (FP32 * dims.hidden + FP32 + backward_working_bytes(dims, residual, lora_inputs[method])) * n
        return {"LLM layers": layers, "LLM final norm + backward working set": outside}
    outside = llama_outside_bytes(dims, base_trainable=m.train_base) * n
    return {"LLM layers": layers, "LLM logits + loss": outside}


def _layers_in_backward(spec: PlanSpec, method: Method, layers: int) -> int:
    """Layers autograd keeps tensors for: with LoRA on the top layers only (``lora_top_layers``) the text
    branch's backward stops at the lowest adapted one (nothing below needs a gradient); the audio-LLM's
    trained Q-Former feeds the first layer, so its backward runs through all of them."""
    if method.train_base or not method.adapters or not spec.lora_layers or spec.branch != "text_llm":
        return layers
    return layers - min(spec.lora_layers)


def _llm_branch(spec: PlanSpec, assumptions: Assumptions):
    body, lora_inputs, config, unit = _llm_body(spec)

    def activations(method: str, gc: bool) -> dict[str, float]:
        return _llm_activations(spec, config, lora_inputs, assumptions, method, gc, spec.seq_len)

    workload = {"llm_tokens": spec.seq_len, "batch_size": spec.batch_size}
    return [body], activations, workload, unit


def _frozen_component(name: str, model_id: str, model: Any) -> Component:
    set_trainable(model, False)
    count = count_parameters(model)
    return Component(name, model_id, "frozen", {m: count for m in METHODS})


def _trained_component(name: str, model_id: str, n_params: int) -> Component:
    count = ParamCount(total=n_params, trainable=n_params)
    return Component(name, model_id, "trained", {m: count for m in METHODS})


def _audio_llm_branch(spec: PlanSpec, assumptions: Assumptions):
    whisper_cfg = presets.resolve_config(spec.whisper, "whisper")
    components = [_frozen_component(f"Whisper encoder ({_short(spec.whisper)})", spec.whisper,
                                    build_meta("whisper_encoder", whisper_cfg))]
    encoder_dim = whisper_cfg.d_model
    wavlm_cfg = None
    if spec.wavlm:
        wavlm_cfg = presets.resolve_config(spec.wavlm, "speech")
        components.append(_frozen_component(f"WavLM encoder ({_short(spec.wavlm)})", spec.wavlm,
                                            build_meta("speech_encoder", wavlm_cfg)))
        encoder_dim += wavlm_cfg.hidden_size  # frame-aligned concatenation (both 50 frames/s)
    q_cfg = presets.from_name("window-qformer", "qformer").to_hf(
        num_hidden_layers=spec.qformer_layers, hidden_size=spec.qformer_hidden_size,
        num_attention_heads=spec.qformer_heads, intermediate_size=spec.qformer_intermediate,
        encoder_hidden_size=encoder_dim)
    qformer = build_meta("qformer", q_cfg)
    # + the learned query (one per window) and SALMONN's LayerNorm on the encoder output
    q_params = sum(p.numel() for p in qformer.parameters()) + spec.queries_per_window * q_cfg.hidden_size \
        + 2 * encoder_dim
    components.append(_trained_component(f"window Q-Former ({spec.qformer_layers} layers, {q_cfg.hidden_size})",
                                         "transformers Blip2QFormerModel", q_params))
    body, lora_inputs, llm_cfg, unit = _llm_body(spec)
    proj = q_cfg.hidden_size * llm_cfg.hidden_size + llm_cfg.hidden_size
    components.append(_trained_component(f"projection {q_cfg.hidden_size} -> {llm_cfg.hidden_size}",
                                         "nn.Linear", proj))
    # the ridge readout reads the clip means of every Whisper state, beside the second encoder's (as the model builds it)
    readout_features = (spec.encoder_hidden_states * whisper_cfg.d_model + encoder_dim - whisper_cfg.d_model
                        if spec.llm_mode == "head" and spec.ridge_readout else None)
    if spec.llm_mode == "head":
        components.append(_speech_llm_heads_component(spec, encoder_dim, llm_cfg.hidden_size, readout_features))
    components.append(body)

    # seconds of audio -> Whisper frames (50/s, every input padded to 30 s, or to a cropped window) -> windows
    chunk_s, frames_per_chunk = whisper_window(whisper_cfg, spec.encoder_window_seconds)
    chunks = max(1, ceil_div(spec.audio_seconds, chunk_s))
    kernel = max(1, round(frames_per_chunk * spec.window_seconds / chunk_s))
    if spec.trim_audio_padding:
        real_frames = ceil_div(spec.audio_seconds * frames_per_chunk, chunk_s)
        windows = ceil_div(real_frames, kernel)
    else:
        windows = chunks * ((frames_per_chunk - kernel) // kernel + 1)  # SALMONN's unfold, stride = kernel
    speech_tokens = windows * spec.queries_per_window
    llm_tokens = speech_tokens + spec.seq_len
    frames = chunks * frames_per_chunk
    workload = {"batch_size": spec.batch_size, "audio_seconds": spec.audio_seconds, "whisper_chunks": chunks,
                "encoder_width": encoder_dim,
                "chunk_seconds": chunk_s,
                "encoder_frames": frames, "frames_per_window": kernel, "windows": windows,
                "speech_tokens": speech_tokens, "text_tokens": spec.seq_len, "llm_tokens": llm_tokens}
    if readout_features is not None:
        workload["readout_features"] = readout_features

    def activations(method: str, gc: bool) -> dict[str, float]:
        b = spec.batch_size
        # The frozen encoders run without autograd: only their outputs stay, plus the speech
        # LayerNorm's output (its input is the encoders' output). With every Whisper hidden state per frame
        # (encoder_layers: all) the batch holds all of them and the layer weighting keeps its stacked copy.
        states = spec.encoder_hidden_states
        encoders = b * frames * BF16 * encoder_dim * (2 + (2 * states if states > 1 else 0))
        qf = b * (qformer_bytes(q_cfg, windows, kernel) + windows * spec.queries_per_window * BF16 * q_cfg.hidden_size)
        parts = {"speech encoder outputs": encoders, "Q-Former + projection": qf}
        parts.update(_llm_activations(spec, llm_cfg, lora_inputs, assumptions, method, gc, llm_tokens))
        return parts

    return components, activations, workload, unit


def _speech_llm_heads_component(spec: PlanSpec, speech_size: int, llm_size: int,
                                readout_features: int | None) -> Component:
    """The audio-LLM's head mode: the speech head on attentively pooled frames and the LLM-state head."""
    import torch

    from llmser.models.audio_llm.heads import SpeechLLMHeads
    from llmser.models.layers import LayerWeightedSum

    with torch.device("meta"):
        heads = SpeechLLMHeads(speech_size, llm_size, spec.head_hidden_size, 0.0, True, spec.pooling_attention_size,
                               readout_features)  # the readout is buffers, not trained
        weights = LayerWeightedSum(spec.encoder_hidden_states) if spec.encoder_hidden_states > 1 else None
    n = sum(p.numel() for m in (heads, weights) if m is not None for p in m.parameters())
    if not spec.freeze_speech_head:
        return _trained_component("layer weights + speech/LLM-state heads (head mode)", "llmser.models.audio_llm.heads", n)
    # freeze_speech_head: the LLM steps (the training step planned) train the LLM-state head alone; the speech
    # head, its pooling and the layer weights learned in stage 1 and hold still
    trained = sum(p.numel() for p in heads.llm.parameters())
    count = ParamCount(total=n, trainable=trained, frozen=n - trained)
    return Component("layer weights + speech/LLM-state heads (head mode; speech side frozen after stage 1)",
                     "llmser.models.audio_llm.heads", "trained", {m: count for m in METHODS})


def _speech_heads_component(spec: PlanSpec, hidden: int, layers: int) -> Component:
    """The speech branch's trained part: layer weights, attentive statistics pooling, heads."""
    import torch

    from llmser.models.layers import AttentiveStatisticsPooling, EmotionHeads, LayerWeightedSum

    with torch.device("meta"):
        heads = [LayerWeightedSum(layers + 1)] if spec.layer_weighting else []
        pooling = AttentiveStatisticsPooling(hidden, spec.pooling_attention_size)
        heads += [pooling, EmotionHeads(pooling.output_size, spec.head_hidden_size)]
    return _trained_component("layer weights + pooling + heads", "llmser.models.layers",
                              sum(p.numel() for m in heads for p in m.parameters()))


def _speech_heads_bytes(spec: PlanSpec, hidden: int, n: int, hidden_states: float) -> float:
    """Activations of the layer weighting and pooling over ``n`` frames: the stacked copy of the encoder's
    hidden states the weighted sum keeps, and attentive pooling's tensors."""
    stack = hidden_states if spec.layer_weighting else 0
    return stack + n * (3 * BF16 * hidden + 2 * BF16 * spec.pooling_attention_size)


def _whisper_speech_branch(spec: PlanSpec, config: Any):
    """The speech branch on a frozen Whisper encoder: it runs once per file without autograd (features
    cached), over its padded input window; the layer weights, pooling and heads train on its hidden states."""
    encoder = build_meta("whisper_encoder", config)
    components = [_frozen_component(f"Whisper encoder ({_short(spec.wavlm)})", spec.wavlm, encoder),
                  _speech_heads_component(spec, config.d_model, config.encoder_layers)]
    window, frames = whisper_window(config, spec.encoder_window_seconds)
    workload = {"batch_size": spec.batch_size, "audio_seconds": spec.audio_seconds, "encoder_window_seconds": window,
                "encoder_frames": frames}
    unit = {"frozen": sum(p.numel() for p in encoder.layers[0].parameters()) * BF16}

    def activations(method: str, gc: bool) -> dict[str, float]:
        n = spec.batch_size * frames
        hidden_states = (config.encoder_layers + 1) * BF16 * config.d_model * n  # all layers, for the weighting
        return {"encoder hidden states": hidden_states,
                "layer weighting + pooling": _speech_heads_bytes(spec, config.d_model, n, hidden_states)}

    return components, activations, workload, unit


def _wavlm_branch(spec: PlanSpec, assumptions: Assumptions):
    config = presets.resolve_config(spec.wavlm, "whisper" if spec.whisper_speech_encoder else "speech")
    if spec.whisper_speech_encoder:
        return _whisper_speech_branch(spec, config)
    counts: dict[str, ParamCount] = {}
    lora_inputs: dict[str, list[int]] = {}
    unit: dict[str, float] = {}
    for name in spec.methods:
        method = METHODS[name]
        model = build_meta("speech_encoder", config)
        set_trainable(model, method.train_base)
        if method.train_base and spec.freeze_feature_extractor and hasattr(model, "freeze_feature_encoder"):
            model.freeze_feature_encoder()
        lora_inputs[name] = []
        if method.adapters:
            model = add_lora(model, spec.lora_r, spec.lora_alpha, spec.lora_dropout, spec.lora_target_modules)
            lora_inputs[name] = lora_inputs_per_layer(model)
        counts[name] = count_parameters(model)
        unit[name] = sum(p.numel() for p in decoder_layers(model)[0].parameters()) * BF16
    components = [Component(f"WavLM encoder ({_short(spec.wavlm)})", spec.wavlm, "body", counts)]
    hidden, layers = config.hidden_size, config.num_hidden_layers
    components.append(_speech_heads_component(spec, hidden, layers))

    samples = int(round(spec.audio_seconds * 16000))
    frames = conv_frames(samples, list(config.conv_kernel), list(config.conv_stride))[-1]
    workload = {"batch_size": spec.batch_size, "audio_seconds": spec.audio_seconds, "encoder_frames": frames}
    dims = LayerDims.from_config(config)
    dropout = (config.hidden_dropout or config.attention_dropout or config.activation_dropout) > 0

    def activations(method: str, gc: bool) -> dict[str, float]:
        m, b = METHODS[method], spec.batch_size
        n = b * frames
        hidden_states = (layers + 1) * BF16 * hidden * n  # output_hidden_states for the layer weighting
        parts: dict[str, float] = {}
        if m.train_base or m.adapters:
            per_layer = wavlm_layer_bytes(dims, frames, base_trainable=m.train_base, lora_inputs=lora_inputs[method],
                                          lora_r=spec.lora_r, lora_dropout=spec.lora_dropout, dropout=dropout,
                                          assumptions=assumptions)
            # Without checkpointing each layer's input is the hidden state already kept (LayerNorm input).
            parts["encoder layers"] = (per_layer * n) if gc else (layers * per_layer * n)
            parts["encoder hidden states"] = hidden_states
            parts["encoder embedding side"] = wavlm_outside_bytes(config, frames, trainable=True,
                                                                  assumptions=assumptions) * n
            if m.train_base and not spec.freeze_feature_extractor:
                parts["CNN front end"] = conv_extractor_bytes(config, samples) * b
        else:
            parts["encoder hidden states"] = hidden_states  # frozen: run without autograd, outputs kept
        parts["layer weighting + pooling"] = _speech_heads_bytes(spec, hidden, n, hidden_states)
        return parts

    return components, activations, workload, unit


def _short(name: str | None) -> str:
    return str(name).rstrip("/").rsplit("/", 1)[-1] if name else "-"


# --------------------------------------------------------------------------------------------------
# Memory of every phase of an LLM branch's run, not only its training step.
#
# A run trains, evaluates every ``eval_every`` steps, and after training votes over prompt variants on
# dev and test (or scores label answers). Each of these holds the weights and the optimizer states (the
# optimizer lives for the whole run; gradients are freed by ``zero_grad``) plus its own working memory,
# and the run's peak is the largest phase: on an H200 the QLoRA 8-B recipe peaked at 28.5 GiB in the
# dev vote while its training step took 16.4 GiB (issue 28). Per phase (``tests/test_phase_memory.py``
# measures each on small LLaMA configs and holds these within 10 %)::
#
#     evaluation   a no-grad forward over eval rows x tokens: the largest working set of one layer
#     vote         the same over files x K variants after a cached instruction of P tokens, plus every
#                  layer's key/value cache (instruction + suffix) the forward keeps, and the 4-D mask
#     scoring      a vote that reads logits at the answer positions (full vocabulary, fp32 log-softmax)
#     generation   (text branch) greedy free answers: prefill, the key/value cache, last-position logits
#     encoder      (audio-LLM) the frozen Whisper encoder over its window, for a training or eval batch
#
# Rows per forward are capped by ``data.eval_max_tokens`` exactly as ``llmser.utils.budget`` splits them.


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
    spec, a = plan.spec, plan.assumptions
    estimate = plan.estimate(method, gc)
    dims = LayerDims.from_config(presets.resolve_config(spec.llm, "llm"))
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
    name = "prompt voting" if spec.llm_mode == "head" else "label scoring"
    logits = 0.0
    if name == "label scoring":  # logits at the read positions: model dtype + fp32 log-softmax
        logits = vote_rows * (1 + spec.answer_tokens) * dims.vocab * (BF16 + FP32)
    phases[name] = resident + vote_rows * suffix * per_token + keys + mask + logits
    if spec.branch == "text_llm":
        phases["generation"] = resident + generation_bytes(dims, residual, per_token, rows, tokens,
                                                           spec.generation_tokens)
    if spec.branch == "audio_llm":
        phases["speech encoder"] = resident + speech_encoder_bytes(plan, max(spec.batch_size, rows))
    return phases


def generation_bytes(dims: LayerDims, residual: int, per_token: float, rows: int, tokens: int, new: int) -> float:
    """Free generation (``generate_answers``, greedy) of ``new`` tokens after a ``tokens``-long prompt: the
    prefill's working set, every layer's key/value cache at full length, and the logits of the last position
    only (``generate`` asks for one, then copies them to fp32)."""
    cache = dims.layers * 2 * dims.kv_dim * residual * rows * (tokens + new)
    return rows * tokens * per_token + cache + rows * dims.vocab * (BF16 + FP32)


def speech_encoder_bytes(plan: Any, rows: int) -> float:
    """The frozen Whisper encoder's no-grad forward over its (padded or cropped) window, per batch of ``rows``
    clips: at its peak, inside one layer's feed-forward, the residual stream and its LayerNorm (2 d), fc1's
    output and its GELU (2 x ffn), beside the encoder outputs already made (a second encoder's included)."""
    spec = plan.spec
    whisper = presets.resolve_config(spec.whisper, "whisper")
    frames = plan.workload["encoder_frames"]
    outputs = plan.workload.get("encoder_width", whisper.d_model)
    per_frame = BF16 * (2 * whisper.d_model + 2 * whisper.encoder_ffn_dim + outputs)
    if spec.encoder_hidden_states > 1:  # encoder_layers: all: every layer's output is kept, concatenated, in fp32
        per_frame = BF16 * (2 * whisper.d_model + 2 * whisper.encoder_ffn_dim) \
            + spec.encoder_hidden_states * whisper.d_model * (BF16 + BF16 + FP32)
    return rows * frames * per_frame


def _targets_up(targets: Any) -> bool:
    return isinstance(targets, str) or "up_proj" in targets
