"""Metrics: cross-checked against scikit-learn on random inputs, CCC and bins against hand-computed values."""

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from llmser.evaluation import metrics
from llmser.schema import CLASS_CODES

LABELS = list(range(8))


def _random_labels(seed: int, n: int, drop: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    allowed = [c for c in LABELS if c not in drop]
    y_true = rng.choice(allowed, size=n)
    # predictions right about 40% of the time, so every cell of the confusion matrix gets exercised
    y_pred = np.where(rng.random(n) < 0.4, y_true, rng.choice(allowed, size=n))
    return y_true, y_pred


# ----------------------------------------------------------------------------- task 1 vs scikit-learn


@pytest.mark.parametrize("seed,n,drop", [(0, 200, ()), (1, 37, ()), (2, 50, (3, 6)), (3, 5, ()), (4, 1, ())])
def test_classification_metrics_match_sklearn(seed, n, drop):
    y_true, y_pred = _random_labels(seed, n, drop)
    # the organisers' scorer: f1_score(average="macro") without labels=
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert metrics.macro_f1_8(y_true, y_pred) == pytest.approx(
        skm.f1_score(y_true, y_pred, labels=LABELS, average="macro", zero_division=0)
    )
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=LABELS, zero_division=0)
    ours = metrics.per_class_prf(y_true, y_pred)
    np.testing.assert_allclose(ours["precision"], p)
    np.testing.assert_allclose(ours["recall"], r)
    np.testing.assert_allclose(ours["f1"], f)
    np.testing.assert_array_equal(ours["support"], s)
    np.testing.assert_array_equal(
        metrics.confusion_matrix(y_true, y_pred), skm.confusion_matrix(y_true, y_pred, labels=LABELS)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = skm.confusion_matrix(y_true, y_pred, labels=LABELS, normalize="true")
    np.testing.assert_allclose(
        metrics.confusion_matrix(y_true, y_pred, normalize=True), np.nan_to_num(expected)
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), min_size=1, max_size=60))
def test_macro_f1_property_matches_sklearn(pairs):
    y_true, y_pred = (np.array(column) for column in zip(*pairs))
    expected_8 = skm.f1_score(y_true, y_pred, labels=LABELS, average="macro", zero_division=0)
    assert metrics.macro_f1_8(y_true, y_pred) == pytest.approx(expected_8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about classes that are only predicted
        expected = skm.f1_score(y_true, y_pred, average="macro")
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx(expected)
    assert 0.0 <= metrics.macro_f1_8(y_true, y_pred) <= metrics.macro_f1(y_true, y_pred) <= 1.0


def test_absent_classes_are_left_out_of_macro_f1_and_count_as_zero_in_macro_f1_8():
    # Classes 0 and 1 have F1 2/3 each; the organisers average over those two only -> 2/3, while the
    # all-eight figure counts the six absent classes as 0 -> (4/3) / 8.
    assert metrics.macro_f1([0, 0, 1], [0, 1, 1]) == pytest.approx(2 / 3)
    assert metrics.macro_f1_8([0, 0, 1], [0, 1, 1]) == pytest.approx(1 / 6)
    # a class only predicted is present: it enters the organisers' mean with F1 = 0
    assert metrics.macro_f1([0, 0], [0, 2]) == pytest.approx((2 / 3 + 0) / 2)
    for score in (metrics.macro_f1, metrics.macro_f1_8):
        assert score(list(range(8)), list(range(8))) == 1.0
    report = metrics.classification_report([0, 0, 1], [0, 1, 1])
    assert report["macro_f1"] == pytest.approx(2 / 3) and report["macro_f1_8"] == pytest.approx(1 / 6)
    assert report["macro_f1_classes"] == ["A", "S"]


def test_codes_and_indices_give_the_same_scores():
    y_true, y_pred = _random_labels(5, 80)
    codes_true = [CLASS_CODES[i] for i in y_true]
    codes_pred = [CLASS_CODES[i] for i in y_pred]
    assert metrics.macro_f1(codes_true, codes_pred) == metrics.macro_f1(y_true, y_pred)
    np.testing.assert_array_equal(
        metrics.confusion_matrix(codes_true, codes_pred), metrics.confusion_matrix(y_true, y_pred)
    )


@pytest.mark.parametrize(
    "y_true,y_pred,match",
    [
        ([], [], "empty"),
        ([0, 1], [0], "must align"),
        (["A", "X"], ["A", "A"], "not class codes"),
        ([0, 8], [0, 1], "outside 0..7"),
        ([-1, 0], [0, 1], "outside 0..7"),
        ([0.5, 1.0], [0, 1], "integer"),
    ],
)
def test_bad_label_inputs_raise_clear_errors(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        metrics.macro_f1(y_true, y_pred)


def test_classification_report_is_json_and_consistent():
    y_true, y_pred = _random_labels(6, 120, drop=(4,))
    report = metrics.classification_report(y_true, y_pred)
    json.dumps(report)  # plain Python only
    assert report["n"] == 120
    assert list(report["per_class"]) == list(CLASS_CODES)
    assert report["per_class"]["F"]["support"] == 0 and report["per_class"]["F"]["f1"] == 0.0
    assert report["macro_f1_8"] == pytest.approx(np.mean([c["f1"] for c in report["per_class"].values()]))
    present = [c["f1"] for c in report["per_class"].values() if c["support"] or c["predicted"]]
    assert report["macro_f1"] == pytest.approx(np.mean(present)) and len(present) == 7
    counts = np.array(report["confusion_matrix"]["counts"])
    assert counts.sum() == 120
    assert [c["predicted"] for c in report["per_class"].values()] == counts.sum(axis=0).tolist()
    rows = np.array(report["confusion_matrix"]["row_normalised"])
    np.testing.assert_allclose(rows.sum(axis=1), [0 if i == 4 else 1 for i in range(8)])


# ----------------------------------------------------------------------------- CCC


def _challenge_ccc(true, pred):
    """The formula of the challenge baseline (MSP-Podcast_Challenge), written out independently."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    corr = np.corrcoef(true, pred)[0, 1]
    return 2 * corr * true.std() * pred.std() / (true.var() + pred.var() + (true.mean() - pred.mean()) ** 2)


def test_ccc_hand_computed():
    # means 2 and 3, population variances 2/3 and 2/3, covariance 2/3 -> (4/3) / (4/3 + 1) = 4/7
    assert metrics.ccc([1, 2, 3], [2, 3, 4]) == pytest.approx(4 / 7)  # sample (ddof=1) moments would give 2/3
    # perfectly anti-correlated, same mean and variance -> -1
    assert metrics.ccc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


@pytest.mark.parametrize("seed", range(5))
def test_ccc_matches_challenge_formula_and_pearson_bounds(seed):
    rng = np.random.default_rng(seed)
    true = rng.uniform(1, 7, 100)
    pred = 0.6 * true + rng.normal(0, 0.8, 100) + 1.5
    assert metrics.ccc(true, pred) == pytest.approx(_challenge_ccc(true, pred))
    assert metrics.pearson(true, pred) == pytest.approx(np.corrcoef(true, pred)[0, 1])
    assert abs(metrics.ccc(true, pred)) <= abs(metrics.pearson(true, pred)) + 1e-12


def test_ccc_properties():
    true = np.array([1.0, 2.5, 4.0, 5.5, 7.0, 3.0])
    assert metrics.ccc(true, true) == pytest.approx(1.0)
    shifted = true + 1.0
    assert metrics.pearson(true, shifted) == pytest.approx(1.0)
    assert metrics.ccc(true, shifted) < metrics.pearson(true, shifted)
    assert metrics.ccc(true, 0.5 * true + 2.0) < 1.0  # scaled toward the middle: r = 1, CCC < 1
    assert metrics.ccc(true, np.full(6, 4.0)) == 0.0  # constant predictions: 0, not NaN
    assert metrics.ccc(np.full(3, 4.0), np.full(3, 4.0)) == 0.0  # undefined agreement: 0, not NaN
    assert metrics.pearson(true, np.full(6, 4.0)) == 0.0


@pytest.mark.parametrize(
    "true,pred,match",
    [
        ([], [], "empty"),
        ([1, 2], [1, 2, 3], "must align"),
        ([1, np.nan], [1, 2], "NaN"),
        ([1, 2], [np.inf, 2], "NaN"),
    ],
)
def test_ccc_bad_inputs(true, pred, match):
    with pytest.raises(ValueError, match=match):
        metrics.ccc(true, pred)


# ----------------------------------------------------------------------------- extreme values


def test_attribute_bins_boundaries_are_inclusive():
    values = [1.0, 2.5, 2.51, 4.0, 5.49, 5.5, 7.0]
    np.testing.assert_array_equal(metrics.attribute_bins(values), [0, 0, 1, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="NaN"):
        metrics.attribute_bins([1.0, np.nan])


def test_bin_analysis_hand_computed():
    true = [1.0, 2.0, 4.0, 6.0, 7.0]  # bins low, low, mid, high, high
    pred = [3.0, 3.0, 4.0, 5.0, 5.0]  # all mid: the extremes are pulled in
    analysis = metrics.bin_analysis(true, pred)
    assert analysis["bin_confusion"] == [[0, 2, 0], [0, 1, 0], [0, 2, 0]]
    low, mid, high = (analysis["per_bin"][b] for b in ("low", "mid", "high"))
    assert low == {"n": 2, "mean_true": 1.5, "mean_pred": 3.0, "mae": 1.5, "ccc": 0.0, "recall": 0.0}
    assert mid == {"n": 1, "mean_true": 4.0, "mean_pred": 4.0, "mae": 0.0, "ccc": None, "recall": 1.0}
    assert (
        high["mean_true"] == 6.5 and high["mean_pred"] == 5.0 and high["mae"] == 1.5 and high["recall"] == 0.0
    )


def test_bin_analysis_empty_bin_is_none_not_nan():
    analysis = metrics.bin_analysis([3.0, 4.0, 5.0], [3.0, 4.0, 6.0])
    assert analysis["per_bin"]["low"] == {
        "n": 0,
        "mean_true": None,
        "mean_pred": None,
        "mae": None,
        "ccc": None,
        "recall": None,
    }
    assert analysis["bin_confusion"][1] == [0, 2, 1]
    json.dumps(analysis)


def test_extreme_value_and_attribute_report():
    rng = np.random.default_rng(7)
    true = rng.uniform(1, 7, (60, 3))
    pred = 0.5 * true + 2.0  # the classic pull to mid-range
    report = metrics.attribute_report(true, pred)
    json.dumps(report)
    assert list(report["ccc"]) == ["arousal", "valence", "dominance"]
    for j, name in enumerate(("arousal", "valence", "dominance")):
        assert report["ccc"][name] == pytest.approx(_challenge_ccc(true[:, j], pred[:, j]))
        assert report["pearson"][name] == pytest.approx(1.0)
        bins = report["extreme_values"][name]["per_bin"]
        assert bins["low"]["mean_pred"] > bins["low"]["mean_true"]
        assert bins["high"]["mean_pred"] < bins["high"]["mean_true"]
    assert report["ccc_mean"] == pytest.approx(np.mean(list(report["ccc"].values())))
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        metrics.extreme_value_analysis(true[:, :2], pred[:, :2])


# ----------------------------------------------------------------------------- groups


def test_group_breakdown_hand_computed_gap():
    groups = ["Female", "Female", "Female", "Male", "Male", "Male", "Unknown"]
    y_true = np.array([0, 1, -1, 0, 1, 2, 0])  # -1: no task-1 label (X/O), left out
    y_pred = np.array([0, 1, 5, 0, 0, 2, 3])
    attr_true = np.array(
        [[1, 1, 1], [4, 4, 4], [7, 7, 7], [2, 2, 2], [3, 3, 3], [np.nan] * 3, [4, 4, 4]], float
    )
    attr_pred = np.array([[1, 1, 1], [4, 4, 4], [7, 7, 7], [3, 3, 3], [2, 2, 2], [4, 4, 4], [4, 4, 4]], float)
    out = metrics.group_breakdown(groups, y_true, y_pred, attr_true, attr_pred)
    female, male, unknown = (out["groups"][g] for g in ("Female", "Male", "Unknown"))
    assert female["n"] == 3 and female["n_task1"] == 2
    assert female["macro_f1_8"] == pytest.approx(2 / 8)  # classes 0 and 1 perfect, six absent
    assert female["macro_f1"] == pytest.approx(1.0)  # the organisers' mean leaves the six absent classes out
    # Male: class 0 P=1/2 R=1 F1=2/3; class 1 F1=0; class 2 F1=1 -> (5/3) / 8, or / 3 over present classes
    assert male["macro_f1_8"] == pytest.approx(5 / 24)
    assert male["macro_f1"] == pytest.approx(5 / 9)
    assert female["ccc_arousal"] == pytest.approx(1.0)
    assert male["ccc_arousal"] == pytest.approx(-1.0)  # two rows with attributes, swapped
    assert unknown["ccc_arousal"] is None  # one row: undefined
    assert out["gap"]["macro_f1_8"] == pytest.approx(2 / 8 - 5 / 24)  # Unknown left out of the gap
    assert out["gap"]["macro_f1"] == pytest.approx(1 - 5 / 9)
    assert out["gap"]["ccc_valence"] == pytest.approx(2.0)
    json.dumps(out)


def test_group_breakdown_single_group_has_no_gap_and_checks_lengths():
    out = metrics.group_breakdown(["Female"] * 3, [0, 1, 2], [0, 1, 1])
    assert out["gap"] == {"macro_f1": None, "macro_f1_8": None, "accuracy": None}
    assert "ccc_arousal" not in out["groups"]["Female"]
    with pytest.raises(ValueError, match="like groups"):
        metrics.group_breakdown(["Female"] * 2, [0, 1, 2], [0, 1, 1])
    with pytest.raises(ValueError, match="empty"):
        metrics.group_breakdown([], [], [])
