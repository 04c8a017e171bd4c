"""LoRA/QLoRA adapters on a causal LM: attach, save in the standard PEFT format, reload with a base check.

An adapter folder is exactly what ``peft.PeftModel.save_pretrained`` writes (``adapter_config.json``
+ ``adapter_model.safetensors``), with ``base_model_name_or_path`` set to the base's Hub id (not the
local copy it was trained from), so plain peft can load it onto that base anywhere. Beside it,
``llmser_base.json`` records which weights of that base it was trained on (llmser's smol copy is
dequantised from a Q4_1 GGUF file); loading it onto other weights of the same name warns
(``llmser.models.llm.identity.provenance_mismatch``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmser.models.llm.config import LLMConfig
from llmser.models.llm.identity import (
    AdapterBaseMismatchError,
    adapter_base,
    canonical_name,
    check_adapter_base,
    warn_if_other_weights,
    write_adapter_provenance,
)
from llmser.utils.logging import get_logger

logger = get_logger(__name__)

AdapterMismatchError = AdapterBaseMismatchError  # the hub layer owns the check; one error type
__all__ = ["attach_lora", "load_lora", "save_lora", "check_adapter_base", "adapter_base", "AdapterMismatchError"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def attach_lora(model: Any, config: LLMConfig, task_type: str | None = "CAUSAL_LM") -> Any:
    """Wrap ``model`` with fresh LoRA adapters (after k-bit preparation when it is quantised)."""
    from peft import get_peft_model

    from llmser.models.quantization import guard_cpu_4bit_gradients, prepare_for_kbit_training

    if config.quantization != "none":
        model = prepare_for_kbit_training(model, gradient_checkpointing=config.gradient_checkpointing)
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model = get_peft_model(model, config.lora_config(task_type, model.config.num_hidden_layers))
    guard_cpu_4bit_gradients(peft_model)  # again: peft may have wrapped new 4-bit layers
    return peft_model


def load_lora(model: Any, adapter_dir: str | Path, base: str, *, trainable: bool = False) -> Any:
    """Put a saved adapter onto ``model`` after checking it was trained on ``base``."""
    from peft import PeftModel

    from llmser.models.quantization import guard_cpu_4bit_gradients

    check_adapter_base(adapter_dir, base)
    warn_if_other_weights(adapter_dir, model, base)
    weights = Path(adapter_dir) / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing (llmser loads safetensors adapters only); "
                                "re-save the adapter with save_pretrained(safe_serialization=True)")
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    except RuntimeError as exc:
        if "size mismatch" not in str(exc):
            raise
        raise AdapterBaseMismatchError(_shape_mismatch(adapter_dir, base, str(exc))) from None
    adapter_state(peft_model, adapter_dir)  # peft leaves a missing LoRA tensor at its init with only a warning
    guard_cpu_4bit_gradients(peft_model)
    return peft_model


def _shape_mismatch(adapter_dir: str | Path, base: str, error: str) -> str:
    """Why an adapter's tensors do not fit: another architecture/size of base, or weights of another LoRA rank."""
    first = next((line.strip() for line in error.splitlines() if "size mismatch" in line), error)
    return (f"the LoRA weights in {Path(adapter_dir) / ADAPTER_WEIGHTS} do not fit the base {base!r} ({first}); the "
            f"base has another architecture or size than the one the adapter was trained on, or the weights are of "
            f"another LoRA rank than {Path(adapter_dir) / ADAPTER_CONFIG} says; load it onto its own base, or re-save "
            "the adapter so its config and weights agree")


def adapter_state(peft_model: Any, adapter_dir: str | Path) -> dict[str, Any]:
    """The adapter file's tensors, after checking it holds every LoRA tensor ``peft_model`` declares, with its
    shape, finite (``llmser.utils.weights.check_state``)."""
    from peft import get_peft_model_state_dict

    from llmser.utils.weights import check_state, load_safetensors

    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    state = load_safetensors(path)
    check_state(get_peft_model_state_dict(peft_model), state, path)
    return state


def save_lora(peft_model: Any, directory: str | Path, base: str) -> None:
    """Save the adapter in the standard PEFT format, recording ``base``'s Hub id as its base model and, in
    ``llmser_base.json``, which weights of it (original, or converted from which file)."""
    for peft_config in peft_model.peft_config.values():
        peft_config.base_model_name_or_path = canonical_name(base)
    # save_embedding_layers=False: llmser never trains embeddings, and "auto" looks the base up online.
    peft_model.save_pretrained(str(directory), safe_serialization=True, save_embedding_layers=False)
    write_adapter_provenance(directory, peft_model, base)
