"""``llmser plan``: meta-device parameter counts, memory formulas, sharding, recipes and the table.

The counts are checked against published totals; the activation formulas against the bytes that
torch's saved-tensor hooks see in tiny real models (LLaMA, WavLM, a 4-bit QLoRA LLaMA) on the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import resource
import time
import warnings
from pathlib import Path

import pytest
import torch

from llmser.cli.plan import plan_main
from llmser.config import ConfigError
from llmser.models.plan import PROMPT_TOKENS
from llmser.models.presets import PRESETS as MODEL_PRESETS
from llmser.models.presets import find, resolve_config
from llmser.planning import PRESETS, fits_on, format_params, format_plan, resolve_specs, spec_from_recipe
from llmser.planning.memory import (
    GIB,
    Assumptions,
    LayerDims,
    Parallelism,
    ParamCount,
    PlanSpec,
    add_lora,
    build_meta,
    build_plan,
    count_parameters,
    lora_param_count,
    nf4_bits_per_param,
    set_trainable,
    static_memory,
    wavlm_layer_bytes,
    weight_bytes,
)
from llmser.planning.memory import llama_layer_bytes as llama_bytes

LLAMA3 = "meta-llama/Meta-Llama-3-8B-Instruct"
CPU = Assumptions(dropout_mask="dtype", autocast=False)  # what the CPU runs below do


# --------------------------------------------------------------------------------------------------
# parameter counts of the full-size configs


@pytest.mark.parametrize("hub_id, kind, expected, rel", [
    (LLAMA3, "causal_lm", 8_030_261_248, 0.0),  # exact: the model card's 8.03 B
    ("huggyllama/llama-7b", "causal_lm", 6_738_415_616, 0.0),  # exact: LLaMA-7B as released
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "causal_lm", 134_515_008, 0.0),  # tied embeddings counted once
    ("openai/whisper-large-v3", "whisper_encoder", 635_000_000, 0.01),  # "encoder ~635 M"
    ("microsoft/wavlm-large", "speech_encoder", 316_620_000, 0.01),  # WavLM paper / SUPERB: 316.62 M
])
def test_full_config_param_counts_match_published(hub_id, kind, expected, rel):
    model = build_meta(kind, resolve_config(hub_id))
    total = count_parameters(model).total
    assert abs(total - expected) <= rel * expected, f"{hub_id}: {total:,} vs published {expected:,}"


def test_whisper_large_v3_whole_model_and_llama3_shapes():
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        whisper = WhisperForConditionalGeneration(resolve_config("openai/whisper-large-v3"))
    assert sum(p.numel() for p in whisper.parameters()) == 1_543_490_560  # model card: 1550 M
    config = resolve_config("llama3-8b")  # alias, case-insensitive
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_key_value_heads,
            config.intermediate_size, config.max_position_embeddings) == (128256, 4096, 32, 8, 14336, 8192)
    assert config.rope_parameters["rope_theta"] == 500000.0
    assert all(preset.source for preset in MODEL_PRESETS)


def test_meta_build_allocates_no_memory_and_is_fast():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    model = build_meta("causal_lm", resolve_config(LLAMA3))
    elapsed = time.perf_counter() - start
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert grown_mib < 500, f"building on meta grew the process by {grown_mib:.0f} MiB (bf16 weights: 15 GiB)"
    assert elapsed < 10


def test_peft_lora_on_meta_matches_hand_count():
    model = set_trainable(build_meta("causal_lm", resolve_config(LLAMA3)), False)
    by_hand = lora_param_count(model, 8, ["q_proj", "v_proj"])
    # 32 layers x (8 x (4096 + 4096) for q + 8 x (4096 + 1024) for v): GQA makes v 1024 wide
    assert by_hand == 32 * (8 * 8192 + 8 * 5120) == 3_407_872
    counts = count_parameters(add_lora(model, 8, 16, 0.05, ["q_proj", "v_proj"]), "4bit")
    assert counts.adapter == by_hand and counts.trainable == 0
    assert counts.total == 8_030_261_248
    # 4-bit: every decoder Linear; embeddings, norms and lm_head stay 16-bit
    assert counts.quantized == 8_030_261_248 - 2 * 128256 * 4096 - (2 * 32 + 1) * 4096


def test_resolve_config_reads_local_folder_and_rejects_unknown(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=100).save_pretrained(tmp_path)
    assert resolve_config(str(tmp_path)).hidden_size == 64
    assert resolve_config(str(tmp_path / "config.json")).num_hidden_layers == 2
    assert resolve_config("tiny", "speech").model_type == "wavlm"  # the WavLM branch's preset
    assert resolve_config("tiny", "whisper").model_type == "whisper"  # a name means one model per kind
    assert find("MICROSOFT/WAVLM-LARGE").name == "wavlm-large" and find("smol") is None  # smol: LLM or Whisper?
    with pytest.raises(ConfigError, match="never downloads"):
        resolve_config("nobody/no-such-model-xyz")


# --------------------------------------------------------------------------------------------------
# quantisation storage


def test_nf4_bits_match_bitsandbytes_storage():
    functional = pytest.importorskip("bitsandbytes.functional")
    weight = torch.randn(1024, 4096, dtype=torch.bfloat16)
    assert nf4_bits_per_param(False) == 4.5  # 4 + 32/64
    assert nf4_bits_per_param(True) == pytest.approx(4 + 0.125 + 32 / (64 * 256))  # QLoRA: 0.127 bit
    for double in (False, True):
        packed, state = functional.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=double)
        nbytes = packed.numel() * packed.element_size() + state.absmax.numel() * state.absmax.element_size()
        if state.nested:  # + the fp32 constants of the second level (the 1 KiB code table is per tensor)
            nbytes += state.state2.absmax.numel() * state.state2.absmax.element_size()
        assert nbytes * 8 / weight.numel() == pytest.approx(nf4_bits_per_param(double), rel=1e-6)


# --------------------------------------------------------------------------------------------------
# activation formulas against what autograd really keeps (tiny models, CPU)


def _saved_bytes(model, run, autocast=False):
    """Bytes of the distinct storages saved for backward, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        key = tensor.untyped_storage().data_ptr()
        if key not in params:
            seen[key] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        run()
    return sum(seen.values())


