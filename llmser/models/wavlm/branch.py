"""How the engine trains the WavLM branch: model, datasets (cached when the encoder is frozen), collate."""

from __future__ import annotations

from functools import partial
from typing import Any

from llmser.data.examples import (
    AudioExampleDataset,
    CachedHiddenDataset,
    class_counts,
    class_labels,
    collate_hidden,
    collate_waveforms,
    fill_feature_cache,
    log_cropped,
    recipe_splits,
)
from llmser.models.branch import BranchSetup
from llmser.models.wavlm.config import WavLMBranchConfig
from llmser.models.wavlm.model import WavLMEmotionModel
from llmser.recipe import Recipe
from llmser.utils.logging import get_logger

logger = get_logger(__name__)


def prepare(recipe: Recipe, config: WavLMBranchConfig, corpus: Any, accelerator: Any) -> BranchSetup:
    data = recipe.data
    train_utts, eval_utts, test_utts = recipe_splits(recipe, corpus)
    model = WavLMEmotionModel.from_config(config)
    counts = class_counts(train_utts)
    labels = class_labels(train_utts)
    if accelerator.is_main_process:
        log_cropped(logger, train_utts + eval_utts + test_utts, data.max_seconds, "wavlm")

    augmenter = _augmenter(recipe)
    use_cache = model.encoder_is_frozen and data.feature_cache
    if use_cache and augmenter is not None:
        logger.warning("waveform augmentation is on, so the frozen encoder's features are not cached "
                       "(augmented audio changes every epoch); set data.augment off to cache them")
        use_cache = False
    if use_cache:
        cache = _fill_cache(model, train_utts + eval_utts + test_utts, recipe, accelerator)
        sets = [CachedHiddenDataset(u, cache) for u in (train_utts, eval_utts, test_utts)]
        collate = collate_hidden
    else:
        need = model.min_samples
        sets = [AudioExampleDataset(train_utts, max_seconds=data.max_seconds, augmenter=augmenter,
                                    seed=recipe.train.seed, min_samples=need),
                AudioExampleDataset(eval_utts, max_seconds=data.max_seconds, min_samples=need),
                AudioExampleDataset(test_utts, max_seconds=data.max_seconds, min_samples=need)]
        collate = partial(collate_waveforms, normalise=model.normalises_waveforms)
    return BranchSetup(model=model, train_set=sets[0], eval_set=sets[1] if eval_utts else None,
                       test_set=sets[2] if test_utts else None, collate_fn=collate, test_utterances=test_utts,
                       class_counts=counts, train_labels=labels)


def _augmenter(recipe: Recipe):
    from llmser.data.augment import WaveformAugmenter

    augment = recipe.data.augment
    return WaveformAugmenter(augment) if augment.any_enabled() else None


def _fill_cache(model: WavLMEmotionModel, utterances: list, recipe: Recipe, accelerator: Any):
    from llmser.data.feature_cache import FeatureCache, encoder_fingerprint

    cache = FeatureCache(recipe.data.cache_dir, encoder_fingerprint(model.encoder),
                         {"sample_rate": 16000, "max_seconds": recipe.data.max_seconds, "dtype": "float16",
                          "normalise": "utterance" if model.normalises_waveforms else "none"})
    fill_feature_cache(model, utterances, cache, max_seconds=recipe.data.max_seconds,
                       batch_size=recipe.data.eval_batch_size, rank=accelerator.process_index,
                       world_size=accelerator.num_processes, progress=accelerator.is_main_process)
    accelerator.wait_for_everyone()
    return cache


def audio_window_seconds(model: WavLMEmotionModel, recipe: Recipe) -> float | None:
    """The longest audio one example reads (data.max_seconds): longer files are predicted in windows."""
    return recipe.data.max_seconds


def predict_data(model: WavLMEmotionModel, recipe: Recipe, utterances: list) -> tuple[Any, Any]:
    """Dataset + collate that feed raw audio files to a trained model (``llmser predict``)."""
    dataset = AudioExampleDataset(utterances, max_seconds=recipe.data.max_seconds, min_samples=model.min_samples)
    return dataset, partial(collate_waveforms, normalise=model.normalises_waveforms)
