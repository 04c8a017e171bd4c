"""Waveform and label augmentation for training on naturalistic podcast speech.

MSP-Podcast is recorded in uncontrolled conditions, so the augmentations simulate what differs between
podcasts: background noise at a random SNR, room reverberation and level. Two label-side tricks from
the challenge systems are here too: SAIL-style mixing of two clips with averaged labels, and annotator
label dropout, which re-draws the soft label from a random subset of the annotators' votes so a model
does not overfit one vote split.

Every function takes a ``numpy.random.Generator`` and never touches the global RNG: the training data
set seeds it from (seed, epoch, index), so an example is augmented identically whatever the number of
processes or the resume point. Waves are float32 mono at 16 kHz.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from llmser.config import check_ranges
from llmser.schema import (
    ATTRIBUTES,
    CLASS_CODES,
    CODE_TO_INDEX,
    EXTRA_CODES,
    NUM_CLASSES,
    OTHER,
    normalise_class,
)

SAMPLE_RATE = 16000
_RT60_DECAY = np.log(1000.0)  # an amplitude decays by 60 dB (x 1/1000) over one RT60


def _power(wave: np.ndarray) -> float:
    return float(np.mean(np.square(wave, dtype=np.float64)))


# ---------------------------------------------------------------------- noise, reverberation, gain


def coloured_noise(rng: np.random.Generator, length: int, color: Literal["white", "pink"] = "white") -> np.ndarray:
    """Unit-power white noise, or pink noise (1/f power) shaped in the frequency domain."""
    white = rng.standard_normal(length)
    if color == "white":
        noise = white
    elif color == "pink":
        spectrum = np.fft.rfft(white)  # (length // 2 + 1,)
        freqs = np.arange(spectrum.size, dtype=np.float64)
        freqs[0] = 1.0  # the DC bin is removed below; avoid dividing by 0
        spectrum = spectrum / np.sqrt(freqs)
        spectrum[0] = 0.0
        noise = np.fft.irfft(spectrum, n=length)
    else:
        raise ValueError(f"noise color must be 'white' or 'pink', got {color!r}")
    return (noise / np.sqrt(max(_power(noise), 1e-20))).astype(np.float32)


def add_noise(wave: np.ndarray, rng: np.random.Generator, snr_db_range: tuple[float, float] = (5.0, 20.0),
              noise: np.ndarray | None = None, color: Literal["white", "pink"] = "white") -> np.ndarray:
    """Add noise at an SNR drawn uniformly from ``snr_db_range`` (dB, signal power over noise power).

    ``noise`` is a recorded clip (looped if too short, randomly cropped if too long); without it,
    white or pink noise is generated. A silent wave is returned unchanged (its SNR is undefined).
    """
    wave = np.asarray(wave, dtype=np.float32)
    signal_power = _power(wave)
    if wave.size == 0 or signal_power == 0.0:
        return wave.copy()
    if noise is None:
        clip = coloured_noise(rng, wave.size, color)
    else:
        clip = _fit_length(np.asarray(noise, dtype=np.float32), wave.size, rng)
    noise_power = _power(clip)
    if noise_power == 0.0:
        raise ValueError("the noise clip is silent (all zeros); pass a clip with content or noise=None")
    snr_db = rng.uniform(*snr_db_range)
    scale = np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (wave + scale * clip).astype(np.float32)


def _fit_length(clip: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    if clip.size == 0:
        raise ValueError("the noise clip is empty")
    if clip.size < length:
        clip = np.tile(clip, -(-length // clip.size))
    start = int(rng.integers(clip.size - length + 1))
    return clip[start:start + length]


def synthetic_rir(rng: np.random.Generator, sample_rate: int = SAMPLE_RATE,
                  rt60_range: tuple[float, float] = (0.2, 0.8)) -> np.ndarray:
    """A room impulse response: a unit direct path then exponentially decaying Gaussian noise.

    The envelope ``exp(-ln(1000) t / RT60)`` falls by 60 dB over the RT60 drawn from ``rt60_range``
    (seconds), the usual definition of reverberation time; the tail is one RT60 long.
    """
    rt60 = rng.uniform(*rt60_range)
    length = max(int(rt60 * sample_rate), 2)
    t = np.arange(length) / sample_rate
    rir = rng.standard_normal(length) * np.exp(-_RT60_DECAY * t / rt60)
    rir *= 0.1  # reflections are weaker than the direct sound
    rir[0] = 1.0
    return (rir / np.sqrt(np.sum(rir ** 2))).astype(np.float32)


def reverberate(wave: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with ``rir``, keep the original length, and restore the original energy."""
    from scipy.signal import fftconvolve

    wave = np.asarray(wave, dtype=np.float32)
    wet = fftconvolve(wave.astype(np.float64), np.asarray(rir, dtype=np.float64))[: wave.size]
    wet_power = _power(wet)
    if wet_power == 0.0:
        return wave.copy()
    return (wet * np.sqrt(_power(wave) / wet_power)).astype(np.float32)