def _tiny_llama_config(layers):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=500, hidden_size=256, intermediate_size=896, num_attention_heads=8,
                       num_key_value_heads=2, num_hidden_layers=layers)


def _llama_per_layer(setup, autocast=False, batch=3, seq=96):
    """Saved bytes of a 2-layer minus a 1-layer model: one layer's share, free of the head's."""
    from transformers import LlamaForCausalLM

    totals = []
    for layers in (1, 2):
        torch.manual_seed(0)
        model = setup(LlamaForCausalLM(_tiny_llama_config(layers)).to(torch.bfloat16))
        model.train()
        ids = torch.randint(0, 500, (batch, seq))
        totals.append(_saved_bytes(model, lambda m=model, x=ids: m(input_ids=x, labels=x), autocast))
    return (totals[1] - totals[0]) / (batch * seq)


def _lora(targets, dropout):
    def setup(model):
        return add_lora(model, 8, 16, dropout, targets)
    return setup


DIMS = LayerDims(hidden=256, intermediate=896, heads=8, kv_heads=2, head_dim=32, layers=1, vocab=500)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_llama_layer_formula_full_and_gradient_checkpointing():
    measured = _llama_per_layer(lambda m: m)
    assert measured == pytest.approx(llama_bytes(DIMS, base_trainable=True, assumptions=CPU), rel=0.01)

    def checkpointed(model):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _llama_per_layer(checkpointed) == pytest.approx(2 * DIMS.hidden)  # the bf16 layer input


