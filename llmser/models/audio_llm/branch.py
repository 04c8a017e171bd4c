"""How the engine trains the audio-LLM branch: model, cached speech frames, prompted datasets, collate.

    llmser train adapters/audio_smol.yaml
    llmser train adapters/audio_smol.yaml model.inputs=speech+transcript
    accelerate launch --config_file scripts/accelerate/cpu_2proc.yaml -m llmser train adapters/audio_smol.yaml \
        data.batch_size=4

The engine's class loss reads ``class_logits``: the verbalised answers' log-likelihoods (see
``AudioLLMBranchConfig``). ``predict_with_voting`` scores a split with every prompt variant on one
shared encoding of each clip and takes their vote.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from llmser.data.examples import class_counts, class_labels, log_cropped, recipe_splits
from llmser.models.audio_llm.config import AudioLLMBranchConfig
from llmser.models.audio_llm.data import (
    SpeechPromptCollator,
    SpeechPromptDataset,
    fill_speech_cache,
    speech_cache,
)
from llmser.models.audio_llm.model import AudioLLMEmotionModel
from llmser.models.branch import BranchSetup
from llmser.recipe import Recipe
from llmser.utils.logging import get_logger

logger = get_logger(__name__)


def split_utterances(recipe: Recipe, corpus: Any, config: AudioLLMBranchConfig) -> tuple[list, list, list]:
    """Train/eval/test utterances; transcripts are checked up front when the prompts read them."""
    from llmser.models.text_llm.branch import transcribed_splits

    splits = recipe_splits(recipe, corpus)
    return transcribed_splits(recipe, splits) if "transcript" in config.inputs else splits


def prepare(recipe: Recipe, config: AudioLLMBranchConfig, corpus: Any, accelerator: Any) -> BranchSetup:
    if recipe.data.augment.any_enabled():
        logger.warning("the audio-LLM reads cached frozen-encoder frames; data.augment is ignored")
    train_utts, eval_utts, test_utts = split_utterances(recipe, corpus, config)
    if accelerator.is_main_process:
        log_cropped(logger, train_utts + eval_utts + test_utts, config.max_audio_seconds, "audio_llm")
    model = AudioLLMEmotionModel.from_config(config)
    model.encoders.to(accelerator.device)
    cache = speech_cache(model, recipe.data.cache_dir)
    fill_speech_cache(model, train_utts + eval_utts + test_utts, cache, batch_size=recipe.data.eval_batch_size,
                      rank=accelerator.process_index, world_size=accelerator.num_processes,
                      progress=accelerator.is_main_process)
    accelerator.wait_for_everyone()

    def dataset(utts: list, train: bool) -> SpeechPromptDataset:
        return SpeechPromptDataset(utts, cache, model, sample_variants=train, seed=recipe.train.seed)

    return BranchSetup(model=model, train_set=dataset(train_utts, True),
                       eval_set=dataset(eval_utts, False) if eval_utts else None,
                       test_set=dataset(test_utts, False) if test_utts else None,
                       collate_fn=SpeechPromptCollator(model.tokenizer), test_utterances=test_utts,
                       class_counts=class_counts(train_utts),
                       train_labels=class_labels(train_utts),
                       warmup_steps=config.speech_warmup_steps, warmup_lr=config.speech_warmup_lr,
                       warmup_eval_every=config.speech_warmup_eval_every,
                       fit_readout=model.has_readout)


@torch.no_grad()
def predict_with_voting(model: AudioLLMEmotionModel, utterances: Sequence, cache: Any, *, batch_size: int = 8,
                        progress: bool = True):
    """Predictions for ``utterances`` by the vote of the voting prompt variants (audio encoded once per clip;
    ``vote_batch``, in answer and head mode alike).

    Returns (Predictions with ``vote_<variant>`` columns, VoteResult over all utterances).
    """
    from tqdm.auto import tqdm

    from llmser.evaluation.predictions import Predictions
    from llmser.models.voting import vote
    from llmser.schema import CLASS_CODES

    dataset = SpeechPromptDataset(utterances, cache, model)
    collate = SpeechPromptCollator(model.tokenizer)
    device = next(model.speech.parameters()).device
    probs, attributes = [], []
    needs_text = any("transcript" in t.inputs for t in model.templates)
    for start in tqdm(range(0, len(dataset), batch_size), disable=not progress, desc="voting", leave=False):
        idx = range(start, min(start + batch_size, len(dataset)))
        batch = collate([dataset[i] for i in idx])
        texts = [utterances[i].transcript or "" for i in idx] if needs_text else None
        voted = model.vote_batch(batch["speech_frames"].to(device), batch["frame_mask"].to(device), transcripts=texts)
        probs.append(voted.variant_probs.transpose(0, 1).cpu().numpy())  # (K, b, 8)
        if voted.attributes is not None:
            attributes.append(voted.attributes.float().cpu().numpy())
    result = vote(np.concatenate(probs, axis=1), model.voting_variants, model.config.voting.rule)
    predictions = Predictions([u.file_name for u in utterances], [CLASS_CODES[i] for i in result.labels], result.probs,
                              np.concatenate(attributes) if attributes else None, result.vote_columns(CLASS_CODES))
    return predictions, result


def audio_window_seconds(model: AudioLLMEmotionModel, recipe: Recipe) -> float | None:
    """The longest audio one example reads (model.max_audio_seconds, at most Whisper's 30-s window)."""
    return model.config.max_audio_seconds


def predict_data(model: AudioLLMEmotionModel, recipe: Recipe, utterances: list) -> tuple[Any, Any]:
    """Dataset + collate for raw audio files (``llmser predict``): frames encoded as each file is read."""
    from llmser.models.audio_llm.data import EncodeOnRead

    return SpeechPromptDataset(utterances, EncodeOnRead(model), model), SpeechPromptCollator(model.tokenizer)
