"""Waveform and label augmentation: exact SNR, decaying RIRs, mixing, annotator label dropout."""

from __future__ import annotations

import numpy as np
import pytest

from llmser.config import ConfigError, from_dict
from llmser.data.augment import (
    AugmentConfig,
    WaveformAugmenter,
    add_noise,
    annotator_label_dropout,
    mix_clips,
    mix_labels,
    random_gain,
    reverberate,
    synthetic_rir,
    vote_distribution,
)
from llmser.schema import CODE_TO_INDEX

SR = 16000


def _tone(seconds: float = 1.0, freq: float = 220.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    noise = noisy.astype(np.float64) - clean.astype(np.float64)
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise ** 2))


def _dist(**shares: float) -> np.ndarray:
    out = np.zeros(8, np.float32)
    for code, share in shares.items():
        out[CODE_TO_INDEX[code]] = share
    return out


@pytest.mark.parametrize("color", ["white", "pink"])
def test_noise_is_added_at_the_exact_snr(color):
    wave = _tone()
    noisy = add_noise(wave, np.random.default_rng(0), snr_db_range=(10.0, 10.0), color=color)
    assert noisy.dtype == np.float32 and noisy.shape == wave.shape
    assert _snr_db(wave, noisy) == pytest.approx(10.0, abs=0.1)


def test_noise_clip_is_looped_or_cropped_and_snr_stays_in_range():
    wave = _tone()
    clip = np.random.default_rng(1).standard_normal(3000).astype(np.float32)  # shorter than the wave: looped
    noisy = add_noise(wave, np.random.default_rng(2), snr_db_range=(3.0, 3.0), noise=clip)
    assert _snr_db(wave, noisy) == pytest.approx(3.0, abs=0.1)
    rng = np.random.default_rng(3)
    for _ in range(20):
        assert 5.0 - 0.1 <= _snr_db(wave, add_noise(wave, rng)) <= 20.0 + 0.1
    silent = np.zeros(100, np.float32)
    assert np.array_equal(add_noise(silent, rng), silent)


def test_augmentations_never_touch_the_global_rng():
    state = np.random.get_state()[1].copy()
    rng = np.random.default_rng(0)
    add_noise(_tone(), rng)
    reverberate(_tone(), synthetic_rir(rng))
    random_gain(_tone(), rng)
    assert np.array_equal(np.random.get_state()[1], state)


def test_synthetic_rir_starts_with_the_direct_path_and_decays_at_its_rt60():
    rir = synthetic_rir(np.random.default_rng(0), SR, rt60_range=(0.5, 0.5))
    assert rir.dtype == np.float32 and rir.shape == (8000,)  # one RT60 long
    assert np.argmax(np.abs(rir)) == 0
    assert np.sum(rir.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-5)
    # 60 dB per RT60 in amplitude: windows 0.2 s apart differ by 60 * 0.2 / 0.5 = 24 dB in energy.
    early = np.mean(rir[1600:3200].astype(np.float64) ** 2)
    late = np.mean(rir[4800:6400].astype(np.float64) ** 2)
    assert 10 * np.log10(early / late) == pytest.approx(24.0, abs=2.0)
    lengths = [synthetic_rir(np.random.default_rng(s)).size for s in range(10)]
    assert all(0.2 * SR <= n <= 0.8 * SR for n in lengths)


def test_reverberate_keeps_length_and_energy():
    wave = _tone(0.5)
    wet = reverberate(wave, synthetic_rir(np.random.default_rng(0)))
    assert wet.shape == wave.shape and wet.dtype == np.float32
    assert np.mean(wet.astype(np.float64) ** 2) == pytest.approx(np.mean(wave.astype(np.float64) ** 2), rel=1e-4)
    assert not np.allclose(wet, wave, atol=1e-3)
    assert np.allclose(reverberate(wave, np.array([1.0], np.float32)), wave, atol=1e-6)  # a delta is a no-op


def test_random_gain_by_hand():
    wave = _tone()
    assert np.allclose(random_gain(wave, np.random.default_rng(0), db_range=(6.0, 6.0)), wave * 1.9952623, atol=1e-6)