@pytest.mark.parametrize("targets, dropout, autocast", [
    (["q_proj", "v_proj"], 0.05, False),
    (ALL_LINEAR, 0.0, False),
    (["q_proj", "v_proj"], 0.0, True),
    (ALL_LINEAR, 0.05, True),
])
def test_llama_layer_formula_lora(targets, dropout, autocast):
    measured = _llama_per_layer(_lora(targets, dropout), autocast=autocast)
    inputs = [{"down_proj": 896, "k_proj": 256}.get(t, 256) for t in targets]
    assumptions = Assumptions(dropout_mask="dtype", autocast=autocast)
    expected = llama_bytes(DIMS, base_trainable=False, lora_inputs=inputs, lora_r=8, lora_dropout=dropout,
                           assumptions=assumptions)
    if autocast:  # the bf16 copies autocast makes of the fp32 adapter weights, spread over the tokens
        expected += BF16_ADAPTER_COPY * sum(8 * n_in + 8 * n_out for n_in, n_out in
                                            zip(inputs, [{"k_proj": 64, "v_proj": 64, "gate_proj": 896,
                                                          "up_proj": 896, "down_proj": 256}.get(t, 256)
                                                         for t in targets])) / (3 * 96)
    assert measured == pytest.approx(expected, rel=0.02)


BF16_ADAPTER_COPY = 2


def test_llama_layer_formula_qlora_with_kbit_preparation(tmp_path):
    pytest.importorskip("bitsandbytes")
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    from llmser.models.quantization import guard_cpu_4bit_gradients

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    totals = []
    for layers in (1, 2):
        torch.manual_seed(0)
        LlamaForCausalLM(_tiny_llama_config(layers)).to(torch.bfloat16).save_pretrained(tmp_path / str(layers))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LlamaForCausalLM.from_pretrained(tmp_path / str(layers), quantization_config=quant,
                                                     dtype=torch.bfloat16)
            model = add_lora(prepare_model_for_kbit_training(model, use_gradient_checkpointing=False), 8, 16, 0.0, ["q_proj", "v_proj"])
        guard_cpu_4bit_gradients(model)
        model.train()
        ids = torch.randint(0, 500, (3, 96))
        totals.append(_saved_bytes(model, lambda m=model, x=ids: m(input_ids=x, labels=x), autocast=True))
    measured = (totals[1] - totals[0]) / (3 * 96)
    expected = llama_bytes(DIMS, base_trainable=False, lora_inputs=[256, 256], lora_r=8, fp32_residual=True,
                           assumptions=Assumptions(dropout_mask="dtype", autocast=True))
    adapter_copies = BF16_ADAPTER_COPY * 8 * (256 + 256 + 256 + 64) / (3 * 96)
    assert measured == pytest.approx(expected + adapter_copies, rel=0.02)
    # fp32 residual stream: the SwiGLU tensors double, so QLoRA keeps more per layer than LoRA
    assert expected > llama_bytes(DIMS, base_trainable=False, lora_inputs=[256, 256], lora_r=8, assumptions=CPU)


def _wavlm_per_layer(setup, seconds):
    from transformers import WavLMConfig, WavLMModel

    totals, frames = [], 0
    for layers in (1, 2):
        torch.manual_seed(0)
        config = WavLMConfig(hidden_size=128, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=512,
                             conv_dim=[32] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                             do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True,
                             apply_spec_augment=False, layerdrop=0.0)
        model = setup(WavLMModel(config).to(torch.bfloat16))
        model.train()
        audio = torch.randn(2, int(16000 * seconds), dtype=torch.bfloat16)
        frames = model._get_feat_extract_output_lengths(audio.shape[1])
        totals.append(_saved_bytes(model, lambda m=model, x=audio: m(x)))
    return (totals[1] - totals[0]) / (2 * int(frames)), int(frames)


def _finetune(model):
    model.freeze_feature_encoder()
    return model


@pytest.mark.parametrize("seconds", [1.0, 2.0])
def test_wavlm_layer_formula_full_finetuning(seconds):
    measured, frames = _wavlm_per_layer(_finetune, seconds)
    dims = LayerDims(hidden=128, intermediate=512, heads=4, kv_heads=4, head_dim=32, layers=1)
    expected = wavlm_layer_bytes(dims, frames, base_trainable=True, assumptions=CPU)
    assert measured == pytest.approx(expected, rel=0.02)  # two lengths: checks the a*s attention term too


