"""The audio-LLM: frozen speech encoders -> window-level Q-Former -> speech tokens spliced into an LLM prompt.

Data flow for a batch (shapes as ``# (...)`` comments below)::

    encoder frames (B, T, D)  [Whisper (its last layer, or all side by side), + a second encoder; cached on disk]
      -> a learned weighted sum of Whisper's layers (``encoder_layers: all``)
      -> LayerNorm -> windows of w frames, stride s: (B*nW, w, D)
      -> Blip2QFormerModel: Q learned queries cross-attend each window: (B*nW, Q, Dq)
      -> (B, nW*Q, Dq) -> Linear -> (B, S, H) speech tokens
      -> spliced where the rendered prompt has ``<|speech|>``: [prompt before | speech | prompt after],
         left-padded, attention mask over the real tokens only
      -> LoRA LLM -> log-likelihood of each of the 8 verbalised answers (= ``class_logits``; ``mode: answer``)
         or its last state -> LLM head, added to a speech head on the pooled frames (``mode: head``, heads.py)

Scoring the answers. The prompts put most of their text (system turn, definitions, label list) before
the speech and only a one-line question after it, so the key/value states before the speech do not
depend on the clip: evaluation and voting compute them once per prompt variant (``PrefixCache``) and run, per
(variant, clip), only the speech tokens, the question and the answers - all answers packed in the same
forward behind a 4-D attention mask (``score_after_prefix``); ``class_logits`` are the answers' summed
log-likelihoods, end of turn included. Training (gradients on) runs the whole prompt and reads only
the first answer token from its last logits - the answers of a variant start with distinct tokens, so
this separates them, and no cache is kept for the backward pass (a cache repeated per answer cost ~5 GB
and minutes per step for SmolLM2 on CPU). The engine's class loss is then cross-entropy over the
answers' first tokens: the LM loss on the answer, normalised over the labels. If two answers of a
variant share a first token, training falls back to whole-answer scores. Voting (``vote``) encodes the
audio and runs the Q-Former once, then reuses the speech tokens for every prompt variant in one batch.

With ``speech_attention: isolated`` the speech tokens attend only to each other, in training and
scoring alike, so they do not depend on the variant: voting runs them once per clip and only each
variant's text after the speech (the 6-token chat tail with the ``speech_last_*`` prompts) per
(variant, clip) (``llmser.models.llm.isolated``); with ``answer_scoring: first_token`` evaluation reads
the answers' first tokens, as training does.

Saved layout (``save_pretrained``)::

    adapter_config.json, adapter_model.safetensors   # standard PEFT LoRA adapter (base = Hub id)
    speech_modules.safetensors                       # layer weights and norms, Q-Former, queries, projection, heads
    llmser_config.json                               # AudioLLMBranchConfig (branch "audio_llm")
    tokenizer files
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from llmser.models.audio_llm.config import AudioLLMBranchConfig
from llmser.models.audio_llm.heads import SpeechLLMHeads
from llmser.models.layers import EmotionHeads, EmotionOutput, LayerWeightedSum
from llmser.models.llm.isolated import (
    AFTER,
    BEFORE,
    INPUT,
    Instructions,
    Item,
    isolated_attention_mask,
    isolated_last_states,
    score_isolated_input,
)
from llmser.models.llm.member import LoRAMember
from llmser.models.llm.prompts import SPEECH_PLACEHOLDER, PromptTemplate, load_prompts
from llmser.models.llm.scoring import candidate_token_ids, prefix_positions
from llmser.models.voting import VotedOutput, voted_output
from llmser.models.whisper.loading import FRAMES_PER_SECOND
from llmser.schema import NUM_CLASSES
from llmser.utils.logging import get_logger

logger = get_logger(__name__)

SPEECH_MODULES = "speech_modules.safetensors"
SECOND_ENCODER_SEED = 2468


# ---------------------------------------------------------------------- frozen encoders


class SpeechEncoders(nn.Module):
    """Whisper's encoder plus an optional second encoder, frozen; frames (B, T, Dw [+ D2]) at 50 per second."""

    def __init__(self, whisper: Any, feature_extractor: Any, second: nn.Module | None = None,
                 all_layers: bool = False):
        super().__init__()
        self.whisper = whisper
        self.feature_extractor = feature_extractor
        self.second = second
        self.all_layers = all_layers  # frames hold every hidden state of Whisper side by side (encoder_layers: all)
        self.requires_grad_(False)

    @classmethod
    def from_config(cls, config: AudioLLMBranchConfig) -> SpeechEncoders:
        from llmser.models.whisper.loading import load_whisper_encoder

        loaded = load_whisper_encoder(config.whisper, revision=config.whisper_revision,
                                      window_seconds=config.encoder_window_seconds)
        return cls(loaded.encoder, loaded.feature_extractor, _second_encoder(config.second_encoder),
                   all_layers=config.encoder_layers == "all")

    @property
    def whisper_size(self) -> int:
        return int(self.whisper.config.d_model)

    @property
    def whisper_layers(self) -> int:
        """Whisper hidden states per frame: 1 (the last), or all of them (the embedding output + each layer)."""
        return int(self.whisper.config.encoder_layers) + 1 if self.all_layers else 1

    @property
    def second_size(self) -> int:
        return int(self.second.config.hidden_size) if self.second is not None else 0

    @torch.no_grad()
    def forward(self, waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames (B, T, D) of 16-kHz waves and their mask (B, T); T covers the longest real clip only.

        D = L * Dw [+ D2]: with ``all_layers`` Whisper's L hidden states are concatenated per frame."""
        from llmser.models.whisper.loading import log_mel

        self.eval()
        device = next(self.whisper.parameters()).device
        features, lengths = log_mel(self.feature_extractor, waves)
        out = self.whisper(features.to(device, self.whisper.dtype), output_hidden_states=self.all_layers)
        frames = torch.cat(out.hidden_states, -1) if self.all_layers else out.last_hidden_state  # (B, Tw, L*Dw)
        frames = frames.float()
        lengths = lengths.clamp(max=frames.shape[1])
        frames = frames[:, : int(lengths.max())]
        if self.second is not None:
            frames = torch.cat([frames, self._second_frames(waves, frames.shape[1], device)], dim=-1)
        mask = torch.arange(frames.shape[1])[None] < lengths[:, None]  # (B, T)
        return frames, mask.to(device)

    def _second_frames(self, waves: Sequence[np.ndarray], length: int, device: torch.device) -> torch.Tensor:
        from llmser.data.examples import normalise_wave

        limit = length * 320  # both encoders emit one frame per 20 ms
        sizes = [min(len(w), limit) for w in waves]
        values = torch.zeros(len(waves), max(sizes))
        attention = torch.zeros(len(waves), max(sizes), dtype=torch.long)
        for i, wave in enumerate(waves):
            values[i, : sizes[i]] = torch.from_numpy(normalise_wave(np.asarray(wave[: sizes[i]], np.float32)))
            attention[i, : sizes[i]] = 1
        hidden = self.second(values.to(device), attention_mask=attention.to(device)).last_hidden_state.float()
        return _fit_length(hidden, length)  # frame-aligned with Whisper: pad or crop, as SALMONN does


def _fit_length(frames: torch.Tensor, length: int) -> torch.Tensor:
    if frames.shape[1] >= length:
        return frames[:, :length]
    return nn.functional.pad(frames, (0, 0, 0, length - frames.shape[1]))


def _second_encoder(name: str | None) -> nn.Module | None:
    if name is None:
        return None
    if name == "wavlm-tiny":
        from transformers import WavLMConfig, WavLMModel

        from llmser.models.wavlm.config import TINY_WAVLM

        with torch.random.fork_rng(devices=[]):  # seeded: a saved tiny model rebuilds the same encoder
            torch.manual_seed(SECOND_ENCODER_SEED)
            return WavLMModel(WavLMConfig(**TINY_WAVLM)).eval()
    from transformers import AutoModel

    return AutoModel.from_pretrained(name, use_safetensors=True).eval()


# ---------------------------------------------------------------------- trainable speech modules


class WindowQFormer(nn.Module):
    """SALMONN's window-level Q-Former: learned queries attend to each window of encoder frames."""

    def __init__(self, config: AudioLLMBranchConfig, whisper_size: int, second_size: int, llm_hidden: int,
                 whisper_layers: int = 1):
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        hidden = config.qformer_hidden or whisper_size
        heads = config.qformer_heads or max(1, hidden // 64)
        if hidden % heads:
            raise ValueError(f"qformer_hidden={hidden} is not divisible by qformer_heads={heads}; set model.qformer_heads")
        self.window = max(1, round(config.window_seconds * FRAMES_PER_SECOND))  # 17 frames for 0.333 s
        self.stride = max(1, round(config.stride_seconds * FRAMES_PER_SECOND))
        self.num_queries = config.num_queries
        self.drop_partial = config.partial_window == "drop"
        self.ln_speech = nn.LayerNorm(whisper_size)
        self.ln_second = nn.LayerNorm(second_size) if second_size else None
        qconfig = Blip2QFormerConfig(hidden_size=hidden, num_hidden_layers=config.qformer_layers,
                                     num_attention_heads=heads, intermediate_size=config.qformer_intermediate or 4 * hidden,
                                     encoder_hidden_size=whisper_size + second_size, cross_attention_frequency=1)
        self.qformer = Blip2QFormerModel(qconfig)
        self.queries = nn.Parameter(torch.randn(1, config.num_queries, hidden) * qconfig.initializer_range)
        self.projection = nn.Linear(hidden, llm_hidden)
        self.whisper_size = whisper_size
        self.whisper_layers = whisper_layers
        self.layer_weights = LayerWeightedSum(whisper_layers) if whisper_layers > 1 else None

    @torch.no_grad()
    def match_embedding_scale(self, embeddings: torch.Tensor) -> None:
        """Initialise the projection so speech tokens start at the scale of the LLM's word embeddings.

        The Q-Former's outputs are layer-normed (std 1 per feature); with the default Linear init the
        speech tokens came out ~4x the norm of SmolLM2's word embeddings, and the untrained prompt
        then collapsed to one answer. Loading saved or SALMONN weights overwrites this init.
        """
        target = float(embeddings.detach().float().std())
        fan_in = self.projection.in_features
        self.projection.weight.normal_(0.0, target / math.sqrt(fan_in))
        self.projection.bias.zero_()

    def num_windows(self, frames: torch.Tensor) -> torch.Tensor:
        """Windows per clip for valid frame counts ``frames`` (B,): a trailing partial window is kept, or
        dropped (``partial_window: drop``, SALMONN's count); at least one window per clip either way."""
        extra = (frames - self.window).clamp(min=0)
        round_up = 0 if self.drop_partial else self.stride - 1
        return torch.div(extra + round_up, self.stride, rounding_mode="floor") + 1

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Speech tokens (B, S, H), their mask (B, S) and the Q-Former states (B, S, Dq) they come from."""
        frames = self._normalise(self.combine(frames.float()))  # (B, T, D)
        batch, _, dim = frames.shape
        counts = self.num_windows(frame_mask.sum(-1))  # (B,)
        n_windows = int(counts.max())
        length = (n_windows - 1) * self.stride + self.window
        frames = _fit_length(frames, length)
        fmask = _fit_length(frame_mask[..., None].float(), length)[..., 0]  # (B, L)
        windows = frames.unfold(1, self.window, self.stride).permute(0, 1, 3, 2)  # (B, nW, w, D)
        wmask = fmask.unfold(1, self.window, self.stride)  # (B, nW, w)
        windows = windows.reshape(batch * n_windows, self.window, dim)
        wmask = wmask.reshape(batch * n_windows, self.window)
        wmask = torch.where(wmask.sum(-1, keepdim=True) > 0, wmask, torch.ones_like(wmask))  # empty: dropped below
        queries = self.queries.expand(batch * n_windows, -1, -1)
        states = self.qformer(query_embeds=queries, encoder_hidden_states=windows,
                              encoder_attention_mask=wmask.long()).last_hidden_state  # (B*nW, Q, Dq)
        states = states.reshape(batch, n_windows * self.num_queries, -1)  # (B, S, Dq)
        token_mask = (torch.arange(n_windows, device=counts.device)[None] < counts[:, None])
        token_mask = token_mask.repeat_interleave(self.num_queries, dim=1)  # (B, S)
        return self.projection(states), token_mask, states

    def combine(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, L*Dw [+ D2]) cached frames -> (B, T, Dw [+ D2]): the learned weighted sum of Whisper's layers
        (the speech branch's ``LayerWeightedSum``); frames of the last layer only pass through."""
        if self.layer_weights is None:
            return frames
        split = self.whisper_layers * self.whisper_size
        layers = frames[..., :split].unflatten(-1, (self.whisper_layers, self.whisper_size))  # (B, T, L, Dw)
        return torch.cat([self.layer_weights(layers.permute(2, 0, 1, 3)), frames[..., split:]], dim=-1)

    def _normalise(self, frames: torch.Tensor) -> torch.Tensor:
        speech = self.ln_speech(frames[..., : self.whisper_size])
        if self.ln_second is None:
            return speech
        return torch.cat([speech, self.ln_second(frames[..., self.whisper_size:])], dim=-1)


class AnswerCalibration(nn.Module):
    """Each prompt variant's answer prior on real data, divided out of its answer probabilities at inference.

    A briefly trained audio-LLM answers most clips with the same label (the LLM's prior for the prompt
    outweighs what the few new speech tokens add; speech-only on the demo: one class for every test clip)
    although its probabilities still move with the speech. Dividing each variant's probabilities by its
    mean on held-out clips (the dev split; ``fit``) and renormalising - a prior correction, like
    contextual calibration (Zhao et al., 2021) with in-domain inputs - keeps that movement and balances
    the classes, which macro-F1 rewards. Not applied in training; uniform (a no-op) until fitted.
    After training, the engine fits every variant on the dev split (``llmser.training.run.calibrate_on_dev``);
    the first is the one its evaluation and ``llmser predict`` read, all of them vote.
    """

    def __init__(self, num_variants: int, num_classes: int):
        super().__init__()
        self.register_buffer("log_prior", torch.zeros(num_variants, num_classes))

    @property
    def fitted(self) -> bool:
        return bool(self.log_prior.abs().sum() > 0)

    def apply(self, log_scores: torch.Tensor, variant_index: torch.Tensor) -> torch.Tensor:
        """(B, C) answer log-scores minus each row's variant log-prior (softmax of it = calibrated probs)."""
        return log_scores - self.log_prior.to(log_scores.device)[variant_index]

    @torch.no_grad()
    def fit(self, probs: np.ndarray | torch.Tensor, variant: int) -> None:
        """Set ``variant``'s prior to the mean of its (N, C) uncalibrated probabilities on held-out clips."""
        mean = torch.as_tensor(np.asarray(probs), dtype=torch.float32).mean(0).clamp_min(1e-6)
        self.log_prior[variant] = (mean / mean.sum()).log() + math.log(mean.numel())  # uniform prior -> 0


class AttributeHead(nn.Module):
    """Arousal/valence/dominance from the mean Q-Former state of the real speech tokens (task 2)."""

    def __init__(self, size: int, hidden: int, dropout: float):
        super().__init__()
        self.heads = EmotionHeads(size, hidden, dropout, classes=False, attributes=True)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = mask.float()[..., None]  # (B, S, 1)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, Dq)
        return self.heads(pooled)[1], pooled


# ---------------------------------------------------------------------- the model


class AudioLLMEmotionModel(LoRAMember):
    """Encoders (frozen) + Q-Former/projection (trainable) + LoRA LLM. ``from_config`` / ``from_pretrained``
    (``LoRAMember``)."""

    config_cls = AudioLLMBranchConfig
    modules_file = SPEECH_MODULES
    saved_by = "AudioLLMEmotionModel"
    branch_kind = ("audio_llm", "an audio-LLM model")

    def __init__(self, config: AudioLLMBranchConfig, encoders: SpeechEncoders, llm: Any, tokenizer: Any, base_name: str):
        super().__init__(config, llm, tokenizer, base_name)
        self.encoders = encoders
        hidden = llm.get_base_model().config.hidden_size
        self.speech = WindowQFormer(config, encoders.whisper_size, encoders.second_size, hidden, encoders.whisper_layers)
        self.speech.match_embedding_scale(llm.get_input_embeddings().weight)
        dq = self.speech.queries.shape[-1]
        self.head_mode = config.mode == "head"
        # head mode: heads on the pooled speech + the LLM state; answer mode: an attribute head on the speech tokens
        readout_size = (encoders.whisper_layers * encoders.whisper_size + encoders.second_size
                        if config.attribute_readout == "ridge" else None)  # head mode only (SpeechLLMHeads)
        self.heads = SpeechLLMHeads(encoders.whisper_size, hidden, config.head_hidden_size, config.dropout,
                                    config.attribute_head, config.pooling_attention_size,
                                    readout_size) if self.head_mode else None
        self.attribute_head = AttributeHead(dq, config.head_hidden_size, config.dropout) \
            if config.attribute_head and not self.head_mode else None
        self.speech_class_head = (EmotionHeads(dq, config.head_hidden_size, config.dropout, attributes=False)
                                  if config.speech_class_head else None)
        for module in self.stage_one_only_modules():  # trained by stage 1 (warmup_parameters), kept in stage 2
            module.requires_grad_(False)
        self.templates = class_templates(config)
        # answer priors fitted on dev (answer mode; the head mode's class loss is already class-weighted)
        self.calibration = None if self.head_mode else AnswerCalibration(len(self.templates), NUM_CLASSES)
        config.prompts = [t.name for t in self.templates]  # the resolved variants are saved with the weights
        self.candidates, self.candidate_index = answer_table(tokenizer, self.templates)
        self.first_tokens_distinct = all(len({self.candidates[i][0] for i in row}) == len(row)
                                         for row in self.candidate_index)
        if not self.first_tokens_distinct and config.answer_scoring == "first_token":
            raise ValueError("answer_scoring: first_token needs answers with distinct first tokens, but two answers of "
                             "a prompt variant share theirs; use answer_scoring: whole or change the verbalisation")
        if not self.first_tokens_distinct:
            logger.warning("two answers of a prompt variant share their first token; training scores whole "
                           "answers on a repeated prefix cache (slower, more memory)")

    @classmethod
    def frozen_parts(cls, config: AudioLLMBranchConfig) -> dict[str, Any]:
        return {"encoders": SpeechEncoders.from_config(config)}

    @property
    def variant_names(self) -> list[str]:
        return [t.name for t in self.templates]

    def trained_modules(self) -> nn.ModuleDict:
        """Everything trained besides LoRA (what ``speech_modules.safetensors`` holds)."""
        modules = {"speech": self.speech, "heads": self.heads, "attribute_head": self.attribute_head,
                   "speech_class_head": self.speech_class_head, "calibration": self.calibration}
        return nn.ModuleDict({name: module for name, module in modules.items() if module is not None})

    def speech_heads(self, states: torch.Tensor, token_mask: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor,
                                                                                    torch.Tensor | None]:
        """What the Q-Former states give without the LLM: the attribute head's predictions, the pooled state
        (mean over real speech tokens; fusion's embedding) and the auxiliary class head's logits."""
        attributes, pooled = self.attribute_head(states, token_mask) if self.attribute_head is not None else \
            (None, _masked_mean(states, token_mask))
        logits = self.speech_class_head(pooled)[0] if self.speech_class_head is not None else None
        return attributes, pooled, logits

    def stage_one_only_modules(self) -> list[nn.Module]:
        """``freeze_speech_head``: the speech head, its pooling and the layer weights, which only stage 1 trains."""
        if not (self.head_mode and self.config.freeze_speech_head):
            return []
        return [m for m in (self.heads.speech, self.heads.pooling, self.speech.layer_weights) if m is not None]

    def warmup_parameters(self) -> list[nn.Parameter]:
        """What stage 1 trains (``speech_warmup_steps``): the Q-Former side and the speech heads, not LoRA (with
        ``freeze_speech_head`` also the speech side that stage 2 keeps frozen)."""
        kept = {id(p) for m in self.stage_one_only_modules() for p in m.parameters()}
        return [p for name, module in self.trained_modules().items() if name != "calibration"
                for p in module.parameters() if p.requires_grad or id(p) in kept]

    def warmup_outputs(self, speech_frames: torch.Tensor, frame_mask: torch.Tensor, **_: object) -> EmotionOutput:
        """Stage 1's outputs, with no LLM forward. Answer mode: the auxiliary class head's logits stand as the
        class logits and the attribute head's predictions as the attributes, both read from the mean Q-Former
        state. Head mode: the speech head's outputs (pooled encoder frames), the auxiliary head on the Q-Former."""
        if self.head_mode:
            pooled = self.pool_speech(speech_frames, frame_mask)
            logits, attributes = self.heads.speech_only(pooled, self.readout_inputs(speech_frames, frame_mask))
            return EmotionOutput(class_logits=logits, attributes=attributes, embedding=pooled,
                                 auxiliary_class_logits=self._auxiliary(speech_frames, frame_mask))
        _, token_mask, states = self.speech(speech_frames, frame_mask)
        attributes, pooled, logits = self.speech_heads(states, token_mask)
        return EmotionOutput(class_logits=logits, attributes=attributes, embedding=pooled)

    def pool_speech(self, speech_frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """Head mode: (B, T, D) cached frames -> (B, 2Dw) attentive statistics of the layer-weighted Whisper frames."""
        frames = self.speech.combine(speech_frames.float())[..., : self.speech.whisper_size]
        return self.heads.pool(frames, frame_mask)

    @property
    def has_readout(self) -> bool:
        """Head mode with ``attribute_readout: ridge`` (and attributes): training fits ``heads.readout`` first."""
        return self.heads is not None and self.heads.readout is not None

    def readout_inputs(self, speech_frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor | None:
        """With a readout: (B, T, D) cached frames -> (B, D) their clip means (every Whisper layer, and the second
        encoder, side by side): what the ridge readout reads. None otherwise."""
        if not self.has_readout:
            return None
        return _masked_mean(speech_frames.float(), frame_mask)

    def _auxiliary(self, speech_frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor | None:
        """The auxiliary class head's logits on the mean Q-Former state (trains the Q-Former in stage 1)."""
        if self.speech_class_head is None:
            return None
        _, token_mask, states = self.speech(speech_frames, frame_mask)
        return self.speech_class_head(_masked_mean(states, token_mask))[0]

    # ------------------------------------------------------------------ forward

    def splice(self, tokens: torch.Tensor, token_mask: torch.Tensor, before_ids: torch.Tensor,
               before_mask: torch.Tensor, after_ids: torch.Tensor, after_mask: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """[prompt before | speech tokens | prompt after] per row, left-padded: embeds (B, L, H), mask (B, L)."""
        embeds, mask, _ = self.splice_with_segments(tokens, token_mask, before_ids, before_mask, after_ids, after_mask)
        return embeds, mask

    def splice_with_segments(self, tokens: torch.Tensor, token_mask: torch.Tensor, before_ids: torch.Tensor,
                             before_mask: torch.Tensor, after_ids: torch.Tensor, after_mask: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``splice`` plus each position's segment (B, L): BEFORE (the instruction), INPUT (the speech), AFTER (the
        text after it), or -1 for padding."""
        embed = self.llm.get_input_embeddings()
        parts = [embed(before_ids), tokens.to(embed.weight.dtype), embed(after_ids)]
        embeds = torch.cat(parts, dim=1)  # (B, Lb + S + La, H) with holes
        mask = torch.cat([before_mask.bool(), token_mask.bool(), after_mask.bool()], dim=1)
        segments = torch.cat([torch.full_like(m, segment, dtype=torch.long) for m, segment in
                              ((before_mask, BEFORE), (token_mask, INPUT), (after_mask, AFTER))], dim=1)
        # Stable sort moves each row's padding to the left and keeps its real tokens in order.
        order = torch.argsort(mask.int(), dim=1, stable=True)
        embeds = embeds.gather(1, order[..., None].expand_as(embeds))
        mask = mask.gather(1, order)
        segments = segments.gather(1, order).masked_fill(~mask, -1)
        keep = int(mask.sum(-1).max())
        return embeds[:, -keep:], mask[:, -keep:].long(), segments[:, -keep:]

    def forward(self, speech_frames: torch.Tensor, frame_mask: torch.Tensor, before_ids: torch.Tensor,
                before_mask: torch.Tensor, after_ids: torch.Tensor, after_mask: torch.Tensor,
                candidate_index: torch.Tensor, variant_index: torch.Tensor | None = None, **_: object) -> EmotionOutput:
        if self.head_mode:
            return self.head_forward(speech_frames, frame_mask, before_ids, before_mask, after_ids, after_mask)
        tokens, token_mask, states = self.speech(speech_frames, frame_mask)
        if not torch.is_grad_enabled() and not self.training:  # evaluation: instructions from the prefix cache
            befores = [ids[m.bool()].tolist() for ids, m in zip(before_ids, before_mask)]
            afters = [ids[m.bool()].tolist() for ids, m in zip(after_ids, after_mask)]
            sets, row_set = candidate_index.unique(dim=0, return_inverse=True)
            answer_sets = [[self.candidates[i] for i in row] for row in sets.tolist()]
            class_logits = self.score_prompts(tokens, token_mask, befores, afters, answer_sets, row_set)
        else:
            pieces = (before_ids, before_mask, after_ids, after_mask)
            if not self.first_tokens_distinct:
                if self.isolated:
                    raise ValueError("speech_attention: isolated trains on the answers' first tokens, but two answers "
                                     "of a prompt variant share their first token; change the verbalisation or use "
                                     "speech_attention: causal")
                class_logits = self.answer_log_likelihoods(*self.splice(tokens, token_mask, *pieces), candidate_index)
            else:
                class_logits = self.first_token_log_probs(
                    *self.splice_with_segments(tokens, token_mask, *pieces)).gather(1, candidate_index)
        if not self.training and variant_index is not None and self.calibration.fitted:
            class_logits = self.calibration.apply(class_logits, variant_index)
        attributes, pooled, auxiliary = self.speech_heads(states, token_mask)
        return EmotionOutput(class_logits=class_logits, attributes=attributes, embedding=pooled,
                             auxiliary_class_logits=auxiliary)

    def head_forward(self, speech_frames: torch.Tensor, frame_mask: torch.Tensor, before_ids: torch.Tensor,
                     before_mask: torch.Tensor, after_ids: torch.Tensor, after_mask: torch.Tensor) -> EmotionOutput:
        """Head mode: the heads read the pooled speech and the LLM's last state after each row's prompt."""
        tokens, token_mask, states = self.speech(speech_frames, frame_mask)
        pooled = self.pool_speech(speech_frames, frame_mask)
        if self.isolated and not torch.is_grad_enabled() and not self.training:  # instructions from the cache
            pieces = [[(ids[m.bool()].tolist(), after[am.bool()].tolist())]
                      for ids, m, after, am in zip(before_ids, before_mask, after_ids, after_mask)]
            state = self.isolated_states(tokens, token_mask, pieces)[:, 0]
        else:
            pieces = (before_ids, before_mask, after_ids, after_mask)
            state = self.last_state(*self.splice_with_segments(tokens, token_mask, *pieces))
        logits, attributes = self.heads(pooled, state, self.readout_inputs(speech_frames, frame_mask))
        auxiliary = self.speech_class_head(_masked_mean(states, token_mask))[0] if self.speech_class_head else None
        return EmotionOutput(class_logits=logits, attributes=attributes, embedding=self.heads.embedding(pooled, state),
                             auxiliary_class_logits=auxiliary)

    def last_state(self, embeds: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """(B, L) spliced left-padded prompts -> (B, H) float32 final state of each prompt's last token."""
        attention = isolated_attention_mask(mask, segments, embeds.dtype) if self.isolated else mask
        out = self.decoder()(inputs_embeds=embeds, attention_mask=attention, position_ids=prefix_positions(mask),
                             use_cache=False)
        return out.last_hidden_state[:, -1].float()

    @torch.no_grad()
    def isolated_states(self, tokens: torch.Tensor, token_mask: torch.Tensor,
                        pieces: Sequence[Sequence[tuple[list[int], list[int]]]]) -> torch.Tensor:
        """(B, K, H) last states of K prompts ``pieces[b][k]`` = (before, after) per clip, the speech run once."""
        instructions, prefixes = self._instructions(pieces)
        items = [[Item(prefixes.index(tuple(before)) if before else None, after, 0) for before, after in row]
                 for row in pieces]
        embeds = tokens.to(self.llm.get_input_embeddings().weight.dtype)
        return isolated_last_states(self.decoder(), self.llm.get_input_embeddings(), instructions, embeds,
                                    token_mask, items)

    def _instructions(self, pieces: Sequence[Sequence[tuple[list[int], list[int]]]]
                      ) -> tuple[Instructions | None, list[tuple[int, ...]]]:
        """The distinct instructions (text before the speech) of ``pieces``, joined from ``prefix_cache``."""
        prefixes = list(dict.fromkeys(tuple(before) for row in pieces for before, _ in row if before))
        if not prefixes:
            return None, prefixes
        return self.prefix_cache.derived(("isolated", tuple(prefixes)), lambda: Instructions.join(
            self.llm, self.prefix_cache.states(self.llm, prefixes))), prefixes

    @property
    def isolated(self) -> bool:
        return self.config.speech_attention == "isolated"

    def first_token_log_probs(self, embeds: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """(B, U) log-probability of each answer's first token: one prompt forward, no cache to repeat.

        With isolated speech attention, the speech tokens (``segments`` == INPUT) see only each other.
        """
        attention = isolated_attention_mask(mask, segments, embeds.dtype) if self.isolated else mask
        out = self.llm(inputs_embeds=embeds, attention_mask=attention, position_ids=prefix_positions(mask),
                       use_cache=False, logits_to_keep=1)
        first = torch.tensor([c[0] for c in self.candidates], device=embeds.device)
        return out.logits[:, -1].float().log_softmax(-1)[:, first]

    def answer_log_likelihoods(self, embeds: torch.Tensor, mask: torch.Tensor,
                               candidate_index: torch.Tensor) -> torch.Tensor:
        """(B, 8) summed log-probability of each row's answers (all tokens, end of turn included)."""
        from llmser.models.llm.scoring import score_with_prefix_cache

        used = candidate_index.unique()  # only the answer sets of the variants in this batch
        # score_with_prefix_cache runs under no_grad; its undecorated function keeps gradients (fallback).
        score = score_with_prefix_cache.__wrapped__ if torch.is_grad_enabled() else score_with_prefix_cache
        scores = score(self.llm, mask, [self.candidates[i] for i in used.tolist()],
                                         inputs_embeds=embeds, pad_token_id=self.tokenizer.pad_token_id)
        position = torch.full((len(self.candidates),), -1, dtype=torch.long, device=scores.device)
        position[used] = torch.arange(len(used), device=scores.device)
        return scores.gather(1, position[candidate_index])

    # ------------------------------------------------------------------ voting inference

    @torch.no_grad()
    def vote_probabilities(self, speech_frames: torch.Tensor, frame_mask: torch.Tensor,
                           templates: Sequence[PromptTemplate] | None = None,
                           transcripts: Sequence[str] | None = None, calibrated: bool = True) -> np.ndarray:
        """(K, B, 8) class probabilities of K prompt variants, the audio encoded once and shared.

        The encoders and the Q-Former run once per clip. Each variant's prompt text before the speech
        (system turn, instruction, definitions, label list) does not depend on the clip: its key/value
        states are computed once and kept (``prefix_cache``). What remains per (variant, clip) - the
        speech tokens, the prompt's text after the speech and the eight answers - runs in one forward for all variants
        and clips (``score_after_prefix``).
        """
        templates = list(templates or self.templates)
        self.eval()
        if self.head_mode:
            return self.head_variant_outputs(speech_frames, frame_mask, templates, transcripts)[0]
        tokens, token_mask, _ = self.speech(speech_frames, frame_mask)  # once per clip
        return self.variant_probabilities(tokens, token_mask, templates, transcripts, calibrated)

    @torch.no_grad()
    def head_variant_outputs(self, speech_frames: torch.Tensor, frame_mask: torch.Tensor,
                             templates: Sequence[PromptTemplate], transcripts: Sequence[str] | None = None
                             ) -> tuple[np.ndarray, torch.Tensor | None, torch.Tensor]:
        """Head mode: each of K variants' probabilities (K, B, 8) and attributes (B, K, 3), and the mean
        embedding (B, D); the speech is encoded and pooled once per clip."""
        tokens, token_mask, _ = self.speech(speech_frames, frame_mask)
        pooled = self.pool_speech(speech_frames, frame_mask)  # (B, 2Dw)
        batch, k = tokens.shape[0], len(templates)
        texts = list(transcripts) if transcripts is not None else [None] * batch
        pieces = [[prompt_pieces(self.tokenizer, t, text) for t in templates] for text in texts]
        if self.isolated:
            states = self.isolated_states(tokens, token_mask, pieces)  # (B, K, H)
        else:  # causal: each variant's whole prompt runs
            states = torch.stack([self.last_state(*self.splice_with_segments(
                tokens, token_mask, *pad_pieces(self.tokenizer, [row[j] for row in pieces], device=tokens.device)))
                for j in range(k)], dim=1)
        pooled = pooled.repeat_interleave(k, dim=0)  # (B*K, 2Dw), row b*K + j
        readout = self.readout_inputs(speech_frames, frame_mask)
        readout = readout.repeat_interleave(k, dim=0) if readout is not None else None
        flat = states.reshape(batch * k, -1)
        logits, attributes = self.heads(pooled, flat, readout)
        probs = logits.float().softmax(-1).view(batch, k, -1).transpose(0, 1).cpu().numpy()
        per_variant = attributes.view(batch, k, -1) if attributes is not None else None
        return probs, per_variant, self.heads.embedding(pooled, flat).view(batch, k, -1).mean(1)

    @torch.no_grad()
    def variant_probabilities(self, tokens: torch.Tensor, token_mask: torch.Tensor,
                              templates: Sequence[PromptTemplate], transcripts: Sequence[str] | None = None,
                              calibrated: bool = True) -> np.ndarray:
        """(K, B, 8) probabilities of K variants on speech tokens (B, S, H) computed once per clip."""
        batch = tokens.shape[0]
        texts = list(transcripts) if transcripts is not None else [None] * batch
        answer_sets = list(dict.fromkeys(t.candidates for t in templates))
        answer_ids = [candidate_token_ids(self.tokenizer, c) for c in answer_sets]
        repeat = len(templates)
        if self.isolated:  # the speech runs once per clip, every variant's text after it in the same forward
            pieces = [[prompt_pieces(self.tokenizer, t, text) for t in templates] for text in texts]
            sets = [[answer_sets.index(t.candidates) for t in templates]] * batch
            scores = self.score_isolated(tokens, token_mask, pieces, sets, answer_ids)  # (B, K, 8)
            scores = scores.transpose(0, 1).reshape(repeat * batch, -1)
            return self._finish_vote(scores, templates, batch, calibrated)
        pieces = [prompt_pieces(self.tokenizer, t, text) for t in templates for text in texts]  # row k*B + b
        row_set = torch.tensor([answer_sets.index(t.candidates) for t in templates]).repeat_interleave(batch)
        scores = self.score_prompts(tokens.repeat(repeat, 1, 1), token_mask.repeat(repeat, 1),
                                    [before for before, _ in pieces], [after for _, after in pieces],
                                    answer_ids, row_set)
        return self._finish_vote(scores, templates, batch, calibrated)

    def _finish_vote(self, scores: torch.Tensor, templates: Sequence[PromptTemplate], batch: int,
                     calibrated: bool) -> np.ndarray:
        """(K*B, 8) answer log-scores, row k*B + b -> (K, B, 8) probabilities, calibrated per variant."""
        if calibrated and self.calibration.fitted:
            scores = self.calibration.apply(scores, self._variant_indices(templates).repeat_interleave(batch))
        return scores.softmax(-1).view(len(templates), batch, -1).cpu().numpy()

    @torch.no_grad()
    def score_prompts(self, tokens: torch.Tensor, token_mask: torch.Tensor, befores: Sequence[list[int]],
                      afters: Sequence[list[int]], answer_sets: Sequence[list[list[int]]], row_set: torch.Tensor
                      ) -> torch.Tensor:
        """(N, 8) answer log-likelihoods of N prompts [before | speech tokens | after] (token ids per row).

        The text before the speech comes from ``prefix_cache``; the speech, the text after it and the
        answers ``answer_sets[row_set[n]]`` run in one forward (``score_after_prefix``).
        """
        from llmser.models.llm.scoring import score_after_prefix

        if self.isolated:
            pieces = [[(before, after)] for before, after in zip(befores, afters)]
            return self.score_isolated(tokens, token_mask, pieces, row_set[:, None].tolist(), answer_sets)[:, 0]
        answer_sets = self.scored_answers(answer_sets)
        if not all(befores):  # a prompt that starts with the speech (no chat template): the whole prompt runs
            pieces = pad_pieces(self.tokenizer, list(zip(befores, afters)), device=tokens.device)
            embeds, mask = self.splice(tokens, token_mask, *pieces)
            return score_after_prefix(self.llm, None, None, embeds, mask, answer_sets, row_set)
        cache, prefix_mask = self.prefix_cache.batch(self.llm, befores)
        empty = [([], ids) for ids in afters]
        embeds, mask = self.splice(tokens, token_mask, *pad_pieces(self.tokenizer, empty, device=tokens.device))
        return score_after_prefix(self.llm, cache, prefix_mask, embeds, mask, answer_sets, row_set)

    @torch.no_grad()
    def score_isolated(self, tokens: torch.Tensor, token_mask: torch.Tensor,
                       pieces: Sequence[Sequence[tuple[list[int], list[int]]]], sets: Sequence[Sequence[int]],
                       answer_sets: Sequence[list[list[int]]]) -> torch.Tensor:
        """(B, K, 8) answer log-likelihoods of K prompts ``pieces[b][k]`` = (before, after) token ids per clip b.

        Isolated speech attention: the speech tokens never see the instruction, so they run once per clip
        whatever the prompt; each instruction comes from ``prefix_cache`` (joined and moved into place once
        per set of prompts), and every prompt's text after the speech and its answers
        ``answer_sets[sets[b][k]]`` run in the same forward (``score_isolated_input``).
        """
        answer_sets = self.scored_answers(answer_sets)
        instructions, prefixes = self._instructions(pieces)
        items = [[Item(prefixes.index(tuple(before)) if before else None, after, g)
                  for (before, after), g in zip(row, row_sets)] for row, row_sets in zip(pieces, sets)]
        embeds = tokens.to(self.llm.get_input_embeddings().weight.dtype)
        return score_isolated_input(self.llm, instructions, embeds, token_mask, items, answer_sets)

    def scored_answers(self, answer_sets: Sequence[list[list[int]]]) -> list[list[list[int]]]:
        """The answers' token sequences as evaluation scores them: whole, or the first token only."""
        if self.config.answer_scoring == "first_token":
            return [[ids[:1] for ids in answers] for answers in answer_sets]
        return list(answer_sets)

    def _variant_indices(self, templates: Sequence[PromptTemplate]) -> torch.Tensor:
        names = [t.name for t in self.templates]
        missing = [t.name for t in templates if t.name not in names]
        if missing:
            raise ValueError(f"prompt variants {missing} are not this model's ({names}); their answers were "
                             "never calibrated - vote with the model's own variants or pass calibrated=False")
        return torch.tensor([names.index(t.name) for t in templates])

    @torch.no_grad()
    def vote_batch(self, speech_frames: torch.Tensor, frame_mask: torch.Tensor,
                   transcripts: Sequence[str] | None = None, **_: object) -> VotedOutput:
        """The configured vote on a batch: speech encoded once, every voting variant scored on it, plus the
        attribute head and the pooled speech state (variant-independent, so fusion reads the same embedding)."""
        self.eval()
        names = self.voting_variants
        templates = [next(t for t in self.templates if t.name == name) for name in names]
        if self.head_mode:
            probs, per_variant, embedding = self.head_variant_outputs(speech_frames, frame_mask, templates, transcripts)
            return voted_output(probs, names, self.config.voting.rule,
                                per_variant.mean(1) if per_variant is not None else None, embedding, per_variant)
        tokens, token_mask, states = self.speech(speech_frames, frame_mask)  # once per clip
        probs = self.variant_probabilities(tokens, token_mask, templates, transcripts)  # (K, B, 8)
        attributes, pooled, _ = self.speech_heads(states, token_mask)
        return voted_output(probs, names, self.config.voting.rule, attributes, pooled)

    def vote(self, speech_frames: torch.Tensor, frame_mask: torch.Tensor,
             templates: Sequence[PromptTemplate] | None = None, transcripts: Sequence[str] | None = None):
        """Each variant's vote, the majority label (ties by summed probability) and the mean probabilities."""
        from llmser.models.voting import majority_vote

        templates = list(templates or self.templates)
        probs = self.vote_probabilities(speech_frames, frame_mask, templates, transcripts)
        return majority_vote(probs, [t.name for t in templates])

    def upgrade_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.calibration is not None:  # folders saved before answer calibration existed: a zero prior is a no-op
            state.setdefault("calibration.log_prior", torch.zeros_like(self.calibration.log_prior))
        return state


# ---------------------------------------------------------------------- prompts and answers


def class_templates(config: AudioLLMBranchConfig) -> list[PromptTemplate]:
    """The configured class prompts that read ``config.inputs``; listing one that reads other inputs is an error."""
    templates = load_prompts(config.prompts, task="class", folder=config.prompt_dir)
    wrong = [t.name for t in templates if t.inputs != config.inputs]
    if wrong and config.inputs == "speech+transcript" and len(wrong) == len(templates):
        # The default speech-only list with inputs speech+transcript: use every speech+transcript prompt.
        return load_prompts(task="class", inputs="speech+transcript", folder=config.prompt_dir)
    if wrong:
        raise ValueError(f"model.prompts {wrong} do not read {config.inputs!r}; list prompts whose inputs is "
                         f"{config.inputs!r} (see prompts/*.yaml)")
    return templates


def answer_table(tokenizer: Any, templates: Sequence[PromptTemplate]) -> tuple[list[list[int]], list[list[int]]]:
    """The union of the templates' answer token sequences, and per template the 8 indices into it."""
    union: list[list[int]] = []
    index = []
    for template in templates:
        row = []
        for ids in candidate_token_ids(tokenizer, template.candidates):
            if ids not in union:
                union.append(ids)
            row.append(union.index(ids))
        index.append(row)
    return union, index


def prompt_pieces(tokenizer: Any, template: PromptTemplate, transcript: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids of the rendered prompt before and after the speech placeholder."""
    text = template.render(tokenizer, transcript)
    before, after = text.split(SPEECH_PLACEHOLDER)
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"] if s else []  # noqa: E731
    return encode(before), encode(after)


def pad_pieces(tokenizer: Any, pieces: Sequence[tuple[list[int], list[int]]], device: Any = None) -> list[torch.Tensor]:
    """before_ids, before_mask, after_ids, after_mask: (B, L) tensors, right-padded (``splice`` re-packs)."""
    out = []
    for part in (0, 1):
        rows = [p[part] for p in pieces]
        width = max(1, max(len(r) for r in rows))
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        out += [ids.to(device), mask.to(device)]
    return out


def _masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.float()[..., None]
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def speech_token_count(seconds: float, config: AudioLLMBranchConfig) -> int:
    """Speech tokens a clip of ``seconds`` becomes (for planning prompt lengths)."""
    frames = max(1, math.ceil(seconds * FRAMES_PER_SECOND))
    window = max(1, round(config.window_seconds * FRAMES_PER_SECOND))
    stride = max(1, round(config.stride_seconds * FRAMES_PER_SECOND))
    extra = max(frames - window, 0)
    windows = extra // stride if config.partial_window == "drop" else math.ceil(extra / stride)
    return (windows + 1) * config.num_queries
