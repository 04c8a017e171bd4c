"""Examples for the audio-LLM: cached encoder frames + a prompt variant cut at its speech placeholder.

The encoders are frozen, so their frames are computed once per file into the engine's
``FeatureCache`` (key: audio file + both encoders' fingerprint + the audio limit) and every epoch
reads them from disk. Training draws one prompt variant per (seed, epoch, example), as the text
branch does; evaluation uses the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from llmser.data.examples import _targets, example_targets
from llmser.models.audio_llm.model import AudioLLMEmotionModel, pad_pieces, prompt_pieces
from llmser.models.text_llm.data import pick_variant, truncate_transcript


def speech_cache(model: AudioLLMEmotionModel, cache_dir: str | Path) -> Any:
    """The feature cache of ``model``'s frozen encoders (a new key whenever an encoder or the limit changes)."""
    from llmser.data.feature_cache import FeatureCache, encoder_fingerprint

    return FeatureCache(cache_dir, encoder_fingerprint(model.encoders),
                        {"sample_rate": 16000, "max_seconds": model.config.max_audio_seconds, "dtype": "float16",
                         "frames": "whisper+second" if model.encoders.second is not None else "whisper",
                         **({"layers": "all"} if model.encoders.all_layers else {})})


@torch.no_grad()
def fill_speech_cache(model: AudioLLMEmotionModel, utterances: Sequence, cache: Any, *, batch_size: int = 8,
                      rank: int = 0, world_size: int = 1, progress: bool = True) -> int:
    """Encode every utterance not yet cached (this rank's share) and store its frames (T, D) in float16."""
    from tqdm.auto import tqdm

    from llmser.data.audio import load_audio

    todo = [u for i, u in enumerate(utterances) if i % world_size == rank and u.audio_path not in cache]
    for start in tqdm(range(0, len(todo), batch_size), disable=not progress or not todo,
                      desc="caching speech frames", leave=False):
        chunk = todo[start:start + batch_size]
        waves = [load_audio(u.audio_path, max_seconds=model.config.max_audio_seconds) for u in chunk]
        frames, mask = model.encoders(waves)  # (B, T, D), (B, T)
        for i, utt in enumerate(chunk):
            cache.put(Path(utt.audio_path), {"frames": frames[i, : int(mask[i].sum())].to(torch.float16).cpu()})
    return len(todo)


class SpeechPromptDataset(Dataset):
    """Utterances -> cached frames + the chosen prompt variant's token ids around the speech + targets."""

    def __init__(self, utterances: Sequence, cache: Any, model: AudioLLMEmotionModel, *, sample_variants: bool = False,
                 seed: int = 0):
        self.utterances = list(utterances)
        self.cache = cache
        self.tokenizer = model.tokenizer
        self.templates = model.templates
        self.candidate_index = model.candidate_index
        self.max_transcript_tokens = model.config.max_transcript_tokens
        self.sample_variants = sample_variants
        self.variant = 0  # the prompt variant every example reads when variants are not sampled
        self.seed = seed
        self.epoch = 0
        self.voting = False  # examples also carry the transcript every voting variant reads

    def __len__(self) -> int:
        return len(self.utterances)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def with_voting(self, variants: Sequence[str]) -> SpeechPromptDataset:
        """A copy for ``AudioLLMEmotionModel.vote_batch``: the frames once per file and, where the voting
        ``variants`` read one, the transcript (each variant's prompt is built by the model)."""
        import copy

        voting = copy.copy(self)
        voting.voting = any("transcript" in t.inputs for t in self.templates if t.name in set(variants))
        return voting

    def variant_for(self, index: int) -> int:
        return pick_variant(len(self.templates), self.seed, self.epoch, index) if self.sample_variants else self.variant

    def __getitem__(self, index: int) -> dict[str, Any]:
        utt = self.utterances[index]
        segment = getattr(utt, "segment", None)  # a window of a long file (prediction only: EncodeOnRead)
        tensors = self.cache.get(utt.audio_path) if segment is None else self.cache.get(utt.audio_path, segment)
        if tensors is None:
            raise RuntimeError(f"no cached speech frames for {utt.audio_path}; run fill_speech_cache first")
        variant = self.variant_for(index)
        template = self.templates[variant]
        transcript = None
        if "transcript" in template.inputs:
            transcript = truncate_transcript(self.tokenizer, utt.transcript or "", self.max_transcript_tokens)
        before, after = prompt_pieces(self.tokenizer, template, transcript)
        extra = {"transcript": truncate_transcript(self.tokenizer, utt.transcript or "", self.max_transcript_tokens)} \
            if self.voting else {}
        return {**extra, "index": index, "file_name": utt.file_name, "frames": tensors["frames"], "before": before,
                "after": after, "candidate_index": self.candidate_index[variant], "variant": template.name,
                "variant_index": variant, **example_targets(utt)}


class SpeechPromptCollator:
    """Pad frames (B, T, D) with a frame mask, and the prompt pieces (re-packed left-padded by the model)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        lengths = [e["frames"].shape[0] for e in examples]
        dim = examples[0]["frames"].shape[1]
        frames = torch.zeros(len(examples), max(lengths), dim)
        mask = torch.zeros(len(examples), max(lengths), dtype=torch.bool)
        for i, e in enumerate(examples):
            frames[i, : lengths[i]] = e["frames"].float()
            mask[i, : lengths[i]] = True
        before_ids, before_mask, after_ids, after_mask = pad_pieces(
            self.tokenizer, [(e["before"], e["after"]) for e in examples])
        return {"speech_frames": frames, "frame_mask": mask, "before_ids": before_ids, "before_mask": before_mask,
                "after_ids": after_ids, "after_mask": after_mask,
                "candidate_index": torch.tensor([e["candidate_index"] for e in examples], dtype=torch.long),
                "variant_index": torch.tensor([e["variant_index"] for e in examples], dtype=torch.long),
                **({"transcripts": [e["transcript"] for e in examples]} if "transcript" in examples[0] else {}),
                **_targets(examples)}


class EncodeOnRead:
    """A stand-in for the feature cache at prediction time: encodes each file when it is read.

    Frames are rounded to float16 as the cache stores them, so a file gets the same prediction
    whether it went through training's cache or ``llmser predict``.
    """

    def __init__(self, model: AudioLLMEmotionModel):
        self.model = model

    @torch.no_grad()
    def get(self, audio_path: str | Path, segment: tuple[float, float] | None = None) -> dict[str, torch.Tensor]:
        """Frames of the file, or of its ``segment`` (start, seconds) when it is one window of a long file."""
        from llmser.data.examples import utterance_wave

        wave = utterance_wave(_FileSegment(Path(audio_path), segment), self.model.config.max_audio_seconds)
        frames, mask = self.model.encoders([wave])  # (1, T, D), (1, T)
        return {"frames": frames[0, : int(mask[0].sum())].to(torch.float16).cpu()}


class _FileSegment:
    """The two fields ``utterance_wave`` reads."""

    def __init__(self, audio_path: Path, segment: tuple[float, float] | None):
        self.audio_path = audio_path
        self.segment = segment
