"""The prediction CSV: exact round trips, optional column groups, and errors that name the bad rows."""

import numpy as np
import pytest

from llmser.evaluation.predictions import ATTR_COLUMNS, PROB_COLUMNS, Predictions, PredictionsError
from llmser.schema import CLASS_CODES


def _sample(n: int = 6, seed: int = 0) -> Predictions:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 8))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    attributes = rng.uniform(0.5, 7.5, (n, 3))  # out-of-range values are legal in llmser's own file
    names = [f"MSP-PODCAST_{i:04d}_0001.wav" for i in range(n)]
    votes = [CLASS_CODES[i % 8] for i in range(n)]
    return Predictions.from_probs(
        names,
        probs,
        attributes,
        extras={"vote_text": votes, "note": [["a,b", "", "x"][i % 3] for i in range(n)]},
    )


def _write(tmp_path, text: str):
    path = tmp_path / "predictions.csv"
    path.write_text(text, encoding="utf-8")
    return path


def _header(classes=True, probs=True, attrs=True) -> str:
    return ",".join(
        ["FileName"]
        + (["EmoClass"] if classes else [])
        + (PROB_COLUMNS if probs else [])
        + (ATTR_COLUMNS if attrs else [])
    )


ONE_HOT_A = ",".join(["1.0"] + ["0.0"] * 7)


def test_round_trip_is_exact(tmp_path):
    original = _sample()
    path = original.write_csv(tmp_path / "sub" / "predictions.csv")
    header = path.read_text().splitlines()[0].split(",")
    assert header == ["FileName", "EmoClass", *PROB_COLUMNS, *ATTR_COLUMNS, "vote_text", "note"]
    back = Predictions.read_csv(path)
    assert back.file_names == original.file_names
    assert back.classes == original.classes
    np.testing.assert_array_equal(back.probs, original.probs)  # repr floats: bit-exact
    np.testing.assert_array_equal(back.attributes, original.attributes)
    assert back.extras == original.extras
    assert len(back) == 6
    assert [p.name for p in path.parent.iterdir()] == ["predictions.csv"]  # no temp file left behind


@pytest.mark.parametrize("keep", ["classes", "attributes", "probs"])
def test_optional_groups_round_trip(tmp_path, keep):
    full = _sample(4)
    partial = Predictions(
        full.file_names,
        classes=full.classes if keep == "classes" else None,
        probs=full.probs if keep == "probs" else None,
        attributes=full.attributes if keep == "attributes" else None,
    )
    back = Predictions.read_csv(partial.write_csv(tmp_path / "p.csv"))
    if keep == "attributes":
        assert back.classes is None and back.probs is None
        np.testing.assert_array_equal(back.attributes, full.attributes)
    else:
        assert back.classes == full.classes  # probs only: classes are the argmax
        assert back.attributes is None
        assert (back.probs is None) == (keep == "classes")


def test_from_probs_takes_the_argmax_and_subset_keeps_order():
    probs = np.eye(8)[[7, 0, 3]]
    preds = Predictions.from_probs(
        ["a", "b", "c"], probs, attributes=np.ones((3, 3)), extras={"v": ["1", "2", "3"]}
    )
    assert preds.classes == ["N", "A", "U"]
    sub = preds.subset(["c", "a"])
    assert sub.file_names == ["c", "a"] and sub.classes == ["U", "N"]
    np.testing.assert_array_equal(sub.probs, probs[[2, 0]])
    assert sub.extras == {"v": ["3", "1"]}
    with pytest.raises(PredictionsError, match=r"no prediction for 2 of 3 file\(s\).*'x'"):
        preds.subset(["a", "x", "y"])


def test_float32_softmax_rows_are_accepted(tmp_path):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, 8)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # float32: sums off by ~1e-7
    path = Predictions.from_probs([f"f{i}" for i in range(50)], probs).write_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(Predictions.read_csv(path).probs, probs, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"classes": ["A", "Z"]}, r"\['Z'\] are not task-1 codes"),
        ({"classes": ["A"]}, "1 entries for 2 file names"),
        ({"probs": np.ones((2, 7)) / 7}, r"shape \(2, 8\)"),
        ({"attributes": np.ones((2, 2))}, r"shape \(2, 3\)"),
        ({"extras": {"v": ["1"]}}, "extra column 'v' has 1 values"),
        ({"extras": {"EmoAct": ["1", "2"]}}, "clashes with a standard column"),
    ],
)
def test_constructor_validates(kwargs, match):
    with pytest.raises(PredictionsError, match=match):
        Predictions(["a", "b"], **kwargs)
    with pytest.raises(PredictionsError, match="duplicate"):
        Predictions(["a", "a"], classes=["A", "A"])