def test_mix_clips_overlaps_partially_and_reports_weights():
    a = _tone(1.0, amp=0.2)  # 16000 samples
    b = _tone(0.5, freq=330.0, amp=0.4)  # 8000 samples, twice a's RMS
    mixed, (w_a, w_b) = mix_clips(a, b, np.random.default_rng(0), overlap_range=(0.5, 0.5))
    # overlap = 0.5 of the shorter clip = 4000 samples: b starts at 12000, the mixture ends at 20000.
    assert mixed.shape == (20000,) and mixed.dtype == np.float32
    assert (w_a, w_b) == pytest.approx((0.5, 0.25))  # b scaled to a's RMS, then both halved
    assert np.allclose(mixed[:12000], w_a * a[:12000], atol=1e-6)
    assert np.allclose(mixed[12000:16000], w_a * a[12000:] + w_b * b[:4000], atol=1e-6)
    assert np.allclose(mixed[16000:], w_b * b[4000:], atol=1e-6)
    for seed in range(10):  # b always starts inside a
        out, _ = mix_clips(a, b, np.random.default_rng(seed))
        assert 16000 < out.size <= 16000 + 8000 - int(0.3 * 8000) + 1


def test_mix_clips_scales_down_instead_of_clipping():
    # A click is loudness-matched to a steady clip: its gain is RMS_a / RMS_b = 0.9 / sqrt(1/1000).
    steady = np.full(1000, 0.9, np.float32)
    click = np.zeros(1000, np.float32)
    click[500] = 1.0
    mixed, (w_a, w_b) = mix_clips(steady, click, np.random.default_rng(0), overlap_range=(1.0, 1.0))
    assert mixed.shape == (1000,)  # full overlap
    peak = 0.5 * 0.9 + 0.5 * 0.9 / np.sqrt(1 / 1000)
    assert np.max(np.abs(mixed)) == pytest.approx(1.0, abs=1e-6)
    assert (w_a, w_b) == pytest.approx((0.5 / peak, 0.5 * 0.9 / np.sqrt(1 / 1000) / peak), rel=1e-5)


def test_mix_labels_averages_and_keeps_unknowns_unknown():
    soft, attrs = mix_labels(_dist(A=1.0), _dist(S=0.5, N=0.5), np.array([2.0, 4.0, np.nan]),
                             np.array([6.0, 3.0, 5.0]))
    assert np.allclose(soft, _dist(A=0.5, S=0.25, N=0.25))
    assert np.allclose(attrs[:2], [4.0, 3.5]) and np.isnan(attrs[2])
    unknown, _ = mix_labels(_dist(A=1.0), np.zeros(8), np.zeros(3), np.zeros(3))
    assert not unknown.any()


VOTES = ["A", "A", "S", None, "X", "N"]  # valid votes: A, A, S, N


def test_other_votes_widen_the_soft_label_and_never_make_it_one_class():
    """Two Other votes and one Neutral gave 100 % Neutral; an Other vote counts 1/8 for each class."""
    dist = vote_distribution(["Other-Concerned", "O", "N"])
    assert dist[CODE_TO_INDEX["N"]] == pytest.approx((1 + 2 / 8) / 3)
    assert dist.max() < 1 and dist.sum() == pytest.approx(1.0) and (dist > 0).all()
    assert np.allclose(vote_distribution(["A", "A", "S", "N", "O"]), _dist(A=0.4, S=0.2, N=0.2) + 0.2 / 8)


def test_annotator_dropout_by_hand():
    assert np.allclose(vote_distribution(VOTES), _dist(A=0.5, S=0.25, N=0.25))
    assert np.allclose(annotator_label_dropout(VOTES, np.random.default_rng(0), drop_prob=0.0),
                       _dist(A=0.5, S=0.25, N=0.25))
    # default_rng(1).random(4) = [0.512, 0.950, 0.144, 0.949]: with drop_prob 0.5, S is dropped.
    assert np.allclose(annotator_label_dropout(VOTES, np.random.default_rng(1), drop_prob=0.5),
                       _dist(A=2 / 3, N=1 / 3))
    # default_rng(3).random(4) = [0.086, 0.237, 0.801, 0.582]: both A votes are dropped.
    assert np.allclose(annotator_label_dropout(VOTES, np.random.default_rng(3), drop_prob=0.5),
                       _dist(S=0.5, N=0.5))
    for seed in range(5):  # everything dropped -> min_keep votes restored
        kept = annotator_label_dropout(VOTES, np.random.default_rng(seed), drop_prob=1.0, min_keep=2)
        assert kept.sum() == pytest.approx(1.0) and set(np.round(kept * 2, 6)) <= {0.0, 1.0, 2.0}
    assert not annotator_label_dropout(["X", None], np.random.default_rng(0)).any()
    with pytest.raises(ValueError, match="'Q'"):
        annotator_label_dropout(["A", "Q"], np.random.default_rng(0))


