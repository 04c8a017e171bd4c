"""Bad inputs real users hit (issue 9): each gets an error naming the file/row and the fix, or a reported skip.

One table per layer (audio files, corpus CSVs and transcripts, recipes and the CLI, weights files).
Every error case asserts two things: the message names the file or row, and it says what to do.
docs/reliability.md lists the same cases with the message each one gets.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

from llmser.config import ConfigError, from_dict, load_config
from llmser.data.audio import AudioError, iter_audio_chunks, load_audio, load_audio_chunks
from llmser.data.msp_podcast import CorpusError, MSPPodcast, ReaderConfig
from llmser.models.registry import load_recipe
from llmser.recipe import Recipe
from llmser.training import checkpoint as ckpt
from llmser.training.checkpoint import CheckpointError
from llmser.utils.weights import WeightsError
from tests.corpus_factory import HEADER, good_rows, tone, write_corpus

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = ROOT / "adapters" / "wavlm_tiny.yaml"


@pytest.fixture
def llmser_log(caplog):
    """The llmser logger does not propagate to the root; hook caplog onto it directly."""
    logger = logging.getLogger("llmser")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="llmser")
    yield caplog
    logger.removeHandler(caplog.handler)


# ---------------------------------------------------------------------------------------------- audio


def _wav_bytes(seconds=1.0, rate=16000) -> bytes:
    import io

    buffer = io.BytesIO()
    sf.write(buffer, tone(seconds, rate), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _write_float(path: Path, data) -> None:
    sf.write(path, np.asarray(data, np.float32), 16000, subtype="FLOAT")


def _nan_samples(path):
    data = tone(1.0)
    data[100] = np.nan
    _write_float(path, data)


def _inf_samples(path):
    data = tone(1.0)
    data[-1] = np.inf
    _write_float(path, data)


# name -> (how to make the file, what the message must say about the problem, what it must say to do)
BAD_AUDIO = {
    "truncated_header.wav": (lambda p: p.write_bytes(_wav_bytes()[:30]), "not a readable audio file", "re-export"),
    "truncated_data.wav": (lambda p: p.write_bytes(_wav_bytes()[: 44 + 9000]), "is truncated",
                           "download it again"),
    "zero_bytes.wav": (lambda p: p.write_bytes(b""), "not a readable audio file", "re-export"),
    "header_only.wav": (lambda p: sf.write(p, np.zeros(0, np.float32), 16000), "zero length", "remove it"),
    "silent.wav": (lambda p: _write_float(p, np.zeros(16000)), "silent", "check the recording"),
    "nan.wav": (_nan_samples, "NaN or infinite", "re-export"),
    "inf.wav": (_inf_samples, "NaN or infinite", "re-export"),
    "text.wav": (lambda p: p.write_text("FileName,EmoClass\nnot audio at all\n"), "not a readable audio file",
                 "re-export"),
    "riff_garbage.wav": (lambda p: p.write_bytes(b"RIFF" + np.random.default_rng(0).bytes(4000)),
                         "not a readable audio file", "re-export"),
    "missing.wav": (lambda p: None, "not found", "check the corpus Audios/ folder"),
    "folder.wav": (lambda p: p.mkdir(), "is a folder, not an audio file", "give the file itself"),
}


@pytest.mark.parametrize("name", list(BAD_AUDIO))
def test_bad_audio_names_the_file_and_the_fix(tmp_path, name):
    make, problem, fix = BAD_AUDIO[name]
    path = tmp_path / name
    make(path)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    message = str(err.value)
    assert str(path) in message and problem in message and fix in message


def test_streaming_wav_size_fields_are_not_called_truncated(tmp_path):
    """Writers that stream (ffmpeg to a pipe) leave 0 or 0xFFFFFFFF as the data size; libsndfile copes."""
    data = bytearray(_wav_bytes())
    offset = data.index(b"data") + 4
    for marker in (0xFFFFFFFF, 0):
        data[offset:offset + 4] = struct.pack("<I", marker)
        path = tmp_path / f"stream_{marker}.wav"
        path.write_bytes(bytes(data))
        try:
            wave = load_audio(path)
        except AudioError as exc:  # libsndfile may refuse a 0-size chunk itself; then it must say so clearly
            assert str(path) in str(exc) and "truncated" not in str(exc)
        else:
            assert wave.dtype == np.float32 and len(wave) > 0


# (rate, channels, subtype, container): every format the corpus may hold comes out as 16 kHz mono float32
GOOD_FORMATS = [(8000, 1, "PCM_16", "WAV"), (48000, 1, "PCM_16", "WAV"), (16000, 2, "PCM_16", "WAV"),
                (44100, 2, "PCM_24", "WAV"), (22050, 1, "FLOAT", "WAV"), (16000, 1, "DOUBLE", "WAV"),
                (32000, 6, "PCM_32", "WAV"), (8000, 1, "PCM_U8", "WAV"), (8000, 1, "ULAW", "WAV"),
                (16000, 1, "PCM_16", "FLAC")]


@pytest.mark.parametrize(("rate", "channels", "subtype", "container"), GOOD_FORMATS)
def test_every_format_becomes_16k_mono_float32(tmp_path, rate, channels, subtype, container):
    path = tmp_path / "clip.wav"  # FLAC content under a .wav name is read by its content
    sf.write(path, tone(1.0, rate, channels=channels), rate, subtype=subtype, format=container)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1 and np.isfinite(wave).all()
    assert abs(len(wave) - 16000) <= 2
    assert 0.1 < float(np.sqrt(np.mean(wave ** 2))) < 0.3


@pytest.fixture(scope="module")
def half_hour_wav(tmp_path_factory):
    """A 30-minute 8 kHz file (29 MB), written block by block so the test itself stays small."""
    path = tmp_path_factory.mktemp("long") / "half_hour.wav"
    rate, block = 8000, 8000 * 60
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as handle:
        for minute in range(30):
            t = (np.arange(block) + minute * block) / rate
            handle.write((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
    return path


def _peak_bytes(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_half_hour_file_is_cropped_reading_only_what_it_needs(half_hour_wav):
    wave, peak = _peak_bytes(lambda: load_audio(half_hour_wav, max_seconds=6.0))
    assert len(wave) == 6 * 16000
    # the whole file as float32 at 16 kHz would be 115 MB; cropping reads 6 s (a few hundred kB)
    assert peak < 5_000_000, f"peak {peak / 1e6:.1f} MB"
    with pytest.raises(AudioError) as err:
        load_audio(half_hour_wav, max_seconds=6.0, on_long="error")
    message = str(err.value)
    assert str(half_hour_wav) in message and "1800.0 s" in message and "raise the limit" in message


def test_half_hour_file_is_chunked_with_bounded_memory(half_hour_wav):
    def consume():
        count, samples = 0, 0
        for chunk in iter_audio_chunks(half_hour_wav, chunk_seconds=30.0):
            assert chunk.dtype == np.float32 and len(chunk) == 30 * 16000
            count, samples = count + 1, samples + len(chunk)
        return count, samples

    (count, samples), peak = _peak_bytes(consume)
    assert (count, samples) == (60, 1800 * 16000)
    assert peak < 10_000_000, f"peak {peak / 1e6:.1f} MB"  # one 30 s block, not 30 minutes
    assert len(load_audio_chunks(half_hour_wav, chunk_seconds=600.0)) == 3


def test_silent_stretches_inside_a_long_file_are_skipped_not_fatal(tmp_path):
    path = tmp_path / "gaps.wav"
    sf.write(path, np.concatenate([tone(2.0), np.zeros(32000, np.float32), tone(2.0)]), 16000)
    assert len(load_audio_chunks(path, chunk_seconds=2.0)) == 2
    silent = tmp_path / "all_silent.wav"
    sf.write(silent, np.zeros(64000, np.float32), 16000)
    with pytest.raises(AudioError, match=r"all_silent.wav: no non-silent audio found; check the recording"):
        load_audio_chunks(silent, chunk_seconds=2.0)


# ---------------------------------------------------------------------------------------------- corpus


def _rows_with(edit) -> list[list]:
    rows = good_rows()
    edit(rows)
    return rows


# name -> (edit of the six good rows, bad row number, what the message says, what it says to do)
BAD_ROWS = {
    "unknown class code": (lambda r: r[0].__setitem__(1, "Q"), 2, "EmoClass 'Q' is unknown", "valid codes"),
    "attribute above range": (lambda r: r[1].__setitem__(2, 9.5), 3, "EmoAct=9.5 is outside [1, 7]", None),
    "attribute below range": (lambda r: r[1].__setitem__(4, 0), 3, "EmoDom=0 is outside [1, 7]", None),
    "attribute NaN": (lambda r: r[1].__setitem__(3, "nan"), 3, "EmoVal=nan is outside", None),
    "attribute not a number": (lambda r: r[3].__setitem__(3, "high"), 5, "EmoVal='high' is not a number",
                               "give a value in [1, 7]"),
    "attribute empty on a labelled row": (lambda r: r[3].__setitem__(2, ""), 5, "EmoAct is empty",
                                          "give a number"),
    "duplicate FileName": (lambda r: r[1].__setitem__(0, r[0][0]), 3, "duplicate FileName (first on row 2)",
                           "keep one row per file"),
    "empty FileName": (lambda r: r[2].__setitem__(0, ""), 4, "FileName is empty", None),
    "empty Split_Set": (lambda r: r[4].__setitem__(7, ""), 6, "Split_Set is empty", "use one of Train"),
    "unknown gender": (lambda r: r[5].__setitem__(6, "Robot"), 7, "Gender 'Robot' is unknown",
                       "use Female, Male or Unknown"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_rows_are_named_and_skips_are_reported(tmp_path, llmser_log, case):
    edit, line, problem, fix = BAD_ROWS[case]
    root = write_corpus(tmp_path / "c", _rows_with(edit))
    with pytest.raises(CorpusError) as err:
        MSPPodcast.from_folder(root)
    message = str(err.value)
    assert f"labels_consensus.csv row {line}" in message and problem in message
    assert fix is None or fix in message
    assert "Fix them, or read with ReaderConfig(on_error='skip')" in message  # the fix for every row problem
    skipped = MSPPodcast.from_folder(root, ReaderConfig(on_error="skip"))
    assert len(skipped) == 5
    assert [p.where.split(" (")[0] for p in skipped.problems] == [f"labels_consensus.csv row {line}"]
    assert "skipped 1 bad row(s)" in llmser_log.text


def test_filename_without_audio(tmp_path, llmser_log):
    root = write_corpus(tmp_path / "c", good_rows())
    (root / "Audios" / "MSP-PODCAST_0003_0001.wav").unlink()
    with pytest.raises(CorpusError) as err:
        MSPPodcast.from_folder(root)
    message = str(err.value)
    assert "row 5 (MSP-PODCAST_0003_0001.wav)" in message and "add it or remove the row" in message
    assert len(MSPPodcast.from_folder(root, ReaderConfig(on_error="skip"))) == 5
    assert "skipped 1 bad row(s)" in llmser_log.text


def test_corrupt_audio_found_up_front_with_check_audio(tmp_path):
    root = write_corpus(tmp_path / "c", good_rows())
    (root / "Audios" / "MSP-PODCAST_0001_0002.wav").write_bytes(_wav_bytes()[:2000])  # cut mid-data
    with pytest.raises(CorpusError) as err:
        MSPPodcast.from_folder(root, ReaderConfig(check_audio=True))
    assert "row 3 (MSP-PODCAST_0001_0002.wav)" in str(err.value) and "download it again" in str(err.value)


def test_missing_columns_name_the_file_and_expected_header(tmp_path):
    header = [c for c in HEADER if c not in ("EmoVal", "Gender")]
    rows = [[v for c, v in zip(HEADER, row) if c in header] for row in good_rows()]
    root = write_corpus(tmp_path / "c", rows, header=header)
    with pytest.raises(CorpusError) as err:
        MSPPodcast.from_folder(root)
    message = str(err.value)
    assert "labels_consensus.csv: missing column(s) EmoVal, Gender" in message
    assert "expected FileName,EmoClass" in message.replace(", ", ",")


def test_extra_columns_and_short_rows(tmp_path):
    rows = [[*row, "extra", "cells"] for row in good_rows()]
    root = write_corpus(tmp_path / "c", rows, header=[*HEADER, "EmoClass_Major", "Notes"])
    corpus = MSPPodcast.from_folder(root)  # extra columns are accepted and ignored
    assert len(corpus) == 6 and corpus.items[0].emo_class == "A"
    short = write_corpus(tmp_path / "s", [good_rows()[0][:3], *good_rows()[1:]])
    with pytest.raises(CorpusError, match=r"row 2 .*EmoVal is empty"):
        MSPPodcast.from_folder(short)


def test_empty_and_non_utf8_label_files(tmp_path):
    root = write_corpus(tmp_path / "e", good_rows())
    labels = root / "Labels" / "labels_consensus.csv"
    labels.write_bytes(b"")
    with pytest.raises(CorpusError, match=r"labels_consensus.csv: missing column.*found no header"):
        MSPPodcast.from_folder(root)
    labels.write_bytes(",".join(HEADER).encode() + b"\nMSP-PODCAST_0001_0001.wav,A,6,2,5,1,F\xe9male,Train\n")
    with pytest.raises(CorpusError, match=r"labels_consensus.csv: not UTF-8 .*re-save it as UTF-8"):
        MSPPodcast.from_folder(root)


def test_unclosed_quote_and_escaping_file_names(tmp_path):
    root = write_corpus(tmp_path / "q", good_rows())
    labels = root / "Labels" / "labels_consensus.csv"
    labels.write_text(",".join(HEADER) + '\n"MSP-PODCAST_0001_0001.wav,A,6,2,5,1,Female,Train\n' + "x" * 140_000)
    with pytest.raises(CorpusError, match=r"labels_consensus.csv: not a readable CSV file .*check its quoting"):
        MSPPodcast.from_folder(root)
    outside = tmp_path / "secret.wav"
    sf.write(outside, tone(), 16000)
    rows = _rows_with(lambda r: r[0].__setitem__(0, "../../secret.wav"))
    root = write_corpus(tmp_path / "p", rows[1:])
    with open(root / "Labels" / "labels_consensus.csv", "a") as handle:
        handle.write(",".join(map(str, rows[0])) + "\n" + ",".join(map(str, [str(outside), *rows[0][1:]])) + "\n")
    with pytest.raises(CorpusError) as err:
        MSPPodcast.from_folder(root)
    message = str(err.value)
    assert "row 7 (../../secret.wav): FileName '../../secret.wav' points outside Audios/" in message
    assert "row 8" in message and "relative to the Audios/ folder" in message


def test_split_with_no_files(tmp_path):
    root = write_corpus(tmp_path / "c", good_rows())
    corpus = MSPPodcast.from_folder(root)
    with pytest.raises(CorpusError) as err:
        corpus.utterances("Test2")
    assert str(root) in str(err.value) and "available splits: Train, Development, Test1" in str(err.value)
    # a split whose files all lack a task-1 label is empty for task 1; training refuses an empty set
    only_x = write_corpus(tmp_path / "x", [["f0.wav", "X", 4, 4, 4, 1, "Female", "Train"],
                                           ["f1.wav", "N", 4, 4, 4, 1, "Female", "Development"]])
    assert MSPPodcast.from_folder(only_x).utterances("train", task="class") == []
    from llmser.training.batching import ShuffledBatchSampler

    with pytest.raises(ValueError, match="check the split has files"):
        ShuffledBatchSampler(0, 8)


def test_transcripts_empty_and_non_utf8(tmp_path):
    root = write_corpus(tmp_path / "t", good_rows(), transcripts={"MSP-PODCAST_0001_0001": "  \n",
                                                                  "MSP-PODCAST_0001_0002": b"caf\xe9 au lait"})
    with pytest.raises(CorpusError) as err:
        MSPPodcast.from_folder(root)
    message = str(err.value)
    assert "row 3 (MSP-PODCAST_0001_0002.wav)" in message and "is not UTF-8; re-save it as UTF-8" in message
    assert "row 2" not in message  # an empty transcript is allowed when transcripts are optional
    corpus = MSPPodcast.from_folder(root, ReaderConfig(on_error="skip"))
    assert corpus.items[0].transcript is None and len(corpus) == 5
    with pytest.raises(CorpusError) as err:
        MSPPodcast.from_folder(root, ReaderConfig(require_transcripts=True))
    message = str(err.value)
    assert "row 2 (MSP-PODCAST_0001_0001.wav)" in message and "is empty; write the words into it" in message
    assert "row 4 (MSP-PODCAST_0002_0001.wav)" in message and "is missing; add it or transcribe" in message


def test_annotations_for_unknown_files_are_reported_not_fatal(tmp_path, llmser_log):
    root = write_corpus(tmp_path / "d", good_rows(), detailed=[["nobody.wav", "W1", "A", 5, 5, 5]])
    assert len(MSPPodcast.from_folder(root)) == 6
    assert "labels_detailed.csv (nobody.wav): annotations for a FileName not in" in llmser_log.text


def test_submission_files_that_are_not_utf8_csv(tmp_path):
    from llmser.evaluation.submission import SubmissionError, read_task1, write_task1

    path = tmp_path / "task1_predictions.csv"
    path.write_bytes(b"FileName,EmoClass\ncaf\xe9.wav,A\n")
    with pytest.raises(SubmissionError, match=r"task1_predictions.csv: not UTF-8 .*write_task1"):
        read_task1(path)
    path.write_text('FileName,EmoClass\n"a.wav,A\n' + "x" * 140_000)
    with pytest.raises(SubmissionError, match=r"task1_predictions.csv: not a readable CSV file"):
        read_task1(path)
    with pytest.raises(SubmissionError, match=r"surrounding spaces .*pass the names as they appear"):
        write_task1(path, ["a.wav "], ["A"])


# ---------------------------------------------------------------------------------------------- recipes


def test_recipe_unknown_keys_get_a_did_you_mean(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_recipe(TINY_RECIPE, ["optim.lrr=1e-3", "trian.max_steps=3", "model.encodr=tiny"])
    message = str(err.value)
    assert str(TINY_RECIPE) in message
    assert "unknown key 'optim.lrr'; did you mean 'optim.lr'?" in message
    assert "unknown key 'trian'; did you mean 'train'?" in message
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(TINY_RECIPE.read_text().replace("encoder_mode:", "encoder_mdoe:"))
    with pytest.raises(ConfigError, match=r"(?s)typo.yaml.*unknown key 'model.encoder_mdoe'; did you mean 'model.encoder_mode'"):
        load_recipe(recipe)


def test_recipe_wrong_types_are_all_reported(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_recipe(TINY_RECIPE, ["train.max_steps=many", "optim.lr=fast", "data.balanced_sampler=maybe",
                                  "optim.schedule=linear"])
    message = str(err.value)
    assert "4 problem(s)" in message and str(TINY_RECIPE) in message
    assert "train.max_steps: expected an integer, got 'many'" in message
    assert "optim.lr: expected a number, got 'fast'" in message
    assert "data.balanced_sampler: expected true or false, got 'maybe'" in message
    assert "optim.schedule: 'linear' is not one of 'cosine', 'exponential', 'constant'" in message


@dataclass
class _Needs:
    corpus: str
    steps: int = 1


@dataclass
class _Outer:
    data: _Needs


def test_missing_required_field_says_how_to_give_it(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  steps: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(_Outer, recipe)
    message = str(err.value)
    assert str(recipe) in message
    assert "missing required key 'data.corpus'; add it to the recipe or pass data.corpus=VALUE" in message
    with pytest.raises(ConfigError, match="missing required key 'data'"):
        from_dict(_Outer, {})


def test_recipe_that_is_not_a_mapping_or_not_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("branch: wavlm\n  model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(Recipe, bad)
    with pytest.raises(ConfigError, match=r"nope.yaml does not exist; recipes live under adapters/"):
        load_config(Recipe, tmp_path / "nope.yaml")


def test_cli_prints_recipe_errors_without_a_traceback(capsys):
    from llmser.cli import main

    code = main(["train", str(TINY_RECIPE), "optim.lrr=1e-3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "did you mean 'optim.lr'?" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------- weights


def _tiny_training_objects():
    from llmser.recipe import OptimConfig
    from llmser.training.optim import build_optimizer, build_scheduler

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = build_optimizer(model, OptimConfig())
    return model, optimizer, build_scheduler(optimizer, OptimConfig(), 10)


def _saved_checkpoint(directory: Path) -> Path:
    model, optimizer, scheduler = _tiny_training_objects()
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return ckpt.save_checkpoint(directory, model=model, optimizer=optimizer, scheduler=scheduler,
                                trainer_state={"step": 1}, is_main=True, rank=0)


def _load(directory: Path):
    model, optimizer, scheduler = _tiny_training_objects()
    return ckpt.load_checkpoint(directory, model=model, optimizer=optimizer, scheduler=scheduler, rank=0)


@pytest.mark.parametrize("keep_fraction", [0.0, 0.004, 0.3, 0.9])
def test_truncated_safetensors_is_named_with_the_fix(tmp_path, keep_fraction):
    directory = _saved_checkpoint(tmp_path / "checkpoint-1")
    weights = directory / "trainable.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep_fraction)])
    with pytest.raises(WeightsError) as err:
        _load(directory)
    message = str(err.value)
    assert str(weights) in message and "not a complete safetensors file" in message
    assert "Resume from an earlier checkpoint-<step> folder" in message


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt"])
def test_pickle_only_checkpoints_are_refused(tmp_path, suffix):
    directory = tmp_path / "checkpoint-7"
    directory.mkdir()
    weights = directory / f"pytorch_model{suffix}"
    torch.save({"0.weight": torch.zeros(3, 4)}, weights)
    (directory / "trainer_state.json").write_text("{}")
    for target in (directory, weights):  # a folder of pickles, or --resume pointed at the file itself
        with pytest.raises(WeightsError) as err:
            _load(target)
        message = str(err.value)
        assert str(target) in message and "safetensors only" in message
        assert "convert it once" in message


def test_checkpoint_of_another_model_is_refused(tmp_path):
    other = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Linear(5, 2))
    directory = _saved_checkpoint(tmp_path / "checkpoint-1")
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(directory / "trainable.safetensors"))
    with pytest.raises(CheckpointError) as err:
        _load(directory)
    assert str(directory) in str(err.value) and "resume with the recipe that wrote it" in str(err.value)
    save_file({"encoder.extra": torch.zeros(1)}, str(directory / "trainable.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected \['encoder.extra'\].*another recipe"):
        _load(directory)


def test_damaged_json_and_missing_files_in_a_checkpoint(tmp_path):
    directory = _saved_checkpoint(tmp_path / "checkpoint-1")
    (directory / "scheduler.json").write_text('{"last_epoch": 1, ')
    with pytest.raises(CheckpointError, match=r"scheduler.json: not valid JSON.*earlier checkpoint-<step>"):
        _load(directory)
    os.remove(directory / "optimizer.safetensors")
    with pytest.raises(FileNotFoundError, match=r"checkpoint-1 is incomplete \(missing optimizer.safetensors\)"):
        _load(directory)


def test_safe_loading_promises_hold_in_the_source():
    """No pickle loading, no trust_remote_code=True, no token variable printed or logged in the package."""
    secret = re.compile(r"(hf_token|auth_token|hub_token|HF_TOKEN|HUGGING_FACE_HUB_TOKEN|[{(,]\s*token\s*[})!,:])")
    for path in (ROOT / "llmser").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "trust_remote_code=True" not in text.replace(" ", ""), path
        assert "torch.load(" not in text or "weights_only=True" in text, path
        assert "pickle.load" not in text, path
        for line in text.splitlines():
            if re.search(r"\b(print|logger\.\w+|logging\.\w+)\(", line):
                assert not secret.search(line), f"{path}: {line.strip()}"