def test_wavlm_layer_formula_lora():
    def lora(model):
        return add_lora(set_trainable(model, False), 8, 16, 0.0, ["intermediate_dense", "output_dense"])

    measured, frames = _wavlm_per_layer(lora, 2.0)
    dims = LayerDims(hidden=128, intermediate=512, heads=4, kv_heads=4, head_dim=32, layers=1)
    expected = wavlm_layer_bytes(dims, frames, base_trainable=False, lora_inputs=[128, 512], lora_r=8, assumptions=CPU)
    assert measured == pytest.approx(expected, rel=0.03)


# --------------------------------------------------------------------------------------------------
# plans: orderings, checkpointing, sharding, published figures


@pytest.fixture(scope="module")
def text_plan():
    return build_plan(PRESETS["text-llama3-8b"]())


def test_qlora_below_lora_below_full(text_plan):
    for gc in (False, True):
        weights = {m: text_plan.estimate(m, gc).weights for m in ("full", "lora", "qlora")}
        # the recipe's LoRA (r 16 on all 7 projections: 42 M fp32 + bf16 copy) adds 1.6 % to the bf16 base
        assert weights["qlora"] < weights["lora"] <= weights["full"] * 1.02
    totals = {m: text_plan.estimate(m, True).total for m in ("full", "lora", "qlora")}
    assert totals["qlora"] < totals["lora"] < totals["full"]
    # without checkpointing it holds too once the non-quantised weights stay bf16 (no fp32 residual)
    plan = build_plan(PRESETS["text-llama3-8b"](), assumptions=Assumptions(kbit_upcast=False))
    totals = {m: plan.estimate(m, False).total for m in ("full", "lora", "qlora")}
    assert totals["qlora"] < totals["lora"] < totals["full"]


def test_gradient_checkpointing_reduces_activations(text_plan):
    for method in ("full", "lora", "qlora"):
        assert text_plan.estimate(method, True).activations < 0.5 * text_plan.estimate(method, False).activations
    wavlm = build_plan(PRESETS["wavlm-large"]())
    assert wavlm.estimate("full", True).activations < wavlm.estimate("full", False).activations
    assert ("frozen", True) not in wavlm.estimates  # nothing to recompute through a frozen encoder


def test_full_finetuning_costs_16_bytes_per_param(text_plan):
    estimate = text_plan.estimate("full", False)
    assert estimate.weights + estimate.gradients + estimate.optimizer == 16 * 8_030_261_248  # 128.5 GB
    no_master = build_plan(PRESETS["text-llama3-8b"](), assumptions=Assumptions(master_weights=False))
    estimate = no_master.estimate("full", False)
    assert estimate.weights + estimate.gradients + estimate.optimizer == 12 * 8_030_261_248


