"""Instruction-style prediction with an LLM: every prompt variant scores every label, the variants vote.

This is the zero-shot path (a base instruct model, no tuning) and the SFT path (the same model with
its LoRA adapter). Each class variant gives a probability over the 8 classes by constrained label
scoring (``LabelScorer``); the variants' plurality vote is the prediction, ties broken by summed
probability. Rating variants score the digits 1-7 for each attribute and take the expected rating.

``calibrate`` applies contextual calibration (Zhao et al., 2021, "Calibrate Before Use"): each
variant's probabilities are divided by what it answers for content-free transcripts ("N/A", "",
"[MASK]") and renormalised. A small instruct model answers most prompts with the same label whatever
the transcript (a variant's own bias); calibration removes that bias and keeps what the words add.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmser.evaluation.predictions import Predictions
from llmser.models.llm.prompts import RATINGS, PromptTemplate
from llmser.models.llm.scoring import LabelScorer
from llmser.models.text_llm.data import truncate_transcript
from llmser.models.voting import VoteResult
from llmser.models.voting import vote as vote_rule
from llmser.schema import ATTRIBUTES, CLASS_CODES
from llmser.utils.logging import get_logger

logger = get_logger(__name__)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


CONTENT_FREE_TRANSCRIPTS = ("N/A", "", "[MASK]")


def class_probabilities(scorer: LabelScorer, transcripts: Sequence[str], template: PromptTemplate,
                        progress: bool = True, calibrate: bool = False) -> np.ndarray:
    """(N, 8) class probabilities of one prompt variant, columns in ``CLASS_CODES`` order."""
    return variant_class_probabilities(scorer, transcripts, [template], progress, calibrate)[0]


def variant_class_probabilities(scorer: LabelScorer, transcripts: Sequence[str], templates: Sequence[PromptTemplate],
                                progress: bool = True, calibrate: bool = False) -> np.ndarray:
    """(K, N, 8) class probabilities of K variants, scored together: each variant's instruction is computed
    once for all files, and every batch of files runs through all variants in one forward."""
    with _progress(len(transcripts), ", ".join(t.name for t in templates), progress) as bar:
        probs = scorer.variant_probabilities(templates, transcripts, progress=bar)
    if calibrate:
        probs = np.stack([calibrated(p, content_free_probabilities(scorer, t)) for p, t in zip(probs, templates)])
    return probs


def content_free_probabilities(scorer: LabelScorer, template: PromptTemplate) -> np.ndarray:
    """(8,) the variant's mean answer distribution for content-free transcripts: its label bias."""
    return scorer.variant_probabilities([template], CONTENT_FREE_TRANSCRIPTS)[0].mean(axis=0)


