"""How the engine trains the text branch's head mode: model, prompted datasets, collate.

(``mode: sft`` is trained by trl instead; see ``llmser.training.sft``.)
"""

from __future__ import annotations

from typing import Any

from llmser.data.examples import class_counts, class_labels, recipe_splits
from llmser.models.branch import BranchSetup
from llmser.models.llm.prompts import load_prompts
from llmser.models.text_llm.config import TextLLMBranchConfig
from llmser.models.text_llm.data import (
    CachedStatesCollator,
    CachedStatesDataset,
    PromptCollator,
    PromptExampleDataset,
    resolve_transcripts,
)
from llmser.models.text_llm.model import TextLLMEmotionModel
from llmser.recipe import Recipe
from llmser.utils.logging import get_logger

logger = get_logger(__name__)


def split_utterances(recipe: Recipe, corpus: Any) -> tuple[list, list, list]:
    """Train/eval/test utterances of the recipe's splits, with transcripts checked (or made by ASR) up front."""
    return transcribed_splits(recipe, recipe_splits(recipe, corpus))


def transcribed_splits(recipe: Recipe, splits: tuple[list, list, list]) -> tuple[list, list, list]:
    """Each split with its missing transcripts handled as ``data.missing_transcripts`` says (error or asr)."""
    data = recipe.data
    return tuple(resolve_transcripts(utts, name, policy=data.missing_transcripts, asr=data.asr_model,
                                     cache_dir=data.cache_dir)
                 for name, utts in zip(("train", "eval", "test"), splits))


def prepare(recipe: Recipe, config: TextLLMBranchConfig, corpus: Any, accelerator: Any) -> BranchSetup:
    if config.mode != "head":
        raise ValueError("model.mode: sft trains with trl, not the engine; run it with `llmser train` "
                         "(which dispatches on the mode) rather than the engine directly")
    train_utts, eval_utts, test_utts = split_utterances(recipe, corpus)
    templates = load_prompts(config.prompts, task="class", inputs="transcript", folder=config.prompt_dir)
    model = TextLLMEmotionModel.from_config(config)
    tok = model.tokenizer

    def dataset(utts: list, train: bool) -> PromptExampleDataset:
        return PromptExampleDataset(utts, templates, tok, max_transcript_tokens=config.max_transcript_tokens,
                                    sample_variants=train, seed=recipe.train.seed)

    sets = [dataset(utts, train) if utts else None
            for utts, train in ((train_utts, True), (eval_utts, False), (test_utts, False))]
    collate: Any = PromptCollator(tok)
    if config.cache_lower_layers and model.cache_split is not None:
        sets = _with_cached_states(model, sets, recipe, accelerator)
        collate = CachedStatesCollator(tok)
    return BranchSetup(model=model, train_set=sets[0], eval_set=sets[1], test_set=sets[2], collate_fn=collate,
                       test_utterances=test_utts, class_counts=class_counts(train_utts),
                       train_labels=class_labels(train_utts))


def _with_cached_states(model: TextLLMEmotionModel, sets: list, recipe: Recipe, accelerator: Any) -> list:
    """Wrap the datasets to read the cached states entering the first tuned layer (filled on first access,
    for every (file, prompt variant) a set can yield): each epoch then runs only the top layers."""
    from functools import partial

    from llmser.models.llm.layer_cache import LayerStateCache, fill_layer_cache, frozen_fingerprint

    split = model.cache_split
    decoder = model.decoder()
    cache = LayerStateCache(recipe.data.cache_dir, frozen_fingerprint(decoder, split))
    fill = partial(fill_layer_cache, decoder, cache=cache, split=split, pad_token_id=model.tokenizer.pad_token_id or 0,
                   batch_size=recipe.data.eval_batch_size, progress=accelerator.is_main_process)
    layers = model.llm.get_base_model().config.num_hidden_layers
    logger.info("LLM layers 0-%d are frozen: their output is cached once per (file, prompt variant) in %s; "
                "training runs layers %d-%d on it", split - 1, cache.directory, split, layers - 1)
    return [CachedStatesDataset(s, cache, fill) if s is not None else None for s in sets]


def predict_data(model: TextLLMEmotionModel, recipe: Recipe, utterances: list) -> tuple[Any, Any]:
    """Dataset + collate for prediction: each file's transcript through the first prompt variant."""
    config = model.config
    templates = load_prompts(config.prompts, task="class", inputs="transcript", folder=config.prompt_dir)
    dataset = PromptExampleDataset(utterances, templates, model.tokenizer,
                                   max_transcript_tokens=config.max_transcript_tokens)
    return dataset, PromptCollator(model.tokenizer)