def _accelerate_yaml(tmp_path, text):
    path = tmp_path / "accelerate.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_fsdp_over_8_divides_sharded_parts_and_ddp_replicates(tmp_path):
    count = ParamCount(total=1000, trainable=800, frozen=200)
    single = static_memory([count], Parallelism(), Assumptions())
    fsdp = Parallelism.from_accelerate_config(_accelerate_yaml(
        tmp_path, "distributed_type: FSDP\nnum_processes: 8\nfsdp_config:\n  fsdp_sharding_strategy: FULL_SHARD\n"))
    assert (fsdp.strategy, fsdp.shard_size) == ("fsdp", 8)
    sharded = static_memory([count], fsdp, Assumptions(), gathered_unit_bytes=50)
    assert sharded.gradients == single.gradients / 8 and sharded.optimizer == single.optimizer / 8
    assert sharded.weights == single.weights / 8 + 2 * 50  # + two all-gathered layers
    ddp = Parallelism.from_accelerate_config(_accelerate_yaml(tmp_path, "distributed_type: MULTI_GPU\nnum_processes: 8\n"))
    replicated = static_memory([count], ddp, Assumptions())
    assert (replicated.weights, replicated.optimizer) == (single.weights, single.optimizer)
    assert replicated.gradients == 2 * single.gradients  # DDP's bucket copy
    zero2 = Parallelism.from_accelerate_config(_accelerate_yaml(
        tmp_path, "distributed_type: DEEPSPEED\nnum_processes: 8\ndeepspeed_config:\n  zero_stage: 2\n"))
    partly = static_memory([count], zero2, Assumptions())
    assert (partly.weights, partly.gradients, partly.optimizer) == (
        single.weights, single.gradients / 8, single.optimizer / 8)
    fsdp2 = Parallelism.from_accelerate_config(_accelerate_yaml(
        tmp_path, "distributed_type: FSDP\nnum_processes: 4\nfsdp_config:\n  fsdp_version: 2\n"
                  "  fsdp_reshard_after_forward: true\n  fsdp_activation_checkpointing: true\n"))
    assert (fsdp2.strategy, fsdp2.shard_size, fsdp2.activation_checkpointing) == ("fsdp", 4, True)


def test_fsdp_plan_of_llama3_full_finetuning(tmp_path, text_plan):
    path = _accelerate_yaml(tmp_path, "distributed_type: FSDP\nnum_processes: 8\nfsdp_config:\n"
                                      "  fsdp_reshard_after_forward: true\n")
    plan = build_plan(PRESETS["text-llama3-8b"](), Parallelism.from_accelerate_config(path))
    one, eight = text_plan.estimate("full", True), plan.estimate("full", True)
    assert eight.optimizer == pytest.approx(one.optimizer / 8)
    assert eight.activations == one.activations  # activations are per process, never sharded
    assert eight.total < 40 * GIB < one.total


def test_published_qlora_and_full_finetuning_figures():
    all_linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    # QLoRA paper: LLaMA-7B in 4 bit needs ~3.9-5 GB of weights and fine-tunes on a 24 GB GPU
    seven = build_plan(PlanSpec("7b", "text_llm", llm="huggyllama/llama-7b", lora_r=64,
                                lora_target_modules=all_linear, batch_size=1, seq_len=512, gradient_checkpointing=True))
    base = seven.components[0].counts["qlora"]
    base_weights = weight_bytes(ParamCount(total=base.total, frozen=base.frozen, quantized=base.quantized,
                                           quantization="4bit"), Assumptions())
    assert 3.9e9 <= base_weights <= 5e9
    assert seven.estimate("qlora", True).total < 24 * GIB
    # and "from >780 GB to <48 GB" for 65B: 16-bit full fine-tuning at 12 B/param (no master copy)
    full = 12 * find("huggyllama/llama-65b").published_params
    assert full == pytest.approx(780e9, rel=0.01)


def test_audio_llm_speech_tokens_follow_whisper_padding():
    plan = build_plan(PRESETS["audio-llm-full"]())
    w = plan.workload
    # 30-s padded input -> 1500 frames -> windows of round(1500 * (1/3) / 30) = 17 frames -> 88 windows
    assert (w["encoder_frames"], w["frames_per_window"], w["windows"], w["speech_tokens"]) == (1500, 17, 88, 88)
    # audio_llama3_8b.yaml: speech only (inputs: speech), so the text is the prompt alone (PROMPT_TOKENS)
    assert w["llm_tokens"] == 88 + PROMPT_TOKENS
    assert "WavLM" not in " ".join(c.name for c in plan.components)  # the recipe names no second encoder
    plan = build_plan(dataclasses.replace(plan.spec, wavlm="microsoft/wavlm-large"))
    names = [c.name for c in plan.components]
    assert any("Whisper" in n for n in names) and any("WavLM" in n for n in names)
    whisper = plan.components[0].counts["lora"]
    assert whisper.trained == 0 and whisper.total > 600e6  # frozen
    trimmed = build_plan(PlanSpec("t", "audio_llm", llm=LLAMA3, whisper="openai/whisper-large-v3",
                                  audio_seconds=15, trim_audio_padding=True))
    assert trimmed.workload["windows"] == math.ceil(750 / 17)
    long = build_plan(PlanSpec("l", "audio_llm", llm=LLAMA3, whisper="openai/whisper-large-v3", audio_seconds=45))
    assert long.workload["whisper_chunks"] == 2 and long.workload["windows"] == 176


