"""The MSP-Podcast reader: layout, splits, X/O policy, soft labels, and every bad-input case."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmser.data.msp_podcast import CorpusError, MSPPodcast, ReaderConfig
from tests.corpus_factory import good_rows, tone, write_corpus


@pytest.fixture
def corpus_dir(tmp_path):
    detailed = [["MSP-PODCAST_0001_0001.wav", f"W{i}", code, 6, 2, 5] for i, code in
                enumerate(["Angry", "Angry", "Disgust", "Other-Concerned", "A"])]
    return write_corpus(tmp_path / "c", good_rows(), detailed=detailed,
                        transcripts={"MSP-PODCAST_0001_0001": "how dare you"})


def test_reads_splits_labels_and_transcripts(corpus_dir):
    corpus = MSPPodcast.from_folder(corpus_dir)
    assert len(corpus) == 6 and corpus.splits() == ["Train", "Development", "Test1"]
    assert corpus.resolve_split("dev") == "Development" and corpus.resolve_split("test") == "Test1"
    first = corpus.utterances("train")[0]
    assert first.emo_class == "A" and first.class_index == 0 and first.gender == "Female"
    assert first.transcript == "how dare you" and first.arousal == 6.0
    # 3 x A, 1 x D, 1 x Other: the Other vote counts 1/8 for each class
    np.testing.assert_allclose(first.soft_label, (np.array([3, 0, 0, 0, 0, 1, 0, 0]) + 1 / 8) / 5)
    assert corpus.utterances("train")[1].soft_label is None


def test_task1_drops_x_and_o_task2_keeps_them(corpus_dir):
    corpus = MSPPodcast.from_folder(corpus_dir)
    assert [u.emo_class for u in corpus.utterances("train", task="class")] == ["A", "N"]
    assert [u.emo_class for u in corpus.utterances("train", task="attributes")] == ["A", "N", "X"]
    strict = MSPPodcast.from_folder(corpus_dir, ReaderConfig(task2_keep_extra=False))
    assert [u.emo_class for u in strict.utterances("test", task="attributes")] == ["S"]
    assert corpus.class_counts("train")["X"] == 1


def test_to_dataset_keeps_audio_as_paths(corpus_dir):
    ds = MSPPodcast.from_folder(corpus_dir).to_dataset("train")
    assert ds.column_names[:3] == ["file_name", "audio", "label"]
    assert ds[0]["audio"]["path"].endswith("MSP-PODCAST_0001_0001.wav") and ds[0]["audio"]["bytes"] is None
    assert ds["label"] == [0, 7, -1]


@pytest.mark.parametrize(("edit", "message", "row"), [
    (lambda r: r.__setitem__(1, "Q"), "EmoClass 'Q' is unknown", 2),
    (lambda r: r.__setitem__(2, 9.5), "EmoAct=9.5 is outside", 2),
    (lambda r: r.__setitem__(3, "high"), "EmoVal='high' is not a number", 2),
    (lambda r: r.__setitem__(6, "Robot"), "Gender 'Robot' is unknown", 2),
    (lambda r: r.__setitem__(0, "MSP-PODCAST_0001_0002.wav"), "duplicate FileName (first on row 2)", 3),
])
def test_bad_rows_are_named_and_can_be_skipped(tmp_path, edit, message, row):
    rows = good_rows()
    edit(rows[0])
    root = write_corpus(tmp_path / "c", rows)
    with pytest.raises(CorpusError) as err:
        MSPPodcast.from_folder(root)
    assert message in str(err.value) and f"labels_consensus.csv row {row}" in str(err.value)
    assert "on_error='skip'" in str(err.value)
    skipped = MSPPodcast.from_folder(root, ReaderConfig(on_error="skip"))
    assert len(skipped) == 5 and len(skipped.problems) == 1


def test_missing_audio_and_missing_columns(tmp_path):
    root = write_corpus(tmp_path / "a", good_rows())
    (root / "Audios" / "MSP-PODCAST_0003_0001.wav").unlink()
    with pytest.raises(CorpusError, match="no audio file .*MSP-PODCAST_0003_0001.wav"):
        MSPPodcast.from_folder(root)
    bad = write_corpus(tmp_path / "b", [r[:7] for r in good_rows()],
                       header=["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender"])
    with pytest.raises(CorpusError, match="missing column.*Split_Set"):
        MSPPodcast.from_folder(bad)
    with pytest.raises(CorpusError, match="does not exist"):
        MSPPodcast.from_folder(tmp_path / "nowhere")


def test_transcript_problems(tmp_path):
    root = write_corpus(tmp_path / "t", good_rows(), transcripts={"MSP-PODCAST_0001_0001": b"caf\xe9 latin-1"})
    with pytest.raises(CorpusError, match="not UTF-8"):
        MSPPodcast.from_folder(root)
    root2 = write_corpus(tmp_path / "t2", good_rows(), transcripts={"MSP-PODCAST_0001_0001": "hi"})
    with pytest.raises(CorpusError, match="transcript .* is missing"):
        MSPPodcast.from_folder(root2, ReaderConfig(require_transcripts=True))


def test_check_audio_catches_silent_and_corrupt_files(tmp_path):
    import soundfile as sf

    root = write_corpus(tmp_path / "s", good_rows())
    sf.write(root / "Audios" / "MSP-PODCAST_0001_0001.wav", np.zeros(16000, np.float32), 16000)
    (root / "Audios" / "MSP-PODCAST_0001_0002.wav").write_bytes(b"RIFF not really a wav")
    with pytest.raises(CorpusError) as err:
        MSPPodcast.from_folder(root, ReaderConfig(check_audio=True))
    assert "silent" in str(err.value) and "not a readable audio file" in str(err.value)
    assert len(MSPPodcast.from_folder(root, ReaderConfig(check_audio=True, on_error="skip"))) == 4


def test_unknown_split_lists_the_available_ones(corpus_dir):
    with pytest.raises(CorpusError, match="available splits: Train, Development, Test1"):
        MSPPodcast.from_folder(corpus_dir).resolve_split("Test9")


numbers = st.floats(min_value=1, max_value=7, allow_nan=False).map(lambda v: round(v, 3))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.sampled_from(["A", "S", "H", "U", "F", "D", "C", "N", "X", "O"]), numbers, numbers,
                               numbers, st.sampled_from(["Female", "Male"]), st.sampled_from(["Train", "Test1"])),
                     min_size=1, max_size=8))
def test_valid_rows_round_trip(tmp_path_factory, rows):
    root = tmp_path_factory.mktemp("h")
    table = [[f"f{i}.wav", c, a, v, d, i, g, s] for i, (c, a, v, d, g, s) in enumerate(rows)]
    corpus = MSPPodcast.from_folder(write_corpus(root, table))
    back = [[u.file_name, u.emo_class, u.arousal, u.valence, u.dominance, int(u.speaker), u.gender, u.split]
            for u in corpus.utterances()]
    assert back == table


@settings(max_examples=25, deadline=None)
@given(garbage=st.text(min_size=1, max_size=6).filter(lambda s: s.strip() != ""))
def test_garbage_in_a_numeric_column_is_always_a_corpus_error(tmp_path_factory, garbage):
    try:
        value = float(garbage.strip())
        if 1 <= value <= 7:
            return
    except ValueError:
        pass
    rows = good_rows()
    rows[2][3] = garbage
    root = write_corpus(tmp_path_factory.mktemp("g"), rows)
    with open(root / "Labels" / "labels_consensus.csv", newline="") as handle:
        if len(list(csv.reader(handle))) != len(rows) + 1:
            return  # the garbage changed the CSV's row structure itself; covered by other tests
    with pytest.raises(CorpusError, match="row 4"):
        MSPPodcast.from_folder(root)


# ----------------------------------------------------------------------------- released layouts
# Fixtures are hand-written from the published descriptions of each layout, not produced by llmser.

RELEASE_CONSENSUS = """\
FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set,Notes
MSP-PODCAST_0002_0033.wav,A,4.5,2.75,5.0,127,Female,Train,x
MSP-PODCAST_0002_0034.wav,N,3.8,4.0,4.2,Unknown,Unknown,Development,
MSP-PODCAST_0153_0001.wav,,,,,Unknown,Unknown,Test3,
MSP-PODCAST_0153_0002.wav,,,,,Unknown,Unknown,Test3,
"""

DETAILED_PER_ANNOTATOR = """\
FileName,{worker},EmoClass_Major,EmoClass_Second,EmoAct,EmoVal,EmoDom
MSP-PODCAST_0002_0033.wav,WORKER00012,Angry,"Frustrated,Annoyed",4.0,3.0,5.0
MSP-PODCAST_0002_0033.wav,WORKER00031,A,Disgust,5.0,2.0,5.0
MSP-PODCAST_0002_0033.wav,WORKER00007,Disgust,,4.0,3.0,4.0
MSP-PODCAST_0002_0033.wav,WORKER00044,Other-Concerned,Concerned,3.0,3.0,3.0
MSP-PODCAST_0002_0034.wav,WORKER00012,Neutral,,4.0,4.0,4.0
MSP-PODCAST_0002_0034.wav,WORKER00031,Sad,"Disappointed,Sad",3.0,3.0,3.0
MSP-PODCAST_0002_0034.wav,WORKER00007,Neutral,Bored,4.0,5.0,4.0
"""

DETAILED_PACKED = """\
FileName,EmoDetail
MSP-PODCAST_0002_0033.wav,"WORKER00012; Angry; Frustrated,Annoyed; A:4.0; V:3.0; D:5.0;"
MSP-PODCAST_0002_0033.wav,WORKER00031; A; Disgust; A:5.0; V:2.0; D:5.0;
MSP-PODCAST_0002_0033.wav,WORKER00007; Disgust; ; A:4.0; V:3.0; D:4.0;
MSP-PODCAST_0002_0033.wav,WORKER00044; Other-Concerned; Concerned; A:3.0; V:3.0; D:3.0;
MSP-PODCAST_0002_0034.wav,WORKER00012; Neutral; ; A:4.0; V:4.0; D:4.0;
MSP-PODCAST_0002_0034.wav,"WORKER00031; Sad; Disappointed,Sad; A:3.0; V:3.0; D:3.0;"
MSP-PODCAST_0002_0034.wav,WORKER00007; Neutral; Bored; A:4.0; V:5.0; D:4.0;
"""

DETAILED_LLMSER = """\
FileName,WorkerID,EmoClass,EmoAct,EmoVal,EmoDom
MSP-PODCAST_0002_0033.wav,WORKER00012,A,4.0,3.0,5.0
MSP-PODCAST_0002_0033.wav,WORKER00031,A,5.0,2.0,5.0
MSP-PODCAST_0002_0033.wav,WORKER00007,D,4.0,3.0,4.0
MSP-PODCAST_0002_0033.wav,WORKER00044,O,3.0,3.0,3.0
MSP-PODCAST_0002_0034.wav,WORKER00012,N,4.0,4.0,4.0
MSP-PODCAST_0002_0034.wav,WORKER00031,S,3.0,3.0,3.0
MSP-PODCAST_0002_0034.wav,WORKER00007,N,4.0,5.0,4.0
"""

LAYOUTS = {
    "per_annotator_Workers": DETAILED_PER_ANNOTATOR.format(worker="Workers"),
    "per_annotator_WorkerID": DETAILED_PER_ANNOTATOR.format(worker="WorkerID"),
    "packed": DETAILED_PACKED,
    "llmser": DETAILED_LLMSER,
}


def _release_corpus(root, detailed: str | None, audio: bool = True):
    (root / "Labels").mkdir(parents=True)
    (root / "Labels" / "labels_consensus.csv").write_text(RELEASE_CONSENSUS, encoding="utf-8")
    if detailed is not None:
        (root / "Labels" / "labels_detailed.csv").write_text(detailed, encoding="utf-8")
    if audio:
        (root / "Audios").mkdir()
        for line in RELEASE_CONSENSUS.splitlines()[1:]:
            sf.write(root / "Audios" / line.split(",")[0], tone(), 16000)
    return root


def _votes(corpus):
    return {u.file_name: [(a.worker, a.code, a.arousal, a.valence, a.dominance) for a in u.annotations]
            for u in corpus.items}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_detailed_layout_gives_the_same_labels(tmp_path, layout):
    corpus = MSPPodcast.from_folder(_release_corpus(tmp_path / layout, LAYOUTS[layout]))
    reference = MSPPodcast.from_folder(_release_corpus(tmp_path / "ref", DETAILED_LLMSER))
    assert _votes(corpus) == _votes(reference)
    angry, neutral = corpus.utterances("train")[0], corpus.utterances("dev")[0]
    np.testing.assert_allclose(angry.soft_label, (np.array([2, 0, 0, 0, 0, 1, 0, 0]) + 1 / 8) / 4)  # Other: 1/8 each
    np.testing.assert_allclose(neutral.soft_label, [0, 1 / 3, 0, 0, 0, 0, 0, 2 / 3])
    assert [u.emo_class for u in corpus.items] == ["A", "N", None, None]
    assert [a.code for a in angry.annotations] == ["A", "A", "D", "O"]
    if layout != "llmser":  # the only layout without secondary emotions
        assert [a.secondary for a in angry.annotations] == [("Frustrated", "Annoyed"), ("Disgust",), (),
                                                            ("Concerned",)]
        assert neutral.annotations[2].secondary == ("Bored",)  # not a known word: kept as text
        assert neutral.annotations[1].secondary_codes == ("S",)


def test_release_consensus_extra_columns_unknown_speakers_and_blind_test3(tmp_path, caplog):
    logger = logging.getLogger("llmser")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="llmser")
    try:
        corpus = MSPPodcast.from_folder(_release_corpus(tmp_path / "c", None))
    finally:
        logger.removeHandler(caplog.handler)
    assert "Notes are not used by llmser; ignored" in caplog.text
    assert corpus.splits() == ["Train", "Development", "Test3"]
    dev = corpus.utterances("dev")[0]
    assert (dev.speaker, dev.gender) == ("Unknown", "Unknown")
    blind = corpus.utterances("test3")
    assert [u.file_name for u in blind] == ["MSP-PODCAST_0153_0001.wav", "MSP-PODCAST_0153_0002.wav"]
    assert all(u.emo_class is None and u.arousal is None and not u.labelled for u in blind)
    assert corpus.resolve_split("test") == "Test3" and corpus.utterances("test3", task="class") == []


def test_labels_only_reads_without_any_audio(tmp_path):
    root = _release_corpus(tmp_path / "c", DETAILED_PACKED, audio=False)
    with pytest.raises(CorpusError, match="Audios.* is missing.*labels_only=True"):
        MSPPodcast.from_folder(root)
    corpus = MSPPodcast.from_folder(root, ReaderConfig(labels_only=True))
    assert len(corpus) == 4 and corpus.utterances("train")[0].soft_label is not None
    (root / "Audios").mkdir()  # present but empty: still not looked at
    assert len(MSPPodcast.from_folder(root, ReaderConfig(labels_only=True))) == 4


def test_unknown_primary_word_is_a_row_error_and_can_be_skipped(tmp_path):
    detailed = DETAILED_PER_ANNOTATOR.format(worker="Workers").replace("WORKER00007,Disgust,", "WORKER00007,Grumpy,")
    detailed = detailed.replace("Neutral,Bored,4.0,5.0", "Neutral,Bored,4.0,9.0")
    root = _release_corpus(tmp_path / "c", detailed)
    with pytest.raises(CorpusError) as err:
        MSPPodcast.from_folder(root)
    message = str(err.value)
    assert "2 problem(s)" in message
    assert "labels_detailed.csv row 4 (MSP-PODCAST_0002_0033.wav): primary emotion 'Grumpy' is unknown" in message
    assert "accepted: Angry, Sad, Happy, Surprise, Fear, Disgust, Contempt, Neutral, Other" in message
    assert "labels_detailed.csv row 8 (MSP-PODCAST_0002_0034.wav): EmoVal=9.0 is outside" in message
    corpus = MSPPodcast.from_folder(root, ReaderConfig(on_error="skip"))
    assert len(corpus) == 4 and len(corpus.problems) == 2
    assert [a.worker for a in corpus.utterances("train")[0].annotations] == ["WORKER00012", "WORKER00031",
                                                                             "WORKER00044"]


@pytest.mark.parametrize(("text", "match"), [
    ("FileName,Annotator,Label\nMSP-PODCAST_0002_0033.wav,W1,Angry\n", "not a known labels_detailed.csv layout"),
    ("FileName,EmoDetail\nMSP-PODCAST_0002_0033.wav,WORKER1; Angry\n", r"row 2 .*EmoDetail 'WORKER1; Angry' is not"),
])
def test_bad_detailed_files_are_reported_with_the_rest_and_skippable(tmp_path, text, match):
    root = _release_corpus(tmp_path / "c", text)
    with pytest.raises(CorpusError, match=match):
        MSPPodcast.from_folder(root)
    corpus = MSPPodcast.from_folder(root, ReaderConfig(on_error="skip"))
    assert len(corpus) == 4 and all(not u.annotations for u in corpus.items)


# ----------------------------------------------------------------------------- size


def test_selecting_a_split_resolves_its_name_once(corpus_dir, monkeypatch):
    # Resolving a name scans every row; resolving it per row made reading a release quadratic.
    corpus = MSPPodcast.from_folder(corpus_dir)
    calls = []
    original = MSPPodcast.resolve_split
    monkeypatch.setattr(MSPPodcast, "resolve_split", lambda self, name: calls.append(name) or original(self, name))
    assert len(corpus.utterances("train")) == 3 and calls == ["train"]


@pytest.mark.slow
def test_a_release_sized_label_set_reads_in_linear_time(tmp_path):
    import time

    from scripts.bench_reader import write_labels

    seconds = {}
    for n in (10_000, 40_000):
        write_labels(tmp_path / str(n), n, 5 * n)
        start = time.perf_counter()
        corpus = MSPPodcast.from_folder(tmp_path / str(n), ReaderConfig(labels_only=True))
        sizes = [len(corpus.utterances(split)) for split in corpus.splits()]
        seconds[n] = time.perf_counter() - start
        assert sum(sizes) == n and sum(len(u.annotations) for u in corpus.items) == 5 * n
    # 4x the rows: ~4x the time when linear, ~16x when quadratic (the old reader); generous for noisy CI
    assert seconds[40_000] < 8 * seconds[10_000] + 1.0