@pytest.mark.parametrize(
    "body,match",
    [
        (f"a.wav,Z,{ONE_HOT_A},4,4,4", r"row 2 \(a.wav\): EmoClass 'Z' is not one of"),
        (f"a.wav,X,{ONE_HOT_A},4,4,4", "X/O are reference labels"),
        ("a.wav,A," + ",".join(["0.5", "-0.1", "0.6"] + ["0"] * 5) + ",4,4,4", "negative probability"),
        ("a.wav,A," + ",".join(["2.0"] + ["1.0"] * 7) + ",4,4,4", "sum to 9.000000, not 1.*softmax"),
        ("a.wav,A," + ",".join(["nan"] + ["0.0"] * 7) + ",4,4,4", "NaN or infinite probabilities"),
        (f"a.wav,A,{ONE_HOT_A},4,high,4", r"non-numeric attributes \['4', 'high', '4'\]"),
        (f"a.wav,A,{ONE_HOT_A},4,nan,4", "NaN or infinite attributes"),
        (f",A,{ONE_HOT_A},4,4,4", "row 2: empty FileName"),
        (f"a.wav,A,{ONE_HOT_A},4,4", "row 2: 12 fields for 13 columns"),
    ],
)
def test_read_errors_name_the_row(tmp_path, body, match):
    path = _write(tmp_path, _header() + "\n" + body + "\n")
    with pytest.raises(PredictionsError, match=match) as info:
        Predictions.read_csv(path)
    assert str(path) in str(info.value)


def test_read_reports_every_bad_row_at_once(tmp_path):
    rows = ["a.wav,A,4,4,4", "b.wav,Q,4,4,4", "a.wav,H,4,4,4", "c.wav,N,4,x,4", "d.wav,N,4,4,4"]
    path = _write(tmp_path, _header(probs=False) + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(PredictionsError) as info:
        Predictions.read_csv(path)
    message = str(info.value)
    assert "3 problem(s)" in message
    assert "row 3 (b.wav)" in message
    assert "row 4 (a.wav): duplicate FileName, first on row 2" in message
    assert "row 5 (c.wav)" in message
    assert "d.wav" not in message


def test_long_problem_lists_are_capped(tmp_path):
    rows = [f"f{i}.wav,Z" for i in range(30)]
    path = _write(tmp_path, "FileName,EmoClass\n" + "\n".join(rows) + "\n")
    with pytest.raises(PredictionsError, match=r"30 problem\(s\)(.|\n)*\.\.\. and 10 more"):
        Predictions.read_csv(path)


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "is empty"),
        ("FileName,EmoClass\n", "header but no rows"),
        ("Name,EmoClass\na,A\n", "no FileName column"),
        (
            "FileName,prob_A,prob_S\na,0.5,0.5\n",
            r"probability columns must come as a group; missing \['prob_H'",
        ),
        ("FileName,EmoAct,EmoVal\na,1,2\n", r"attribute columns must come as a group; missing \['EmoDom'\]"),
        ("FileName,EmoClass,EmoClass\na,A,A\n", "repeated columns"),
    ],
)
def test_read_header_errors(tmp_path, text, match):
    with pytest.raises(PredictionsError, match=match):
        Predictions.read_csv(_write(tmp_path, text))


def test_missing_file_and_unknown_columns(tmp_path):
    with pytest.raises(PredictionsError, match="does not exist"):
        Predictions.read_csv(tmp_path / "nope.csv")
    path = _write(
        tmp_path, "\ufeffFileName,EmoAct,EmoVal,EmoDom,vote_llm\r\nb.wav,1,2,3,H\r\n\r\n"
    )  # BOM, CRLF
    preds = Predictions.read_csv(path)
    assert preds.classes is None and preds.extras == {"vote_llm": ["H"]}
    np.testing.assert_array_equal(preds.attributes, [[1.0, 2.0, 3.0]])