def random_gain(wave: np.ndarray, rng: np.random.Generator, db_range: tuple[float, float] = (-6.0, 6.0)) -> np.ndarray:
    """Scale by a gain drawn uniformly in dB (recording level varies between podcasts)."""
    gain_db = rng.uniform(*db_range)
    return (np.asarray(wave, dtype=np.float32) * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)


# ---------------------------------------------------------------------- mixing


def mix_clips(wave_a: np.ndarray, wave_b: np.ndarray, rng: np.random.Generator,
              overlap_range: tuple[float, float] = (0.3, 0.7)) -> tuple[np.ndarray, tuple[float, float]]:
    """SAIL-style mixture: ``b`` starts inside ``a`` so the two overlap partially.

    The overlap, drawn from ``overlap_range``, is a fraction of the shorter clip: ``b`` starts
    ``round(overlap * min(len_a, len_b))`` samples before ``a`` ends, and the mixture lasts until the
    later of the two ends. ``b`` is scaled to ``a``'s RMS so neither speaker dominates, both are halved,
    and the pair is scaled down if the sum would clip. Returns the mixture and the weights (w_a, w_b)
    that multiplied each clip.
    """
    a = np.asarray(wave_a, dtype=np.float32)
    b = np.asarray(wave_b, dtype=np.float32)
    if a.size == 0 or b.size == 0:
        raise ValueError(f"cannot mix an empty clip (lengths {a.size} and {b.size})")
    overlap = rng.uniform(*overlap_range)
    start = a.size - int(round(overlap * min(a.size, b.size)))  # where b begins, inside a
    length = max(a.size, start + b.size)
    power_a, power_b = _power(a), _power(b)
    match = np.sqrt(power_a / power_b) if power_a > 0 and power_b > 0 else 1.0
    w_a, w_b = 0.5, 0.5 * float(match)
    mixed = np.zeros(length, dtype=np.float64)
    mixed[: a.size] += w_a * a
    mixed[start:start + b.size] += w_b * b
    peak = float(np.max(np.abs(mixed)))
    if peak > 1.0:
        mixed /= peak
        w_a, w_b = w_a / peak, w_b / peak
    return mixed.astype(np.float32), (w_a, w_b)