# --------------------------------------------------------------------------------------------------
# recipes and the command line


def test_yaml_recipe_maps_onto_a_plan(tmp_path):
    recipe = tmp_path / "text.yaml"
    recipe.write_text(
        "branch: text_llm\nmodel:\n  llm: meta-llama/Meta-Llama-3-8B-Instruct\n  quantization: 4bit\n"
        "  lora_r: 16\n  lora_target_modules: [q_proj, k_proj, v_proj, o_proj]\n"
        "data:\n  batch_size: 2\n  corpus: somewhere\noptim:\n  lr: 1.0e-4\n", encoding="utf-8")
    spec = spec_from_recipe(recipe)
    assert (spec.branch, spec.method, spec.lora_r, spec.batch_size) == ("text_llm", "qlora", 16, 2)
    plan = build_plan(spec)
    assert plan.trained_params("qlora") == 32 * 16 * (2 * 8192 + 2 * 5120)  # q, o: 4096+4096; k, v: 4096+1024
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert plan_main([str(recipe), "--gradient-checkpointing"]) == 0
    assert "QLoRA*+GC" in out.getvalue() and "QLoRA*" in out.getvalue().split("trained:")[1]


def test_shipped_wavlm_recipes_plan(tmp_path):
    from pathlib import Path

    large, tiny = Path("adapters/wavlm_large.yaml"), Path("adapters/wavlm_tiny.yaml")
    if not large.is_file():
        pytest.skip("recipes not present")
    spec = spec_from_recipe(large)
    assert (spec.branch, spec.method, spec.batch_size, spec.audio_seconds, spec.wavlm) == (
        "wavlm", "full", 16, 15.0, "microsoft/wavlm-large")
    assert build_plan(spec).estimate("full", True).total < build_plan(spec).estimate("full", False).total
    if tiny.is_file():
        plan = build_plan(spec_from_recipe(tiny))
        assert plan.components[0].counts["full"].total < 1e6  # the random 'tiny' preset


def test_shipped_recipes_plan_as_they_train():
    """Every shipped recipe on a real model plans: presets read as the branches read them (smol is SmolLM2
    as an LLM, Whisper tiny.en as an encoder), no second encoder unless the recipe names one, the Q-Former
    at the branch's default width, Whisper's window as max_audio_seconds sets it."""
    from pathlib import Path

    if not Path("adapters/audio_smol.yaml").is_file():
        pytest.skip("recipes not present")
    plans = {name: build_plan(spec_from_recipe(Path(f"adapters/{name}.yaml")))
             for name in ("text_smol", "text_smol_sft", "audio_smol", "wavlm_smol", "audio_llama3_8b",
                          "text_llama3_8b", "wavlm_large")}
    audio = plans["audio_smol"]
    assert [c.name.split(" (")[0] for c in audio.components] == [
        "Whisper encoder", "window Q-Former", "projection 384 -> 576", "layer weights + speech/LLM-state heads",
        "LLM"]  # the recipe's head mode
    assert audio.workload["encoder_frames"] == 1500  # max_audio_seconds: 30, Whisper's whole window
    assert "WavLM" not in " ".join(c.name for c in plans["audio_llama3_8b"].components)
    speech = plans["wavlm_smol"]
    assert speech.spec.methods == ["frozen"] and speech.spec.wavlm == "openai/whisper-tiny.en"
    assert speech.components[0].name == "Whisper encoder (whisper-tiny.en)"
    assert 8e6 < speech.components[0].counts["frozen"].total < 8.5e6  # tiny.en's encoder: 8.2 M
    assert speech.workload["encoder_frames"] == 1500
    assert "no LoRA" in format_plan(speech)
    assert plans["text_smol"].components[0].model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(ConfigError, match="random test model"):
        spec_from_recipe(Path("adapters/audio_tiny.yaml"))
    with pytest.raises(ConfigError, match="used frozen"):
        dataclasses.replace(speech.spec, method="full")


