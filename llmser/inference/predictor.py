"""Predict emotions for audio files with a trained system (a folder from ``build_system`` or a Hub id).

    from llmser.inference.predictor import Predictor

    predictor = Predictor.from_pretrained("runs/demo/system")        # or "org/llmser-msp"
    result = predictor(["a.wav", "b.wav"])                           # transcripts made by Whisper if absent
    result.predictions.write_csv("preds.csv")

Each member runs its own forward (WavLM on the waveform, the text LLM on the transcript through its
prompt, the audio-LLM on both); the system's method combines them: the fusion adapter on the members'
embeddings (and WavLM frame states), or the average / plurality vote of the members' probabilities.
A file that cannot be read is reported in ``result.skipped`` and left out; it never stops the run.

Long recordings are never cropped silently. A file longer than a member's window (the WavLM recipe's
``data.max_seconds``, the audio-LLM's ``max_audio_seconds``, at most Whisper's 30 s) is, with
``long_audio="windows"`` (the default), cut into consecutive windows of that length (a last sliver
under 0.5 s joins nothing and is dropped, unless it is all there is); each window is predicted and the
member's probabilities, attributes and embedding are the mean over windows weighted by window
length (fusion frame sequences are concatenated); a silent window is left out of that average, and the
file is skipped as silent only if every window is. ``"crop"`` reads the first window only, as training
does; ``"error"`` refuses the run, naming the file and its length. The count of long files is logged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from llmser.evaluation.predictions import Predictions, concat_predictions
from llmser.models.branch import VotesOverPrompts
from llmser.models.llm.votes import votes
from llmser.schema import CLASS_CODES
from llmser.utils.logging import get_logger

logger = get_logger(__name__)

LONG_AUDIO_MODES = ("windows", "crop", "error")
MIN_WINDOW_SECONDS = 0.5  # a trailing sliver shorter than this carries no usable emotion (as load_audio_chunks)


class LongAudioError(ValueError):
    """A file longer than a member's window, with ``long_audio="error"``."""


def audio_windows(duration: float, window: float) -> list[tuple[float, float]]:
    """(start, seconds) windows covering ``duration`` seconds with windows of ``window`` seconds."""
    starts = np.arange(0.0, duration, window)
    windows = [(float(s), float(min(window, duration - s))) for s in starts]
    if len(windows) > 1 and windows[-1][1] < MIN_WINDOW_SECONDS:
        windows.pop()
    return windows


@dataclass
class LoadedMember:
    name: str
    branch: str
    model: Any
    recipe: Any
    spec: Any


@dataclass
class PredictResult:
    predictions: Predictions
    skipped: dict[str, str] = field(default_factory=dict)  # file -> why it was skipped


def _utterance(path: Path, transcript: str | None):
    from llmser.data.msp_podcast import Utterance

    return Utterance(file_name=path.name, audio_path=path, split="predict", emo_class=None, arousal=None,
                     valence=None, dominance=None, speaker="", gender="", transcript=transcript)


