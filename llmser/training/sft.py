"""Instruction tuning of the text branch with trl's ``SFTTrainer``: prompt -> verbalised label.

Each training row is a conversational prompt-completion pair (system + user turn rendered from a
prompt variant; the assistant turn is the label word), so trl computes the loss on the answer tokens
only (``completion_only_loss``). A variant is drawn per (seed, epoch, example) as in the head mode;
rows are materialised for as many epochs as ``max_steps`` needs. The LoRA adapter is saved in the
standard PEFT format; the test split is then predicted by constrained scoring and a vote over the
variants (``llmser.inference.prompting``). Launch like any llmser recipe: ``llmser train`` or
``accelerate launch -m llmser train`` (trl's trainer is Accelerate-native).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from llmser.models.llm.prompts import load_prompts
from llmser.models.text_llm.config import TextLLMBranchConfig
from llmser.models.text_llm.data import pick_variant, truncate_transcript
from llmser.recipe import Recipe
from llmser.utils.logging import get_logger

logger = get_logger(__name__)


def sft_rows(utterances: list, templates: list, tokenizer: Any, *, epochs: int, seed: int,
             max_transcript_tokens: int, balance_power: float | None = None) -> list[dict]:
    """Prompt-completion rows, one per labelled utterance and epoch, with a sampled variant each.

    With ``balance_power`` each epoch instead draws as many rows as there are labelled utterances,
    the class of each with probability proportional to ``n_c ** balance_power`` (0 = balanced, as the
    engine's ``ClassBalancedBatchSampler``): plain SFT learns the majority classes' words first, which
    macro-F1 punishes.
    """
    labelled = [(index, utt) for index, utt in enumerate(utterances) if utt.class_index is not None]
    specials = tuple(tokenizer.all_special_tokens)
    rows = []
    for epoch in range(epochs):
        order = labelled if balance_power is None else _balanced_draw(labelled, balance_power, seed, epoch)
        for slot, (index, utt) in enumerate(order):
            template = templates[pick_variant(len(templates), seed, epoch, index if balance_power is None else slot)]
            transcript = truncate_transcript(tokenizer, utt.transcript or "", max_transcript_tokens)
            rows.append({"prompt": template.messages(transcript, special_tokens=specials),
                         "completion": [{"role": "assistant", "content": template.answer(utt.emo_class)}]})
    return rows


def _balanced_draw(labelled: list, power: float, seed: int, epoch: int) -> list:
    """``len(labelled)`` items drawn class first (probability ~ n_c ** power), then uniformly in the class."""
    import numpy as np

    rng = np.random.default_rng([seed, epoch, 7919])
    pools: dict[int, list] = {}
    for item in labelled:
        pools.setdefault(item[1].class_index, []).append(item)
    classes = sorted(pools)
    weights = np.array([len(pools[c]) ** power for c in classes], dtype=np.float64)
    picks = rng.choice(len(classes), size=len(labelled), p=weights / weights.sum())
    return [pools[classes[c]][int(rng.integers(len(pools[classes[c]])))] for c in picks]


def sft_arguments(recipe: Recipe, config: TextLLMBranchConfig, output_dir: Path) -> Any:
    import torch
    from trl import SFTConfig

    optim, train = recipe.optim, recipe.train
    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and torch.cuda.is_bf16_supported() and train.mixed_precision in ("auto", "bf16")
    return SFTConfig(
        output_dir=str(output_dir), max_steps=train.max_steps, per_device_train_batch_size=recipe.data.batch_size,
        gradient_accumulation_steps=optim.gradient_accumulation_steps, learning_rate=optim.lr,
        weight_decay=optim.weight_decay, warmup_steps=optim.warmup_steps, max_grad_norm=optim.grad_clip or 0.0,
        lr_scheduler_type={"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}.get(
            optim.schedule, "cosine"),
        logging_steps=train.log_every, save_steps=train.save_every, save_total_limit=train.keep_checkpoints,
        seed=train.seed, data_seed=train.seed, report_to=list(train.log_with) or "none",
        use_cpu=not on_gpu, bf16=bf16, fp16=False,
        gradient_checkpointing=config.gradient_checkpointing,
        completion_only_loss=True, max_length=config.max_transcript_tokens + 384, packing=False,
        disable_tqdm=False, dataloader_num_workers=recipe.data.num_workers)


def run_sft(recipe: Recipe, config: TextLLMBranchConfig, corpus: Any, resume: str | None = None) -> dict[str, Any]:
    """Fine-tune with trl, save the adapter to ``output_dir/best``, predict and report the test split."""
    from trl import SFTTrainer

    from llmser.models.llm.adapter import save_lora
    from llmser.models.llm.identity import canonical_name
    from llmser.models.text_llm.branch import split_utterances
    from llmser.models.text_llm.model import TextLLMEmotionModel

    output_dir = Path(recipe.train.output_dir)
    train_utts, _, test_utts = split_utterances(recipe, corpus)
    templates = load_prompts(config.prompts, task="class", inputs="transcript", folder=config.prompt_dir)
    loaded = TextLLMEmotionModel.load_base(config)
    labelled = sum(u.class_index is not None for u in train_utts)
    per_epoch = max(1, math.ceil(labelled / recipe.data.batch_size))
    epochs = math.ceil(recipe.train.max_steps * recipe.optim.gradient_accumulation_steps / per_epoch) + 1
    from datasets import Dataset

    dataset = Dataset.from_list(sft_rows(train_utts, templates, loaded.tokenizer, epochs=epochs,
                                         seed=recipe.train.seed, max_transcript_tokens=config.max_transcript_tokens,
                                         balance_power=recipe.data.sampler_power if recipe.data.balanced_sampler
                                         else None))
    model = loaded.model
    if config.quantization != "none":
        from llmser.models.quantization import prepare_for_kbit_training

        model = prepare_for_kbit_training(model, gradient_checkpointing=config.gradient_checkpointing)
    trainer = SFTTrainer(model=model, args=sft_arguments(recipe, config, output_dir / "sft"),
                         train_dataset=dataset, processing_class=loaded.tokenizer,
                         peft_config=config.lora_config("CAUSAL_LM", model.config.num_hidden_layers))
    _guard(trainer.model)
    resume_from = _resume_point(output_dir / "sft", resume)
    trainer.train(resume_from_checkpoint=resume_from)
    result: dict[str, Any] = {"step": trainer.state.global_step, "train_loss": trainer.state.log_history[-1]
                              .get("train_loss") if trainer.state.log_history else None}
    best = output_dir / "best"
    if trainer.accelerator.is_main_process:
        best.mkdir(parents=True, exist_ok=True)
        save_lora(trainer.model, best, canonical_name(loaded.name))
        loaded.tokenizer.save_pretrained(str(best))
        config.save(best)
    trainer.accelerator.wait_for_everyone()
    if recipe.train.predict_test and test_utts and trainer.accelerator.is_main_process:
        result["test"] = predict_split(trainer.model, loaded.tokenizer, test_utts, config, output_dir,
                                       batch_size=recipe.data.eval_batch_size, max_tokens=recipe.data.eval_max_tokens)
    return result


def predict_split(model: Any, tokenizer: Any, utterances: list, config: TextLLMBranchConfig, output_dir: Path,
                  *, batch_size: int = 8, max_tokens: int | None = None,
                  title: str = "text_llm (sft) branch, test split") -> dict[str, Any]:
    """Vote over the prompt variants on a split, write ``test_predictions.csv`` and the report (the submission
    files for a blind split)."""
    from llmser.evaluation.report import report_or_submit
    from llmser.inference.prompting import predict_with_prompts

    templates = load_prompts(config.voting.select(list(config.prompts)), task="class", inputs="transcript",
                             folder=config.prompt_dir)
    ratings = load_prompts(task="attributes", inputs="transcript", folder=config.prompt_dir)
    predictions, _ = predict_with_prompts(model, tokenizer, [u.file_name for u in utterances],
                                          [u.transcript for u in utterances], templates, ratings,
                                          batch_size=batch_size, max_transcript_tokens=config.max_transcript_tokens,
                                          calibrate=config.calibrate, rule=config.voting.rule,
                                          answer_scoring=config.answer_scoring, max_tokens=max_tokens)
    predictions.write_csv(output_dir / "test_predictions.csv")
    from llmser.evaluation.report import summary_row

    report = report_or_submit(predictions, utterances, output_dir / "test", title=title)
    if report.get("blind"):
        return {"blind": True, "submission": report["submission"]}
    metrics = {k: v for k, v in summary_row("text_llm", report).items() if k != "system" and v is not None}
    return {"metrics": metrics, "report": str(output_dir / "test" / "report.md"), "macro_f1": metrics.get("macro_f1")}


def _guard(model: Any) -> None:
    from llmser.models.quantization import guard_cpu_4bit_gradients

    guard_cpu_4bit_gradients(model)


def _resume_point(sft_dir: Path, resume: str | None) -> str | bool | None:
    if resume is None:
        return None
    if resume == "latest":
        return True if any(sft_dir.glob("checkpoint-*")) else None
    return resume