def test_bad_recipes_and_targets_are_reported(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("branch: vision\nmodel: {}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="branch 'vision'"):
        spec_from_recipe(bad)
    with pytest.raises(ConfigError, match="neither a preset"):
        resolve_specs("no-such-preset")
    assert plan_main([str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="cannot be quantised"):
        PlanSpec("w", "wavlm", wavlm="microsoft/wavlm-large", method="qlora")


def test_plan_all_prints_every_branch_table(tmp_path):
    out = io.StringIO()
    json_path = tmp_path / "plan.json"
    with contextlib.redirect_stdout(out):
        assert plan_main(["all", "--batch-size", "4", "--json", str(json_path)]) == 0
    text = out.getvalue()
    for name in ("text-llama3-8b", "audio-llm-full", "wavlm-large", "8.03 B", "fits on", "smallest GPU",
                 "Whisper encoder", "window Q-Former", "QLoRA*+GC", "peak phase", "speech encoder", "generation"):
        assert name in text, name
    import json

    plans = json.loads(json_path.read_text(encoding="utf-8"))
    assert [p["spec"]["name"] for p in plans] == ["text-llama3-8b", "audio-llm-full", "wavlm-large"]
    assert all(p["spec"]["batch_size"] == 4 for p in plans)


def test_formatting_helpers():
    assert format_params(8_030_261_248) == "8.03 B"
    assert format_params(3_407_872) == "3.41 M"
    assert fits_on(20 * GIB) == "24 GB" and fits_on(30 * GIB) == "40 GB" and fits_on(81 * GIB) == "> 80 GB"


def test_recipe_plans_read_the_branch_config(tmp_path):
    """A recipe's plan is what its branch's typed config trains (``BranchSpec.plan``): LoRA from
    ``LLMConfig.lora_config()``, r 16 on all seven projections when the recipe names none (the old planner
    fell back to its own r 8 where only targets were given), LoRA on the top layers only (lora_top_layers,
    which the old planner ignored: backward stops at the lowest adapted layer), and a misspelt key refused
    as ``llmser train`` refuses it."""
    from pathlib import Path

    from llmser.models.registry import get_branch

    recipe = tmp_path / "text.yaml"
    recipe.write_text("branch: text_llm\nmodel:\n  llm: smol\n  lora_target_modules: [q_proj, v_proj]\n"
                      "data:\n  corpus: somewhere\n", encoding="utf-8")
    spec = spec_from_recipe(recipe)
    assert (spec.lora_r, spec.lora_alpha, spec.lora_target_modules, spec.lora_layers) == (16, 32, ["q_proj", "v_proj"], None)
    smol = spec_from_recipe(Path("adapters/text_smol.yaml"))
    assert smol.lora_layers == list(range(22, 30)) and smol.lora_r == 8
    top = build_plan(dataclasses.replace(smol, gradient_checkpointing=False))
    every = build_plan(dataclasses.replace(smol, gradient_checkpointing=False, lora_layers=None))
    assert top.trained_params("lora") * 30 == every.trained_params("lora") * 8
    kept = [p.estimate("lora", False).detail["activations: LLM layers"] for p in (top, every)]
    assert kept[0] * 30 == pytest.approx(kept[1] * 8)
    recipe.write_text("branch: text_llm\nmodel:\n  llm: smol\n  lora_rank: 8\ndata:\n  corpus: somewhere\n",
                      encoding="utf-8")
    with pytest.raises(ConfigError, match="lora_rank"):
        spec_from_recipe(recipe)
    assert get_branch("text_llm").plan_fn.__module__ == "llmser.models.text_llm.plan"
    with pytest.raises(NotImplementedError, match="no plan"):
        _ = get_branch("fusion").plan_fn


def test_audio_llm_head_mode_and_every_whisper_layer_are_planned(tmp_path):
    """The audio-LLM's recipe default (mode: head, encoder_layers: all) is what the plan sizes: its heads are a
    component with the real model's parameter count, no logits are planned in training, the vote is the heads'
    prompt vote, and keeping every Whisper layer per frame costs memory in the encoder phase and the step."""
    from llmser.models.registry import branch_config, get_branch, load_recipe

    recipe = tmp_path / "audio.yaml"
    recipe.write_text((Path(__file__).resolve().parents[1] / "adapters" / "audio_smol.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    head_all = spec_from_recipe(recipe, ["model.mode=head", "model.encoder_layers=all"])
    answer_last = spec_from_recipe(recipe, ["model.mode=answer", "model.encoder_layers=last"])
    assert (head_all.llm_mode, answer_last.llm_mode) == ("head", "answer")
    whisper_layers = resolve_config(head_all.whisper, "whisper").encoder_layers
    assert (head_all.encoder_hidden_states, answer_last.encoder_hidden_states) == (whisper_layers + 1, 1)

    loaded = load_recipe(recipe, ["model.mode=head", "model.encoder_layers=all"])
    model = get_branch("audio_llm").model_cls.from_config(branch_config(loaded))
    real = sum(p.numel() for m in (model.heads, model.speech.layer_weights) for p in m.parameters())
    plan, other = build_plan(head_all), build_plan(answer_last)
    heads = [c for c in plan.components if "head mode" in c.name]
    assert len(heads) == 1 and heads[0].counts["lora"].total == real
    # the recipe's freeze_speech_head: the LLM steps train the LLM-state head alone, as the engine's optimizer does
    assert head_all.freeze_speech_head and model.stage_one_only_modules()
    frozen = {id(p) for m in model.stage_one_only_modules() for p in m.parameters()}
    stage_two = sum(p.numel() for m in (model.heads, model.speech.layer_weights) for p in m.parameters()
                    if id(p) not in frozen)
    assert heads[0].counts["lora"].trained == stage_two == sum(p.numel() for p in model.heads.llm.parameters())
    unfrozen = build_plan(dataclasses.replace(head_all, freeze_speech_head=False))
    assert [c for c in unfrozen.components if "head mode" in c.name][0].counts["lora"].trained == real
    assert unfrozen.estimate("lora", False).optimizer > plan.estimate("lora", False).optimizer
    assert not any("head mode" in c.name for c in other.components)

    parts = plan.estimate("lora", False).detail
    assert "activations: LLM final norm + backward working set" in parts and "activations: LLM logits + loss" not in parts
    assert "activations: LLM logits + loss" in other.estimate("lora", False).detail
    assert "prompt voting" in plan.phases[("lora", False)] and "label scoring" in other.phases[("lora", False)]
    last = build_plan(dataclasses.replace(head_all, encoder_hidden_states=1))
    for phase in ("speech encoder", "train step"):
        assert plan.phases[("lora", False)][phase] > last.phases[("lora", False)][phase]
    # the ridge readout's closed-form fit is planned in host memory, for the clip counts given, with the real
    # model's readout width; answer mode has no readout and plans none
    assert set(plan.host) == {"ridge readout fit"} and not other.host
    from llmser.models.readout import RidgeReadout

    width = model.heads.readout.mean.numel()
    assert plan.workload["readout_features"] == width
    assert plan.host["ridge readout fit"] == RidgeReadout.fit_bytes(85_000, 30_000, width)["total"]
    small = build_plan(dataclasses.replace(head_all, train_clips=240, dev_clips=80))
    assert small.host["ridge readout fit"] == RidgeReadout.fit_bytes(240, 80, width)["total"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert plan_main([str(recipe), "--train-clips", "240", "--dev-clips", "80"]) == 0
    assert "host memory per process, planned: ridge readout fit 0.02 GiB (240 train + 80 dev clips x 1,920" in out.getvalue()
