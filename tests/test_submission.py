"""Challenge submission files: exact format, round trips, and validators that list every problem."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmser.evaluation import submission
from llmser.evaluation.predictions import Predictions
from llmser.evaluation.submission import SubmissionError
from llmser.schema import CLASS_CODES

NAMES = ["MSP-PODCAST_0002_0010.wav", "MSP-PODCAST_0001_0003.wav", "MSP-PODCAST_0001_0001.wav"]


def _write(tmp_path, text: str, name: str = "sub.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_task1_exact_format_sorted(tmp_path):
    path = submission.write_task1(tmp_path / "t1.csv", NAMES, ["H", "N", "A"])
    assert path.read_text() == (
        "FileName,EmoClass\n"
        "MSP-PODCAST_0001_0001.wav,A\n"
        "MSP-PODCAST_0001_0003.wav,N\n"
        "MSP-PODCAST_0002_0010.wav,H\n"
    )
    assert submission.read_task1(path) == {NAMES[2]: "A", NAMES[1]: "N", NAMES[0]: "H"}
    assert list(submission.validate_task1(path, set(NAMES))) == sorted(NAMES)


def test_task2_clipped_sorted_round_trip(tmp_path):
    values = np.array([[0.2, 4.25, 9.0], [3.5, 2.0, 6.999], [1.0, 7.0, 4.0]])
    path = submission.write_task2(tmp_path / "t2.csv", NAMES, values)
    lines = path.read_text().splitlines()
    assert lines[0] == "FileName,EmoAct,EmoVal,EmoDom"
    assert lines[1] == "MSP-PODCAST_0001_0001.wav,1.0,7.0,4.0"
    assert lines[3] == "MSP-PODCAST_0002_0010.wav,1.0,4.25,7.0"  # 0.2 -> 1, 9 -> 7
    back = submission.validate_task2(path, NAMES)
    assert back[NAMES[1]] == (3.5, 2.0, 6.999)


_name = st.text(alphabet="abcXYZ0123456789_-.", min_size=1, max_size=12)


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        _name,
        st.tuples(
            st.sampled_from(CLASS_CODES),
            st.lists(st.floats(-50, 50, allow_nan=False), min_size=3, max_size=3),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_hypothesis_round_trip(tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("sub")
    names = list(rows)
    classes = [rows[n][0] for n in names]
    values = np.array([rows[n][1] for n in names])
    assert submission.read_task1(submission.write_task1(folder / "t1.csv", names, classes)) == {
        n: rows[n][0] for n in sorted(names)
    }
    back = submission.read_task2(submission.write_task2(folder / "t2.csv", names, values))
    assert list(back) == sorted(names)
    for name in names:
        assert back[name] == tuple(np.clip(rows[name][1], 1.0, 7.0).tolist())


@pytest.mark.parametrize(
    "names,classes,match",
    [
        (["a", "b"], ["A", "X"], "'X' \\(no agreement / other\\) is not a task-1 class"),
        (["a", "b"], ["A", "Angry"], "did you mean 'A'"),
        (["a", "a"], ["A", "S"], "1 duplicate file name"),
        (["a", "b"], ["A"], "2 file names but 1 predictions"),
        ([], [], "no files to write"),
    ],
)
def test_write_task1_refuses_invalid(tmp_path, names, classes, match):
    with pytest.raises(SubmissionError, match=match):
        submission.write_task1(tmp_path / "t1.csv", names, classes)
    assert not (tmp_path / "t1.csv").exists()


def test_write_task2_refuses_invalid(tmp_path):
    with pytest.raises(SubmissionError, match=r"1 file\(s\) have NaN/inf attributes, e.g. \['b'\]"):
        submission.write_task2(tmp_path / "t2.csv", ["a", "b"], [[1, 2, 3], [np.nan, 2, 3]])
    with pytest.raises(SubmissionError, match=r"shape \(N, 3\)"):
        submission.write_task2(tmp_path / "t2.csv", ["a"], [[1, 2]])


def test_validate_task1_lists_all_problems(tmp_path):
    text = "FileName,EmoClass\na.wav,A\nb.wav,X\nc.wav,happy\na.wav,S\nz.wav,N\nd.wav\n"
    expected = ["a.wav", "b.wav", "c.wav", "m1.wav", "m2.wav"]
    with pytest.raises(SubmissionError) as info:
        submission.validate_task1(_write(tmp_path, text), expected)
    message = str(info.value)
    assert "6 problem(s)" in message
    assert "1 duplicate FileName(s), e.g. ['a.wav']" in message
    assert "2 of 5 expected file(s) missing, e.g. ['m1.wav', 'm2.wav']" in message
    assert "1 file(s) not in the expected split, e.g. ['z.wav']" in message
    assert "row 3 (b.wav): EmoClass 'X' (no agreement / other)" in message
    assert (
        "row 4 (c.wav): EmoClass 'happy' is not one of A, S, H, U, F, D, C, N; did you mean 'H'?" in message
    )
    assert "row 7: 1 fields, expected 2" in message


def test_validate_task2_lists_all_problems(tmp_path):
    text = "FileName,EmoAct,EmoVal,EmoDom\na.wav,1,2,3\nb.wav,1,two,3\nc.wav,nan,2,3\nc.wav,4,4,4\n"
    with pytest.raises(SubmissionError) as info:
        submission.validate_task2(_write(tmp_path, text), ["a.wav", "b.wav", "c.wav", "d.wav"])
    message = str(info.value)
    assert "4 problem(s)" in message
    assert "row 3 (b.wav): non-numeric attributes ['1', 'two', '3']" in message
    assert "row 4 (c.wav): NaN or infinite attributes" in message
    assert "1 duplicate FileName(s), e.g. ['c.wav']" in message
    assert "1 of 4 expected file(s) missing, e.g. ['d.wav']" in message


@pytest.mark.parametrize(
    "reader,text,match",
    [
        (
            submission.read_task1,
            "FileName,EmoClass,Extra\na,A,1\n",
            "header must be FileName,EmoClass; found",
        ),
        (submission.read_task1, "filename,emoclass\na,A\n", "header must be FileName,EmoClass"),
        (submission.read_task1, "", "found nothing"),
        (submission.read_task1, "FileName,EmoClass\n", "no rows after the header"),
        (submission.read_task2, "FileName,EmoClass\na,A\n", "header must be FileName,EmoAct,EmoVal,EmoDom"),
        (submission.read_task2, "FileName,EmoAct,EmoVal,EmoDom\n,1,2,3\n", "row 2: empty FileName"),
    ],
)
def test_format_errors(tmp_path, reader, text, match):
    with pytest.raises(SubmissionError, match=match):
        reader(_write(tmp_path, text))


def test_header_problem_is_listed_before_capped_row_problems(tmp_path):
    text = "FileName,Class\n" + "".join(f"f{i}.wav,Z\n" for i in range(30))
    with pytest.raises(SubmissionError) as info:
        submission.validate_task1(_write(tmp_path, text), [f"f{i}.wav" for i in range(31)])
    lines = str(info.value).splitlines()
    assert "header must be" in lines[1] and "1 of 31 expected file(s) missing" in lines[2]
    assert lines[-1].strip() == "... and 12 more"


def test_missing_submission_file(tmp_path):
    with pytest.raises(SubmissionError, match="does not exist"):
        submission.read_task2(tmp_path / "nope.csv")


def test_out_of_range_task2_values_only_warn(tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr(submission.logger, "warning", lambda *args: warnings.append(args))
    rows = submission.validate_task2(_write(tmp_path, "FileName,EmoAct,EmoVal,EmoDom\na,0.5,2,3\nb,1,2,3\n"))
    assert rows == {"a": (0.5, 2.0, 3.0), "b": (1.0, 2.0, 3.0)}
    assert len(warnings) == 1 and warnings[0][2] == 1  # one row out of range


def test_write_submissions(tmp_path):
    probs = np.eye(8)[[0, 7, 2]]
    full = Predictions.from_probs(NAMES, probs, attributes=np.full((3, 3), 4.0))
    written = submission.write_submissions(tmp_path, full)
    assert written == {
        "task1": tmp_path / "task1_predictions.csv",
        "task1_probabilities": tmp_path / "task1_probabilities.csv",
        "task2": tmp_path / "task2_predictions.csv",
    }
    assert submission.validate_task1(written["task1"], NAMES) == {NAMES[2]: "H", NAMES[1]: "N", NAMES[0]: "A"}
    assert set(submission.validate_task2(written["task2"], NAMES).values()) == {(4.0, 4.0, 4.0)}
    only_attributes = Predictions(NAMES, attributes=np.full((3, 3), 2.0))
    assert list(submission.write_submissions(tmp_path / "t2only", only_attributes)) == ["task2"]
    with pytest.raises(SubmissionError, match="nothing to submit"):
        submission.write_submissions(tmp_path, Predictions(NAMES))


def test_task1_probabilities_exact_format_and_validation(tmp_path):
    probs = np.array([[0.5, 0.5, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1.0], np.full(8, 0.125)])
    path = submission.write_task1_probabilities(tmp_path / "p.csv", NAMES, probs)
    lines = path.read_text().splitlines()
    assert lines[0] == "FileName,Angry,Sad,Happy,Surprise,Fear,Disgust,Contempt,Neutral"
    assert lines[1] == "MSP-PODCAST_0001_0001.wav," + ",".join(["0.125"] * 8)
    assert [line.split(",")[0] for line in lines[1:]] == sorted(NAMES)
    rows = submission.validate_task1_probabilities(path, NAMES)
    assert rows[NAMES[0]] == (0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert submission.validate_file(path, NAMES)[0] == "task1_probabilities"
    codes = _write(tmp_path, "FileName,A,S,H,U,F,D,C,N\nx.wav,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.3\n", "codes.csv")
    assert submission.validate_file(codes) == ("task1_probabilities", {"x.wav": (0.1,) * 7 + (0.3,)})


def test_task1_probabilities_refuse_what_is_not_a_distribution(tmp_path):
    with pytest.raises(SubmissionError) as err:
        submission.write_task1_probabilities(tmp_path / "p.csv", NAMES, np.array([[2.0] + [0] * 7, [-1, 2] + [0] * 6,
                                                                                  [np.nan] * 8]))
    message = str(err.value)
    assert "3 problem(s)" in message and "do not sum to 1" in message and "negative" in message and "NaN" in message
    text = ("FileName,Angry,Sad,Happy,Surprise,Fear,Disgust,Contempt,Neutral\n"
            "a.wav,0.5,0.5,0,0,0,0,0,0\nb.wav,high,0,0,0,0,0,0,1\nc.wav,3,1,1,1,1,1,1,1\n")
    with pytest.raises(SubmissionError) as err:
        submission.validate_task1_probabilities(_write(tmp_path, text), ["a.wav", "b.wav", "c.wav", "d.wav"])
    message = str(err.value)
    assert "row 3 (b.wav): non-numeric" in message and "row 4: 1 file(s) have probabilities that do not sum" in message
    assert "1 of 4 expected file(s) missing, e.g. ['d.wav']" in message