class Predictor:
    """A loaded system: its members, the optional fusion adapter, and how they combine."""

    def __init__(self, members: list[LoadedMember], method: str, fusion: Any = None, fusion_frame_stride: int = 4,
                 asr: str = "smol", long_audio: Literal["windows", "crop", "error"] = "windows",
                 combine_settings: dict[str, Any] | None = None):
        if long_audio not in LONG_AUDIO_MODES:
            raise ValueError(f"long_audio must be one of {', '.join(LONG_AUDIO_MODES)}, got {long_audio!r}")
        self.long_audio = long_audio
        self.members = members
        self.method = method
        # what the method needs besides the members' outputs: ``weights`` (average), ``member`` (one member
        # alone), ``stacker`` (a fitted StackingEnsemble)
        self.combine_settings = dict(combine_settings or {})
        self.fusion = fusion
        self.fusion_frame_stride = fusion_frame_stride
        self.asr = asr
        self._whisper = None

    @classmethod
    def from_pretrained(cls, id_or_path: str | Path, revision: str | None = None, asr: str = "smol",
                        long_audio: Literal["windows", "crop", "error"] = "windows") -> Predictor:
        from llmser.hub.manifest import SystemManifest
        from llmser.models.registry import get_branch, load_recipe
        from llmser.utils.hub import resolve_pretrained

        folder = resolve_pretrained(id_or_path, revision)
        manifest = SystemManifest.load(folder)
        ensemble = manifest.ensemble or {}
        members, fusion = [], None
        for member in manifest.members:
            sub = folder / member.subfolder
            recipe = load_recipe(sub / "recipe.yaml")
            spec = get_branch(member.kind)
            model = spec.model_cls.from_pretrained(sub).eval()
            if member.kind == "fusion":
                fusion = model
            else:
                members.append(LoadedMember(member.name, member.kind, model, recipe, spec))
        method = ensemble.get("method", "fusion" if fusion is not None else "average")
        settings: dict[str, Any] = {"weights": ensemble.get("weights"), "member": ensemble.get("member")}
        if method == "stacking":
            from llmser.ensemble.methods import StackingEnsemble

            settings["stacker"] = StackingEnsemble.load(folder / ensemble.get("stacking", "stacking"))
        return cls(members, method, fusion, int(ensemble.get("fusion_frame_stride", 4)), asr, long_audio,
                   {k: v for k, v in settings.items() if v is not None})

    # ------------------------------------------------------------------ transcripts

    @property
    def needs_transcripts(self) -> bool:
        return any(m.spec.reads_transcripts and "transcript" in getattr(m.model.config, "inputs", "transcript")
                   for m in self.members)

    def transcripts_for(self, paths: list[Path], given: Mapping[str, str]) -> dict[str, str]:
        """Given transcripts by file name (or stem); the rest are made with Whisper."""
        from llmser.data.text import clean_text

        found = {p.name: given.get(p.name, given.get(p.stem)) for p in paths}
        found = {k: clean_text(v) if isinstance(v, str) else v for k, v in found.items()}  # no NUL etc. in prompts
        todo = [p for p in paths if not (found[p.name] or "").strip()]
        if todo and self.needs_transcripts:
            from llmser.models.whisper.asr import transcribe
            from llmser.models.whisper.loading import load_whisper_for_transcription

            logger.info("transcribing %d file(s) without a transcript with Whisper (%s)", len(todo), self.asr)
            self._whisper = self._whisper or load_whisper_for_transcription(self.asr)
            for path, text in zip(todo, self._transcribe(todo, transcribe)):
                found[path.name] = text
        return {k: v or "" for k, v in found.items() if v is not None}

    def _transcribe(self, paths: list[Path], transcribe: Any) -> list[str | None]:
        """Batch transcription; if a file in the batch is unreadable, file by file (None = unreadable)."""
        from llmser.data.audio import AudioError

        try:
            return transcribe(paths, whisper=self._whisper, progress=False)
        except (AudioError, OSError, ValueError):
            texts: list[str | None] = []
            for path in paths:
                try:
                    texts += transcribe([path], whisper=self._whisper, progress=False)
                except (AudioError, OSError, ValueError):
                    texts.append(None)  # the audio members report why when they read it
            return texts

    # ------------------------------------------------------------------ prediction

    @torch.no_grad()
    def predict_batch(self, paths: list[Path], transcripts: Mapping[str, str]) -> tuple[Predictions | None,
                                                                                         dict[str, str]]:
        """One batch of files -> predictions for the readable ones, and the skipped ones with the reason."""
        utterances = [_utterance(p, transcripts.get(p.name)) for p in paths]
        outputs: dict[str, dict[str, Any]] = {}
        skipped: dict[str, str] = {}
        keep = list(range(len(utterances)))
        for member in self.members:
            out = self._member_outputs(member, utterances, keep, skipped)
            if out is None:
                return None, skipped
            outputs[member.name] = out
        # Members may have dropped different files: keep those every member read.
        common = [i for i in keep if all(i in out["index"].tolist() for out in outputs.values())]
        for name, out in outputs.items():
            rows = [out["index"].tolist().index(i) for i in common]
            outputs[name] = {k: (v[rows] if isinstance(v, torch.Tensor) else [v[r] for r in rows])
                             for k, v in out.items()}
        names = [utterances[i].file_name for i in common]
        return self._combine(names, outputs), skipped

    def check_lengths(self, paths: Sequence[Path]) -> None:
        """Refuse, before anything is predicted, every file longer than a member's window (``long_audio="error"``)."""
        from llmser.data.audio import AudioError, audio_duration

        windows = [w for w in (self.member_window(m) for m in self.members) if w is not None]
        if not windows:
            return
        too_long = []
        for path in paths:
            try:
                duration = audio_duration(path)
            except AudioError:
                continue  # reported and skipped when it is read
            if duration > min(windows) + 1e-6:
                too_long.append(f"{path}: {duration:.1f} s")
        if too_long:
            raise LongAudioError(f"{len(too_long)} file(s) are longer than the model's {min(windows):g}-s window: "
                                 f"{'; '.join(too_long[:5])}. Predict them in windows (--long-audio windows, the "
                                 "default), crop them to their first window (--long-audio crop), or cut the files")

    def member_window(self, member: LoadedMember) -> float | None:
        """The longest audio one of ``member``'s examples reads (None: it reads no audio, or all of it)."""
        window_fn = getattr(member.spec.branch, "audio_window_seconds", None)
        return window_fn(member.model, member.recipe) if window_fn is not None else None

    def _member_outputs(self, member: LoadedMember, utterances: list, keep: list[int],
                        skipped: dict[str, str]) -> dict[str, Any] | None:
        """``member``'s outputs for the files in ``keep`` (which loses the unreadable ones): one row per file,
        long files predicted window by window and averaged by window length."""
        from llmser.data.audio import AudioError, SilentAudioError

        pieces, owner, weight = self._pieces(member, utterances, keep, skipped)
        dataset, collate = member.spec.predict_data_fn(member.model, member.recipe, pieces)
        if votes(member.model, dataset):  # LLM members: their recipe's prompt vote (model.voting)
            dataset = dataset.with_voting(member.model.voting_variants)
        examples, silent = [], {}
        for j in range(len(pieces)):
            if owner[j] not in keep:
                continue  # another window of this file was unreadable
            try:
                examples.append(dataset[j])
            except SilentAudioError as exc:  # left out of the file's average; fatal only if every window is
                silent.setdefault(owner[j], str(exc))
            except (AudioError, OSError, ValueError) as exc:
                skipped[utterances[owner[j]].file_name] = str(exc)
                keep.remove(owner[j])
        examples = [e for e in examples if owner[e["index"]] in keep]
        _skip_silent(silent, {owner[e["index"]] for e in examples}, owner, utterances, keep, skipped)
        if not examples:
            return None
        size = max(len(utterances), 1)  # windows run in batches no larger than the files' batch
        parts = [self._forward(member, collate(examples[s:s + size])) for s in range(0, len(examples), size)]
        rows = _concat_outputs(parts)
        averaged = _average_windows(rows, [owner[e["index"]] for e in examples], [weight[e["index"]] for e in examples])
        if "variant_probs" in averaged and len(averaged["index"]) != len(examples):  # a long file: vote again
            averaged["labels"] = _revote(member.model, averaged)
        return averaged

    def _pieces(self, member: LoadedMember, utterances: list, keep: list[int],
                skipped: dict[str, str]) -> tuple[list, list[int], list[float]]:
        """What ``member`` reads: each file, or each window of a long file; its file index and length weight."""
        import dataclasses

        from llmser.data.audio import AudioError, audio_duration

        window = self.member_window(member)
        pieces, owner, weight, long_files, windows = [], [], [], 0, 0
        for i, utt in enumerate(utterances):
            if i not in keep:
                continue
            try:
                duration = audio_duration(utt.audio_path) if window is not None else None
            except AudioError as exc:
                skipped[utt.file_name] = str(exc)
                keep.remove(i)
                continue
            if duration is None or duration <= window + 1e-6 or self.long_audio == "crop":
                long_files += duration is not None and duration > window + 1e-6
                pieces.append(utt)
                owner.append(i)
                weight.append(1.0)
                continue
            if self.long_audio == "error":
                raise LongAudioError(f"{utt.audio_path}: {duration:.1f} s is longer than the {window:g}-s window of "
                                     f"member {member.name!r}; predict it in windows (--long-audio windows, the "
                                     "default), crop it to its first window (--long-audio crop), or cut the file")
            spans = audio_windows(duration, window)
            long_files, windows = long_files + 1, windows + len(spans)
            pieces += [dataclasses.replace(utt, segment=span) for span in spans]
            owner += [i] * len(spans)
            weight += [span[1] for span in spans]
        if long_files:
            how = (f"predicted in {windows} windows, averaged by window length" if self.long_audio == "windows"
                   else "cropped to their first window (--long-audio crop)")
            logger.info("%s: %d file(s) longer than its %g-s window: %s", member.name, long_files, window, how)
        return pieces, owner, weight

    def _forward(self, member: LoadedMember, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        wants_frames = self.fusion is not None and member.branch == "wavlm"
        if wants_frames:  # encode once: the heads and the fusion frames read the same hidden states
            hidden, mask = member.model.encode(batch["input_values"], batch.get("attention_mask"))
            batch = {**batch, "hidden_states": hidden, "frame_mask": mask}
        if isinstance(member.model, VotesOverPrompts):
            return _voted(member.model.vote_batch(**batch))
        out = member.model(**batch)
        result: dict[str, Any] = {"embedding": out.embedding.float()}
        if out.class_logits is not None:
            result["probs"] = torch.softmax(out.class_logits.float(), -1)
        if out.attributes is not None:
            result["attributes"] = out.attributes.float()
        if wants_frames:
            from llmser.data.branch_outputs import pool_frames
            from llmser.inference.collect import wavlm_sequence

            frames, mask = wavlm_sequence(member.model, batch)
            frames, mask = pool_frames(frames, mask, self.fusion_frame_stride)
            result["sequence"] = [f[m] for f, m in zip(frames, mask)]
        return result

    def _combine(self, names: list[str], outputs: dict[str, dict[str, Any]]) -> Predictions:
        """The system's predictions from its members' outputs, by the manifest's method.

        A member that votes over prompt variants casts the class its rule chose (``labels``); the methods are
        the ensemble module's own (``llmser.ensemble.methods.combine``), so ``llmser predict`` and
        ``llmser ensemble`` decide alike.
        """
        from llmser.ensemble.methods import combine

        columns = _vote_columns(outputs)
        if self.method == "fusion":
            out = self.fusion(**self._fusion_batch(outputs))
            probs = torch.softmax(out.class_logits.float(), -1).numpy() if out.class_logits is not None else None
            attrs = out.attributes.float().numpy() if out.attributes is not None else None
            return Predictions(names, None, probs, attrs, columns)
        members = {n: _member_predictions(names, o) for n, o in outputs.items()}
        result = combine(self.method, members, **self.combine_settings)
        result.extras = columns
        return result

    def _fusion_batch(self, outputs: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
        from llmser.data.branch_outputs import pad_sequences
        from llmser.models.fusion.model import (
            attributes_key,
            embedding_key,
            mask_key,
            probs_key,
            sequence_key,
        )

        batch: dict[str, torch.Tensor] = {}
        for stream in self.fusion.config.streams:
            if stream not in outputs:
                raise KeyError(f"the fusion adapter reads stream {stream!r}, which no member of this system "
                               f"produces (members: {', '.join(outputs)})")
            batch[embedding_key(stream)] = outputs[stream]["embedding"]
            for name, key in (("probs", probs_key), ("attributes", attributes_key)):  # residual fusion averages them
                if name in outputs[stream]:
                    batch[key(stream)] = outputs[stream][name]
            if self.fusion.config.sequences and "sequence" in outputs[stream]:
                batch[sequence_key(stream)], batch[mask_key(stream)] = pad_sequences(outputs[stream]["sequence"])
        return batch

    def __call__(self, audio: Sequence[str | Path], transcripts: Mapping[str, str] | None = None, *,
                 batch_size: int = 8, progress: bool = True) -> PredictResult:
        from tqdm.auto import tqdm

        paths = [Path(p) for p in audio]
        if self.long_audio == "error":
            self.check_lengths(paths)
        parts: list[Predictions] = []
        skipped: dict[str, str] = {}
        with tqdm(total=len(paths), desc="predicting", unit="file", disable=not progress) as bar:
            for start in range(0, len(paths), batch_size):
                chunk = paths[start:start + batch_size]
                texts = self.transcripts_for(chunk, transcripts or {}) if self.needs_transcripts else {}
                predictions, bad = self.predict_batch(chunk, texts)
                skipped.update(bad)
                if predictions is not None:
                    parts.append(predictions)
                bar.update(len(chunk))
        for name, why in skipped.items():
            logger.warning("skipped %s: %s", name, why)
        return PredictResult(concat_predictions(parts), skipped)


def _vote_columns(outputs: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """``vote_<member>`` (the member's class: its prompt vote for an LLM member) and ``vote_<member>_<variant>``."""
    columns = {f"vote_{n}": [CLASS_CODES[i] for i in (o["labels"].numpy() if "labels" in o else o["probs"].argmax(1))]
               for n, o in outputs.items() if "probs" in o}
    for n, o in outputs.items():  # each prompt variant's vote of an LLM member
        for k, variant in enumerate(o.get("variant_names", [[]])[0]):
            columns[f"vote_{n}_{variant}"] = [CLASS_CODES[i] for i in o["variant_probs"][:, k].argmax(-1).tolist()]
    return columns


def _member_predictions(names: list[str], output: dict[str, Any]) -> Predictions:
    """One member's rows as ``Predictions``: its class is its own decision (an LLM member's vote), not the
    argmax of the mean probabilities it also reports."""
    probs = output["probs"].numpy().astype(np.float64) if "probs" in output else None
    attrs = output["attributes"].numpy().astype(np.float64) if "attributes" in output else None
    classes = None
    if probs is not None:
        labels = output["labels"].numpy() if "labels" in output else probs.argmax(1)
        classes = [CLASS_CODES[int(i)] for i in labels]
    return Predictions(list(names), classes, probs, attrs, {})


def _voted(out: Any) -> dict[str, Any]:
    """A member's ``VotedOutput`` as the per-file columns ``predict_batch`` aligns across members."""
    result: dict[str, Any] = {"embedding": out.embedding.float(), "probs": out.probs.float().cpu(),
                              "labels": out.labels.cpu(), "variant_probs": out.variant_probs.float().cpu(),
                              "variant_names": [out.variant_names] * len(out.labels)}
    if out.attributes is not None:
        result["attributes"] = out.attributes.float()
    return result


def _concat_outputs(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Member outputs of several forward batches, row-wise (tensors concatenated, lists joined)."""
    return {k: (torch.cat([p[k] for p in parts]) if isinstance(parts[0][k], torch.Tensor)
                else [x for p in parts for x in p[k]]) for k in parts[0]}


def _revote(model: Any, outputs: dict[str, Any]) -> torch.Tensor:
    """A long file's vote from its length-weighted variant probabilities (the windows' votes are not averaged)."""
    from llmser.models.voting import vote

    per_variant = outputs["variant_probs"].numpy().transpose(1, 0, 2)  # (K, N, C)
    names = outputs["variant_names"][0]
    rule = model.config.voting.rule if isinstance(model, VotesOverPrompts) else "plurality"
    return torch.from_numpy(vote(per_variant, names, rule).labels)


def _skip_silent(silent: dict[int, str], heard: set[int], owner: list[int], utterances: list, keep: list[int],
                 skipped: dict[str, str]) -> None:
    """Skip the files none of whose windows has sound (a long file with some sound is averaged over it)."""
    for i, why in silent.items():
        if i in keep and i not in heard:
            if owner.count(i) > 1:
                why = (f"{utterances[i].audio_path}: every window ({owner.count(i)}) of the file is silent; "
                       "check the recording or remove it")
            skipped[utterances[i].file_name] = why
            keep.remove(i)


def _average_windows(rows: dict[str, Any], owner: list[int], weight: list[float]) -> dict[str, Any]:
    """One row per file: probabilities, attributes and embedding averaged over its windows, weighted by
    window length; frame sequences (for fusion) concatenated in time order. ``index`` is the file index."""
    files = list(dict.fromkeys(owner))
    out: dict[str, Any] = {"index": torch.tensor(files)}
    for key, value in rows.items():
        if key == "variant_names" or (isinstance(value, torch.Tensor) and not value.is_floating_point()):
            # names, and integer labels (a long file's vote is taken again from its averaged probabilities)
            first = [next(j for j, o in enumerate(owner) if o == f) for f in files]
            out[key] = value[first] if isinstance(value, torch.Tensor) else [value[j] for j in first]
        elif isinstance(value, torch.Tensor):  # (windows, ...) -> (files, ...)
            stacked = []
            for f in files:
                picks = [j for j, o in enumerate(owner) if o == f]
                w = torch.tensor([weight[j] for j in picks], dtype=value.dtype)
                stacked.append((value[picks] * w.view(-1, *([1] * (value.dim() - 1)))).sum(0) / w.sum())
            out[key] = torch.stack(stacked)
        else:
            out[key] = [torch.cat([value[j] for j, o in enumerate(owner) if o == f]) for f in files]
    return out