def calibrated(probs: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Probabilities divided by a label bias and renormalised per row."""
    scaled = probs / np.clip(bias, 1e-12, None)
    return scaled / scaled.sum(axis=-1, keepdims=True)


def expected_ratings(scorer: LabelScorer, transcripts: Sequence[str], template: PromptTemplate,
                     progress: bool = True) -> np.ndarray:
    """(N, 3) expected 1-7 rating of each attribute under one rating variant."""
    values = np.array([float(r) for r in RATINGS])
    columns = []
    for attribute in ATTRIBUTES:
        with _progress(len(transcripts), f"{template.name}:{attribute}", progress) as bar:
            columns.append(scorer.variant_probabilities([template], transcripts, attribute, progress=bar)[0] @ values)
    return np.stack(columns, axis=1)


def predict_with_prompts(model: Any, tokenizer: Any, file_names: Sequence[str], transcripts: Sequence[str],
                         class_templates: Sequence[PromptTemplate],
                         rating_templates: Sequence[PromptTemplate] = (), *, batch_size: int = 8,
                         max_transcript_tokens: int = 128, progress: bool = True,
                         calibrate: bool = False, rule: str = "plurality",
                         answer_scoring: str = "first_token",
                         max_tokens: int | None = None) -> tuple[Predictions, VoteResult]:
    """Predictions over transcripts: the class by the variants' vote under ``rule`` (``vote_<variant>``
    columns kept), the attributes averaged over the rating variants (none when there are none);
    ``calibrate``: see above; ``answer_scoring``: whole answers or their first tokens (``LabelScorer``);
    ``max_tokens``: rows x padded tokens of one scoring forward (``data.eval_max_tokens``)."""
    scorer = LabelScorer(model, tokenizer, batch_size=batch_size, answer_scoring=answer_scoring, max_tokens=max_tokens)
    texts = [truncate_transcript(tokenizer, t or "", max_transcript_tokens) for t in transcripts]
    per_variant = variant_class_probabilities(scorer, texts, class_templates, progress, calibrate)
    vote = vote_rule(per_variant, [t.name for t in class_templates], rule)
    attributes = None
    if rating_templates:
        attributes = np.mean([expected_ratings(scorer, texts, t, progress) for t in rating_templates], axis=0)
    # The vote decides the class; the variants' mean probabilities keep the confidence for ensembles.
    predictions = Predictions(list(file_names), [CLASS_CODES[i] for i in vote.labels], vote.probs, attributes,
                              vote.vote_columns(CLASS_CODES))
    return predictions, vote


def load_prompting_model(llm: str = "smol", adapter: str | None = None, *, revision: str | None = None,
                         quantization: str = "none") -> tuple[Any, Any, list[str] | None]:
    """A base instruct model (zero-shot) or base + a saved text-branch adapter, ready to score.

    ``adapter`` is a saved text-branch folder or its Hub id; ``revision`` is the Hub revision of the
    adapter when one is given, else of ``llm``. Returns (model, tokenizer, the adapter's prompt variants or None).
    """
    from llmser.models.llm.adapter import load_lora
    from llmser.models.llm.loading import load_causal_lm

    if adapter is None:
        loaded = load_causal_lm(llm, revision=revision, quantization=quantization)
        return loaded.model, loaded.tokenizer, None
    from transformers import AutoTokenizer

    from llmser.models.text_llm.config import TextLLMBranchConfig
    from llmser.utils.hub import resolve_pretrained

    adapter = str(resolve_pretrained(adapter, revision))  # a Hub id or a folder (revision applies to the adapter)
    config = TextLLMBranchConfig.load(adapter)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    loaded = load_causal_lm(config.llm, revision=config.revision, quantization=quantization, tokenizer=tokenizer)
    return load_lora(loaded.model, adapter, config.llm), tokenizer, list(config.prompts)


def _trained_answer_scoring(adapter: str, revision: str | None) -> str:
    from llmser.models.text_llm.config import TextLLMBranchConfig
    from llmser.utils.hub import resolve_pretrained

    return TextLLMBranchConfig.load(str(resolve_pretrained(adapter, revision))).answer_scoring


def predict_corpus_split(corpus_dir: str, split: str, *, llm: str = "smol", adapter: str | None = None,
                         revision: str | None = None, prompts: list[str] | None = None, ratings: bool = True, batch_size: int = 8,
                         max_transcript_tokens: int = 128, limit: int | None = None,
                         calibrate: bool = False, missing_transcripts: str = "error", asr: str = "smol",
                         cache_dir: str = ".cache/llmser/features", answer_scoring: str | None = None
                         ) -> tuple[Predictions, list]:
    """Prompt-vote predictions for every file of a corpus split (and the utterances); files without a
    transcript stop the run naming them, or (``missing_transcripts="asr"``) get one from Whisper ``asr``."""
    from llmser.data.msp_podcast import MSPPodcast
    from llmser.models.llm.prompts import load_prompts
    from llmser.models.text_llm.config import DEFAULT_TEXT_PROMPTS
    from llmser.models.text_llm.data import resolve_transcripts

    corpus = MSPPodcast.from_folder(corpus_dir)
    utterances = corpus.utterances(corpus.resolve_split(split), task="all")[:limit]
    utterances = resolve_transcripts(utterances, split, policy=missing_transcripts, asr=asr, cache_dir=cache_dir,
                                     option="--missing-transcripts asr")
    model, tokenizer, trained_prompts = load_prompting_model(llm, adapter, revision=revision)
    if answer_scoring is None:  # an SFT adapter's recipe says how it is scored; zero-shot: first tokens (dev)
        answer_scoring = _trained_answer_scoring(adapter, revision) if adapter else "first_token"
    names = prompts or trained_prompts or list(DEFAULT_TEXT_PROMPTS)
    class_templates = load_prompts(names, task="class", inputs="transcript")
    rating_templates = load_prompts(task="attributes", inputs="transcript") if ratings else []
    predictions, _ = predict_with_prompts(model, tokenizer, [u.file_name for u in utterances],
                                          [u.transcript for u in utterances], class_templates, rating_templates,
                                          batch_size=batch_size, max_transcript_tokens=max_transcript_tokens,
                                          calibrate=calibrate, answer_scoring=answer_scoring)
    return predictions, utterances
