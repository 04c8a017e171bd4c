"""Property-based tests (hypothesis): the corpus reader, the audio loader and the submission files.

Each reader either returns what was written or raises its one documented error type
(CorpusError, AudioError, SubmissionError) whatever bytes it is given; never another exception.
Kept small (about 30 examples each, no deadline) so they run in the default suite.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmser.data.audio import AudioError, load_audio
from llmser.data.msp_podcast import CorpusError, MSPPodcast, ReaderConfig
from llmser.evaluation import submission
from llmser.evaluation.submission import SubmissionError
from llmser.schema import CLASS_CODES
from tests.corpus_factory import HEADER, good_rows, write_corpus

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# ---------------------------------------------------------------------------------------------- corpus CSV

attribute = st.decimals(min_value=1, max_value=7, places=2, allow_nan=False).map(float)
name_text = st.text(alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="-_"),
                    min_size=1, max_size=12)
valid_row = st.tuples(name_text, st.sampled_from(["A", "S", "H", "U", "F", "D", "C", "N", "X", "O"]), attribute,
                      attribute, attribute, st.text(alphabet="0123456789abc", min_size=1, max_size=4),
                      st.sampled_from(["Female", "Male", "Unknown"]),
                      st.sampled_from(["Train", "Development", "Test1", "Test2"]),
                      st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=8))


@SETTINGS
@given(rows=st.lists(valid_row, min_size=1, max_size=10, unique_by=lambda r: r[0].lower()))
def test_valid_rows_round_trip_with_extra_columns(tmp_path_factory, rows):
    table = [[f"{name}.wav", code, a, v, d, spk, gender, split, extra]
             for name, code, a, v, d, spk, gender, split, extra in rows]
    root = write_corpus(tmp_path_factory.mktemp("csv"), table, header=[*HEADER, "Comment"])
    corpus = MSPPodcast.from_folder(root)
    back = [[u.file_name, u.emo_class, u.arousal, u.valence, u.dominance, u.speaker, u.gender, u.split]
            for u in corpus.utterances()]
    assert back == [row[:8] for row in table]


csv_cell = st.one_of(st.text(max_size=10), st.sampled_from(["", "nan", "inf", "-1", "1e309", '"', "A", "Train"]),
                     st.floats(allow_nan=True).map(str))


@SETTINGS
@given(header=st.one_of(st.just(HEADER), st.lists(st.sampled_from([*HEADER, "Extra", ""]), max_size=9)),
       rows=st.lists(st.lists(csv_cell, max_size=10), max_size=6), skip=st.booleans())
def test_garbage_csv_gives_only_corpus_errors(tmp_path_factory, header, rows, skip):
    root = write_corpus(tmp_path_factory.mktemp("g"), good_rows())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    (root / "Labels" / "labels_consensus.csv").write_text(buffer.getvalue(), encoding="utf-8")
    _read_expecting_only_corpus_errors(root, skip)


@SETTINGS
@given(data=st.binary(max_size=400), target=st.sampled_from(["labels_consensus.csv", "labels_detailed.csv"]),
       skip=st.booleans())
def test_random_bytes_in_label_files_give_only_corpus_errors(tmp_path_factory, data, target, skip):
    root = write_corpus(tmp_path_factory.mktemp("b"), good_rows())
    path = root / "Labels" / target
    if target == "labels_consensus.csv":
        path.write_bytes(data)
    else:  # a real header, then garbage
        path.write_bytes(b"FileName,WorkerID,EmoClass,EmoAct,EmoVal,EmoDom\n" + data)
    _read_expecting_only_corpus_errors(root, skip)


def _read_expecting_only_corpus_errors(root, skip: bool) -> None:
    try:
        corpus = MSPPodcast.from_folder(root, ReaderConfig(on_error="skip" if skip else "raise"))
    except CorpusError as exc:
        assert "labels_" in str(exc)  # the error names the file
        return
    for utt in corpus.items:  # whatever was accepted is well formed
        assert utt.audio_path.is_file()
        assert utt.emo_class is None or utt.emo_class in (*CLASS_CODES, "X", "O")
        for value in (utt.arousal, utt.valence, utt.dominance):
            assert value is None or 1 <= value <= 7


# ---------------------------------------------------------------------------------------------- audio

SUBTYPES = ["PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "PCM_U8"]


@SETTINGS
@given(rate=st.sampled_from([8000, 11025, 16000, 22050, 24000, 44100, 48000, 96000]),
       channels=st.integers(1, 4), subtype=st.sampled_from(SUBTYPES),
       seconds=st.floats(0.05, 1.5), amplitude=st.sampled_from([0.0, 1e-5, 3e-3]) | st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_any_audio_becomes_finite_16k_mono_float32_or_an_audio_error(tmp_path_factory, rate, channels, subtype,
                                                                     seconds, amplitude, seed):
    frames = max(1, int(rate * seconds))
    data = np.random.default_rng(seed).uniform(-amplitude, amplitude, (frames, channels))
    path = tmp_path_factory.mktemp("a") / "clip.wav"
    sf.write(path, data, rate, subtype=subtype)
    try:
        wave = load_audio(path, max_seconds=1.0)
    except AudioError as exc:
        # a well-formed file is refused only for silence, and only when what was stored is near silent
        stored = sf.read(path, frames=min(frames, rate), always_2d=True)[0].mean(axis=1)
        assert str(path) in str(exc) and "silent" in str(exc)
        assert float(np.sqrt(np.mean(stored ** 2))) < 1e-3
        return
    assert wave.dtype == np.float32 and wave.ndim == 1 and np.isfinite(wave).all()
    assert abs(len(wave) - min(frames, rate) * 16000 / rate) <= 1


@SETTINGS
@given(prefix=st.sampled_from([b"", b"RIFF", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC", b"OggS"]),
       body=st.binary(max_size=600))
def test_random_bytes_named_wav_give_only_audio_errors(tmp_path_factory, prefix, body):
    path = tmp_path_factory.mktemp("r") / "noise.wav"
    path.write_bytes(prefix + body)
    try:
        wave = load_audio(path)
    except AudioError as exc:
        assert str(path) in str(exc)
        return
    assert wave.dtype == np.float32 and np.isfinite(wave).all()  # libsndfile found audio in the bytes


# ---------------------------------------------------------------------------------------------- submissions

file_name = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
                    min_size=1, max_size=20).map(lambda s: s + ".wav")


@SETTINGS
@given(entries=st.dictionaries(file_name, st.sampled_from(CLASS_CODES), min_size=1, max_size=15))
def test_task1_round_trip(tmp_path_factory, entries):
    path = tmp_path_factory.mktemp("s") / "task1.csv"
    submission.write_task1(path, list(entries), list(entries.values()))
    back = submission.validate_task1(path, expected_files=set(entries))
    assert back == entries and list(back) == sorted(entries)


attribute_value = st.floats(min_value=-100, max_value=100, allow_nan=False)


@SETTINGS
@given(entries=st.dictionaries(file_name, st.tuples(attribute_value, attribute_value, attribute_value),
                               min_size=1, max_size=15))
def test_task2_round_trip_clips_to_the_scale(tmp_path_factory, entries):
    path = tmp_path_factory.mktemp("s") / "task2.csv"
    submission.write_task2(path, list(entries), np.array(list(entries.values())))
    back = submission.validate_task2(path, expected_files=set(entries))
    assert list(back) == sorted(entries)
    for name, values in entries.items():
        assert back[name] == tuple(float(np.clip(v, 1.0, 7.0)) for v in values)


@SETTINGS
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300)), task=st.sampled_from([1, 2]))
def test_garbage_submission_files_give_only_submission_errors(tmp_path_factory, text, task):
    path = tmp_path_factory.mktemp("g") / "sub.csv"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    reader = submission.read_task1 if task == 1 else submission.read_task2
    try:
        rows = reader(path)
    except SubmissionError as exc:
        assert str(path) in str(exc)
        return
    assert rows  # accepted only if it was a well-formed submission
    if task == 1:
        assert set(rows.values()) <= set(CLASS_CODES)


@pytest.mark.parametrize("name", [" padded.wav", "line\nbreak.wav", "tail.wav "])
def test_writer_refuses_names_that_would_not_read_back(tmp_path, name):
    with pytest.raises(SubmissionError, match="surrounding spaces or line breaks"):
        submission.write_task1(tmp_path / "t1.csv", [name, "b.wav"], ["A", "N"])
    assert not (tmp_path / "t1.csv").exists()