def mix_labels(dist_a: np.ndarray, dist_b: np.ndarray, attrs_a: np.ndarray,
               attrs_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels of a two-clip mixture: the plain average of the two class distributions and attributes.

    Equal weights follow the SAIL recipe (both clips are present and loudness-matched, so both
    emotions are perceivable, whatever the overlap). If either distribution is all zeros (unknown), the
    mixture's is unknown too (zeros); an unknown (NaN) attribute stays NaN for the same reason.
    """
    dist_a, dist_b = np.asarray(dist_a, np.float32), np.asarray(dist_b, np.float32)
    if dist_a.sum() > 0 and dist_b.sum() > 0:
        dist = (dist_a + dist_b) / 2.0
    else:
        dist = np.zeros_like(dist_a)
    attrs = (np.asarray(attrs_a, np.float32) + np.asarray(attrs_b, np.float32)) / 2.0
    return dist.astype(np.float32), attrs.astype(np.float32)


# ---------------------------------------------------------------------- annotator label dropout


def vote_distribution(codes: Sequence[str | None]) -> np.ndarray:
    """The annotators' votes as a distribution over CLASS_CODES (8,); zeros when no vote counts.

    A vote for one of the eight classes counts for it. An "Other" vote (O, Other-<word>) says none of the
    eight fits: it counts as 1/8 for each, so it widens the distribution instead of vanishing (two Other
    votes and one Neutral give Neutral 5/12, not 100 %). X and None are not votes.
    """
    counts = np.zeros(NUM_CLASSES, dtype=np.float32)
    for code in _valid_votes(codes):
        if code == OTHER:
            counts += 1.0 / NUM_CLASSES
        else:
            counts[CODE_TO_INDEX[code]] += 1
    return counts / counts.sum() if counts.sum() > 0 else counts


def _valid_votes(codes: Sequence[str | None]) -> list[str]:
    """The votes that count: the eight classes and Other (O); X and None left out."""
    votes = []
    for raw in codes:
        if raw is None:
            continue
        code = normalise_class(raw)
        if code is None:
            raise ValueError(f"annotator vote {raw!r} is not a class code or name; valid codes are "
                             f"{', '.join(CLASS_CODES + EXTRA_CODES)}")
        if code in CODE_TO_INDEX or code == OTHER:
            votes.append(code)
    return votes


def annotator_label_dropout(annotator_codes: Sequence[str | None], rng: np.random.Generator,
                            drop_prob: float = 0.2, min_keep: int = 1) -> np.ndarray:
    """Drop each valid vote with ``drop_prob`` (keeping at least ``min_keep``) and return the new (8,) distribution.

    Votes for the eight classes and Other take part (X/None are ignored, as in the soft label itself). If
    fewer than ``min_keep`` survive, randomly chosen dropped votes are restored. Returns zeros when no
    vote is valid.
    """
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob}")
    votes = _valid_votes(annotator_codes)
    if not votes:
        return np.zeros(NUM_CLASSES, dtype=np.float32)
    keep = rng.random(len(votes)) >= drop_prob  # (V,)
    missing = min(min_keep, len(votes)) - int(keep.sum())
    if missing > 0:
        restored = rng.choice(np.flatnonzero(~keep), size=missing, replace=False)
        keep[restored] = True
    return vote_distribution([v for v, k in zip(votes, keep) if k])


def annotation_code(annotation: Any) -> str | None:
    """The class vote of one annotation: a code string, an object with ``.code``, or a reader tuple
    ``(worker, code, arousal, valence, dominance)``."""
    if annotation is None or isinstance(annotation, str):
        return annotation
    if hasattr(annotation, "code"):
        return annotation.code
    if isinstance(annotation, Sequence) and len(annotation) >= 2:
        return annotation[1]
    raise ValueError(f"cannot read an annotator vote from {annotation!r}; expected a code or "
                     "(worker, code, arousal, valence, dominance)")


# ---------------------------------------------------------------------- config and augmenter


@dataclass
class NoiseConfig:
    enabled: bool = field(default=False, metadata={"help": "apply this augmentation while training"})
    prob: float = field(default=0.5, metadata={"help": "probability of applying it to an example", "min": 0, "max": 1})
    snr_db_range: tuple[float, ...] = field(default=(5.0, 20.0), metadata={"help": "signal-to-noise ratio range in dB (min, max)"})
    colors: tuple[Literal["white", "pink"], ...] = field(default=("white", "pink"), metadata={"help": "one drawn per example"})


@dataclass
class ReverbConfig:
    enabled: bool = field(default=False, metadata={"help": "apply this augmentation while training"})
    prob: float = field(default=0.3, metadata={"help": "probability of applying it to an example", "min": 0, "max": 1})
    rt60_range: tuple[float, ...] = (0.2, 0.8)


@dataclass
class GainConfig:
    enabled: bool = field(default=False, metadata={"help": "apply this augmentation while training"})
    prob: float = field(default=0.5, metadata={"help": "probability of applying it to an example", "min": 0, "max": 1})
    db_range: tuple[float, ...] = field(default=(-6.0, 6.0), metadata={"help": "gain range in dB (min, max)"})


@dataclass
class MixConfig:
    enabled: bool = field(default=False, metadata={"help": "apply this augmentation while training"})
    prob: float = field(default=0.2, metadata={"help": "probability of applying it to an example", "min": 0, "max": 1})
    overlap_range: tuple[float, ...] = field(default=(0.3, 0.7), metadata={"help": "share of the second clip mixed in (min, max); labels are averaged with the same weight", "min": 0, "max": 1})


@dataclass
class LabelDropoutConfig:
    enabled: bool = field(default=False, metadata={"help": "apply this augmentation while training"})
    prob: float = field(default=0.5, metadata={"help": "probability of applying it to an example", "min": 0, "max": 1})
    drop_prob: float = field(default=0.2, metadata={"help": "probability of dropping each annotator's label before the soft label is computed", "min": 0, "max": 1})
    min_keep: int = field(default=1, metadata={"help": "annotators always kept per file", "min": 0})


@dataclass
class AugmentConfig:
    """Each augmentation: ``enabled``, the probability ``prob`` it applies to an example, its ranges.

    All are off by default, so a recipe opts in explicitly, e.g. ``data.augment.noise.enabled=true``.
    """

    noise: NoiseConfig = field(default_factory=NoiseConfig, metadata={"help": "additive noise at a random SNR"})
    reverb: ReverbConfig = field(default_factory=ReverbConfig, metadata={"help": "synthetic room reverberation"})
    gain: GainConfig = field(default_factory=GainConfig, metadata={"help": "random loudness change"})
    mix: MixConfig = field(default_factory=MixConfig, metadata={"help": "mix two clips and average their labels"})
    label_dropout: LabelDropoutConfig = field(default_factory=LabelDropoutConfig, metadata={"help": "drop annotator labels (soft-label training)"})
    sample_rate: int = field(default=SAMPLE_RATE, metadata={"help": "sample rate of the waveforms (Hz)", "min": 1})

    def __post_init__(self) -> None:
        check_ranges(self)
        issues = []
        for name in ("noise", "reverb", "gain", "mix", "label_dropout"):
            part = getattr(self, name)
            for key in ("snr_db_range", "rt60_range", "db_range", "overlap_range"):
                value = getattr(part, key, None)
                if value is not None and (len(value) != 2 or value[0] > value[1]):
                    issues.append(f"{name}.{key} must be [low, high] with low <= high, got {list(value)}")
        if self.reverb.rt60_range and self.reverb.rt60_range[0] <= 0:
            issues.append(f"reverb.rt60_range must be positive seconds, got {list(self.reverb.rt60_range)}")
        if not self.noise.colors:
            issues.append("noise.colors needs at least one of 'white', 'pink'")
        if issues:
            raise ValueError("; ".join(issues))

    def any_enabled(self) -> bool:
        return any(getattr(self, name).enabled for name in ("noise", "reverb", "gain", "mix", "label_dropout"))


class WaveformAugmenter:
    """Applies the enabled augmentations to one example dict, drawing every choice from a given rng.

    An example holds ``wave`` (float32), ``soft_label`` (8,), ``attributes`` (3,), optionally ``label``
    and ``annotations``; a new dict is returned and the input is left untouched. Order: label dropout
    (on each clip's own votes), mixing with a partner, then reverberation, noise and gain on the result,
    so a mixture sounds like two people in one room.
    """

    def __init__(self, config: AugmentConfig | None = None):
        self.config = config or AugmentConfig()

    def wants_partner(self, rng: np.random.Generator) -> bool:
        """Decide whether this example is mixed; the caller then loads a partner and passes it in."""
        return self.config.mix.enabled and rng.random() < self.config.mix.prob

    def __call__(self, example: dict[str, Any], rng: np.random.Generator,
                 partner: dict[str, Any] | None = None) -> dict[str, Any]:
        cfg = self.config
        example = self.drop_annotator_labels(example, rng)
        if partner is not None:
            example = self.mix_with(example, self.drop_annotator_labels(partner, rng), rng)
        wave = example["wave"]
        if cfg.reverb.enabled and rng.random() < cfg.reverb.prob:
            wave = reverberate(wave, synthetic_rir(rng, cfg.sample_rate, tuple(cfg.reverb.rt60_range)))
        if cfg.noise.enabled and rng.random() < cfg.noise.prob:
            color = cfg.noise.colors[int(rng.integers(len(cfg.noise.colors)))]
            wave = add_noise(wave, rng, tuple(cfg.noise.snr_db_range), color=color)
        if cfg.gain.enabled and rng.random() < cfg.gain.prob:
            wave = random_gain(wave, rng, tuple(cfg.gain.db_range))
        return {**example, "wave": wave}

    def drop_annotator_labels(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Re-draw ``soft_label`` from a random subset of the votes (when enabled and votes exist)."""
        cfg = self.config.label_dropout
        annotations = example.get("annotations") or ()
        if not cfg.enabled or not annotations or rng.random() >= cfg.prob:
            return example
        codes = [annotation_code(a) for a in annotations]
        soft = annotator_label_dropout(codes, rng, drop_prob=cfg.drop_prob, min_keep=cfg.min_keep)
        if soft.sum() == 0:  # no valid vote: keep whatever the example had
            return example
        return {**example, "soft_label": soft}

    def mix_with(self, example: dict[str, Any], other: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Mix ``other`` into ``example``: mixed wave, averaged labels, and the hard label of the mixture.

        A clip without a soft label contributes the one-hot of its hard label. The hard ``label`` becomes
        the arg-max of the averaged distribution, ties (two different one-hot labels) going to
        ``example``'s label, or -1 when either clip has no class; soft-label losses are the ones that
        use the whole mixture.
        """
        wave, weights = mix_clips(example["wave"], other["wave"], rng, tuple(self.config.mix.overlap_range))
        dist_a, dist_b = _distribution(example), _distribution(other)
        soft, attrs = mix_labels(dist_a, dist_b, _attributes(example), _attributes(other))
        label = int(example.get("label", -1))
        if soft.sum() > 0:
            best = np.flatnonzero(np.isclose(soft, soft.max()))
            label = label if label in best else int(best[0])
        else:  # one clip's class is unknown, so the mixture's is too
            label = -1
        mixed = {**example, "wave": wave, "soft_label": soft, "attributes": attrs, "label": label,
                 "mix_weights": weights}
        mixed.pop("annotations", None)  # the votes no longer describe the mixture
        return mixed


def _distribution(example: dict[str, Any]) -> np.ndarray:
    soft = example.get("soft_label")
    soft = np.zeros(NUM_CLASSES, np.float32) if soft is None else np.asarray(soft, np.float32)
    label = int(example.get("label", -1))
    if soft.sum() == 0 and label >= 0:
        soft = np.eye(NUM_CLASSES, dtype=np.float32)[label]
    return soft


def _attributes(example: dict[str, Any]) -> np.ndarray:
    attrs = example.get("attributes")
    return np.full(len(ATTRIBUTES), np.nan, np.float32) if attrs is None else np.asarray(attrs, np.float32)
