"""QLoRA on CPU: 4-bit/8-bit loading with LoRA, and LoRA weights still training after an evaluation."""

from __future__ import annotations

import pytest
import torch

from llmser.models.quantization import (
    get_quantization_config,
    guard_cpu_4bit_gradients,
    prepare_for_kbit_training,
)

pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    from tiny_models import tiny_llama_folder

    return tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama"), layers=2, vocab_size=128, hidden_size=64)


def _qlora(path, quantization, guard=True):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(path, quantization_config=get_quantization_config(quantization))
    if guard:
        model = prepare_for_kbit_training(model)
    else:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights="gaussian"))


def _train_step_after_eval(model):
    x = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        model(input_ids=x)
    model.train()
    lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(input_ids=x, labels=x).loss.backward()
    grads_missing = sum(p.grad is None for n, p in model.named_parameters() if "lora_B" in n)
    optimizer.step()
    changed = sum(not torch.equal(p.detach(), lora_b[n]) for n, p in model.named_parameters() if "lora_B" in n)
    return grads_missing, changed, len(lora_b)


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_lora_weights_change_after_an_evaluation_pass(tiny_llama_dir, quantization):
    model = _qlora(tiny_llama_dir, quantization)
    missing, changed, total = _train_step_after_eval(model)
    assert total == 4 and missing == 0 and changed == total


def test_without_the_guard_4bit_lora_silently_stops_learning(tiny_llama_dir):
    """Documents the bitsandbytes CPU pitfall the guard exists for (AVX512-BF16 CPUs only)."""
    import bitsandbytes as bnb

    model = _qlora(tiny_llama_dir, "4bit", guard=False)
    layer = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    if not getattr(layer, "support_avx512bf16_for_cpu", False):
        pytest.skip("this CPU does not repack 4-bit weights (no AVX512-BF16)")
    missing, changed, total = _train_step_after_eval(model)
    assert missing == total and changed == 0
    assert guard_cpu_4bit_gradients(model) == 14  # 7 linear layers x 2 decoder layers


def test_none_means_plain_lora():
    assert get_quantization_config("none") is None
    with pytest.raises(ValueError, match="none, 4bit, 8bit"):
        get_quantization_config("3bit")
