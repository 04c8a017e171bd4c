"""QLoRA plumbing: bitsandbytes configs, k-bit preparation, and the CPU 4-bit gradient guard.

One small helper per concern (as trl does with ``get_quantization_config`` / ``get_kbit_device_map``):

- ``get_quantization_config``: recipe fields -> ``BitsAndBytesConfig`` (4-bit NF4/FP4 with double
  quantisation, or 8-bit), or None for plain LoRA.
- ``require_bitsandbytes``: a clear error, suggesting plain LoRA, where bitsandbytes cannot run.
- ``guard_cpu_4bit_gradients``: on CPUs with AVX512-BF16, bitsandbytes repacks a ``Linear4bit``
  weight for a faster CPU kernel the first time it runs without gradients (any evaluation), and that
  kernel has no autograd: afterwards LoRA adapters on that layer silently get no gradients at all.
  Turning the repacking off before any evaluation keeps training correct (measured in
  tests/test_quantization.py: without the guard every lora_B gradient is None after an eval pass).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

Quantization = Literal["none", "4bit", "8bit"]


def require_bitsandbytes() -> Any:
    """Import bitsandbytes or explain what to do instead."""
    try:
        import bitsandbytes
    except Exception as exc:  # noqa: BLE001 - any import failure means the same to the user
        raise RuntimeError(
            f"QLoRA needs bitsandbytes, which cannot be loaded here ({exc}). Install it "
            "(pip install bitsandbytes) or train with plain LoRA: set model.quantization: none") from None
    return bitsandbytes


def get_quantization_config(quantization: Quantization, *, quant_type: str = "nf4", double_quant: bool = True,
                            compute_dtype: torch.dtype | str = "auto") -> Any:
    """``BitsAndBytesConfig`` for the recipe's ``quantization`` setting (None for ``none``)."""
    if quantization == "none":
        return None
    require_bitsandbytes()
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization != "4bit":
        raise ValueError(f"quantization {quantization!r} is not one of none, 4bit, 8bit")
    if compute_dtype == "auto":
        compute_dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() \
            else torch.float32
    elif isinstance(compute_dtype, str):
        compute_dtype = getattr(torch, compute_dtype)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute_dtype)


def get_kbit_device_map() -> dict[str, int] | None:
    """Each process loads its quantised copy onto its own GPU; on CPU no device map is needed."""
    if torch.cuda.is_available():
        from accelerate import PartialState

        return {"": PartialState().local_process_index}
    return None


def guard_cpu_4bit_gradients(model: torch.nn.Module) -> int:
    """Disable bitsandbytes' CPU weight repacking on every 4-bit layer; returns how many were guarded."""
    try:
        import bitsandbytes as bnb
    except Exception:  # noqa: BLE001 - no bitsandbytes, no 4-bit layers
        return 0
    guarded = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            guarded += 1
    return guarded


def prepare_for_kbit_training(model: torch.nn.Module, gradient_checkpointing: bool = False) -> torch.nn.Module:
    """peft's k-bit preparation (fp32 norms, input grads) plus the CPU 4-bit guard."""
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    guard_cpu_4bit_gradients(model)
    return model