def test_annotator_dropout_keeps_the_distribution_in_expectation():
    # Votes are exchangeable, so each kept vote's expected share is 1/V: the mean is the full distribution.
    rng = np.random.default_rng(0)
    mean = np.mean([annotator_label_dropout(VOTES, rng, drop_prob=0.4) for _ in range(3000)], axis=0)
    assert np.allclose(mean, _dist(A=0.5, S=0.25, N=0.25), atol=0.02)


def _example(label: int, soft: np.ndarray, seconds: float = 1.0) -> dict:
    return {"wave": _tone(seconds), "label": label, "soft_label": soft, "attributes": np.array([3.0, 4.0, 5.0]),
            "annotations": (("w1", "A", 3, 4, 5), ("w2", "S", 3, 4, 5), ("w3", None, 3, 4, 5))}


def test_augmenter_off_is_identity_and_on_is_deterministic():
    example = _example(0, _dist(A=0.5, S=0.5))
    off = WaveformAugmenter(AugmentConfig())
    assert not off.config.any_enabled() and not off.wants_partner(np.random.default_rng(0))
    assert np.array_equal(off(example, np.random.default_rng(0))["wave"], example["wave"])

    config = from_dict(AugmentConfig, {"noise": {"enabled": True, "prob": 1.0, "snr_db_range": [10, 10]},
                                       "reverb": {"enabled": True, "prob": 1.0},
                                       "gain": {"enabled": True, "prob": 1.0},
                                       "label_dropout": {"enabled": True, "prob": 1.0, "drop_prob": 0.5}})
    on = WaveformAugmenter(config)
    first = on(example, np.random.default_rng(7))
    again = on(example, np.random.default_rng(7))
    assert np.array_equal(first["wave"], again["wave"]) and np.array_equal(first["soft_label"], again["soft_label"])
    assert first["wave"].shape == example["wave"].shape and first["wave"].dtype == np.float32
    assert not np.allclose(first["wave"], example["wave"])
    assert set(np.flatnonzero(first["soft_label"])) <= {CODE_TO_INDEX["A"], CODE_TO_INDEX["S"]}
    assert np.array_equal(example["soft_label"], _dist(A=0.5, S=0.5))  # the input is not modified


def test_augmenter_mix_with_averages_labels_and_sets_the_hard_label():
    config = from_dict(AugmentConfig, {"mix": {"enabled": True, "prob": 1.0, "overlap_range": [0.5, 0.5]}})
    augmenter = WaveformAugmenter(config)
    rng = np.random.default_rng(0)
    assert augmenter.wants_partner(rng)
    angry, sad = _example(CODE_TO_INDEX["A"], np.zeros(8)), _example(CODE_TO_INDEX["S"], _dist(S=0.75, N=0.25), 0.5)
    sad["attributes"] = np.array([5.0, 2.0, np.nan])
    mixed = augmenter(angry, rng, partner=sad)
    assert mixed["wave"].shape == (20000,)
    assert np.allclose(mixed["soft_label"], _dist(A=0.5, S=0.375, N=0.125))  # one-hot A averaged with S/N
    assert mixed["label"] == CODE_TO_INDEX["A"]
    assert np.allclose(mixed["attributes"][:2], [4.0, 3.0]) and np.isnan(mixed["attributes"][2])
    assert "annotations" not in mixed
    majority = augmenter.mix_with(sad, _example(CODE_TO_INDEX["N"], np.zeros(8)), rng)
    assert majority["label"] == CODE_TO_INDEX["N"]  # S 0.75 / 2 = 0.375 < N (0.25 + 1) / 2 = 0.625
    tie = augmenter.mix_with(angry, _example(CODE_TO_INDEX["S"], np.zeros(8)), rng)
    assert np.allclose(tie["soft_label"], _dist(A=0.5, S=0.5))
    assert tie["label"] == CODE_TO_INDEX["A"]  # a tie goes to the primary clip
    unknown = augmenter.mix_with(angry, _example(-1, np.zeros(8)), rng)
    assert unknown["label"] == -1 and not unknown["soft_label"].any()


def test_augment_config_reports_bad_values():
    with pytest.raises(ConfigError, match="noise.prob"):
        from_dict(AugmentConfig, {"noise": {"prob": 1.5}})
    with pytest.raises(ConfigError, match="overlap_range"):
        from_dict(AugmentConfig, {"mix": {"overlap_range": [0.2, 1.5]}})
    with pytest.raises(ConfigError, match="not one of"):
        from_dict(AugmentConfig, {"noise": {"colors": ["brown"]}})
