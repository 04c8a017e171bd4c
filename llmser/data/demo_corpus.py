"""A synthetic corpus in the exact MSP-Podcast release layout, for the CPU demo and the tests.

Real MSP-Podcast data is licensed, so llmser makes its own. Emotion is carried two ways, as in
natural speech:

- **prosody**: each class has a pitch / rate / loudness / pause profile, shifted by the utterance's
  arousal, with per-speaker offsets and per-utterance jitter (espeak-ng voices of both genders);
- **words**: about half the sentences use emotional wording of their class; the rest are neutral
  sentences shared by all classes, so neither the text nor the audio alone solves the task.

Labels mimic the release: MSP-like class imbalance (Neutral and Happy frequent, Fear/Disgust rare),
five annotators per file who disagree realistically (``labels_detailed.csv``), a consensus derived
from their votes (plurality with >= 3 of 5 votes, else ``X``; ``O`` when "Other" wins), attributes
correlated with the class including extreme values, and speakers disjoint across splits.

The label plan is pure Python (fast, testable); synthesis runs espeak-ng processes in parallel.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from llmser.schema import CLASS_CODES, CODE_TO_NAME
from llmser.utils.io import atomic_open, atomic_write_json, atomic_write_text


class DemoCorpusError(RuntimeError):
    """The demo corpus cannot be made (espeak-ng missing, output folder in use)."""


CLASS_PRIOR = {"N": 0.30, "H": 0.25, "A": 0.12, "S": 0.11, "C": 0.07, "U": 0.06, "D": 0.05, "F": 0.04}
EXTRA_SHARE = {"X": 0.05, "O": 0.03}
# (arousal, valence, dominance) means per class on the 1-7 scale
ATTRIBUTE_MEANS = {"A": (5.7, 2.2, 5.4), "S": (2.3, 2.2, 2.5), "H": (5.0, 6.0, 4.8), "U": (5.8, 4.8, 4.0),
                   "F": (5.4, 2.3, 2.3), "D": (4.2, 2.0, 4.6), "C": (3.6, 2.8, 5.6), "N": (3.8, 4.1, 4.0)}
# espeak-ng pitch (0-99), speed (words/min), amplitude (0-200), word gap (10 ms units)
PROSODY = {"A": (55, 195, 185, 0), "S": (22, 115, 65, 9), "H": (72, 185, 135, 0), "U": (92, 165, 150, 3),
           "F": (80, 210, 80, 1), "D": (32, 130, 115, 5), "C": (28, 145, 125, 4), "N": (45, 160, 100, 1)}
CONFUSABLE = {"A": "DCU", "S": "NFC", "H": "UNA", "U": "HFA", "F": "USD", "D": "ACS", "C": "DAN", "N": "SHC"}
OTHER_WORDS = ("Concerned", "Frustrated", "Amused", "Confused", "Bored", "Disappointed")
SPLITS = ("Train", "Development", "Test1")
#: The optional unlabelled split (``DemoCorpusConfig.blind``): empty label cells, no annotator rows, as the release's Test3.
BLIND_SPLIT = "Test3"

NEUTRAL_SENTENCES = (
    "the meeting starts at nine tomorrow morning", "we drove to the coast on saturday",
    "the report is on the table by the window", "she moved to a new apartment last month",
    "the train leaves from platform four", "i think the shop closes at six",
    "they painted the kitchen a light colour", "the package arrived this afternoon",
    "he usually takes the bus to work", "the library has a new section on history",
    "we talked about the schedule for next week", "the weather will change later today",
    "my brother plays the guitar in a band", "the numbers are in the second column",
    "she is reading a book about gardens", "the road goes past the old mill",
    "we need more paper for the printer", "the game was moved to thursday",
    "the recipe uses two cups of flour", "he called his aunt on sunday",
    "the office is on the third floor", "they are building a bridge over the river",
    "the class begins after lunch", "i left my umbrella in the car",
    "the museum opens at ten", "our neighbour has a small dog",
    "the film lasts about two hours", "we bought some bread and milk",
    "the podcast is recorded every tuesday", "the garden needs water in summer",
)
EMOTIONAL_SENTENCES = {
    "A": ("this is absolutely outrageous and i am furious", "stop lying to me right now",
          "i am sick and tired of this nonsense", "how dare you ignore me again",
          "that was a stupid and infuriating decision", "i am so angry i could scream"),
    "S": ("i miss her so much it hurts", "nothing will ever be the same again",
          "i feel so lonely and lost these days", "it breaks my heart to say goodbye",
          "we lost everything in the end", "i just want to cry all day"),
    "H": ("this is the best day of my life", "i am so happy for you both",
          "we won and it feels wonderful", "what a lovely surprise this is, thank you",
          "i love this so much, it is fantastic", "everything worked out perfectly today"),
    "U": ("wait, what, i did not expect that at all", "no way, are you serious right now",
          "wow, i can not believe this happened", "really, they said yes, that is unbelievable",
          "oh my, where did that come from", "that is such a shock, i had no idea"),
    "F": ("i am terrified something bad will happen", "please help me, i am so scared",
          "someone is following us, we need to hide", "i am afraid to go out there alone",
          "what if they find out, i am panicking", "that noise frightens me so much"),
    "D": ("that is disgusting, it smells rotten", "ugh, this food is revolting",
          "i feel sick just looking at it", "that is gross and filthy",
          "how can anyone eat something so vile", "this place is nasty and dirty"),
    "C": ("oh please, as if you would know anything", "he is pathetic and beneath me",
          "what a ridiculous little idea", "they are clueless, as usual",
          "i would not expect much from people like them", "that is laughable, honestly"),
}
MALE_VOICES = ("en+m1", "en+m2", "en+m3", "en+m4", "en+m5", "en+m6", "en+m7")
FEMALE_VOICES = ("en+f1", "en+f2", "en+f3", "en+f4", "en+f5")


@dataclass
class DemoCorpusConfig:
    n: int = 400
    seed: int = 0
    n_speakers: int = 20
    n_annotators: int = 5
    annotator_pool: int = 30
    annotator_accuracy: float = 0.8
    emotional_wording_share: float = 0.5
    split_shares: tuple[float, float, float] = (0.6, 0.2, 0.2)
    noise: bool = True
    workers: int = 4
    blind: int = 0  # extra files in a blind Test3 split (two speakers of its own), beside the n labelled ones

    def __post_init__(self) -> None:
        if self.blind < 0:
            raise ValueError(f"blind={self.blind}: give the number of blind Test3 files (0 for none)")
        if self.n < 16:
            raise ValueError(f"n={self.n} is too small for three splits of eight classes; use n >= 16")
        if self.n_speakers < 6:
            raise ValueError("need at least 6 speakers (two per split)")


@dataclass
class PlannedUtterance:
    file_name: str
    split: str
    speaker: int
    gender: str
    voice: str
    intended: str  # the class the speech was made for (A..N, or X/O)
    text: str
    emotional_wording: bool
    arousal: float
    valence: float
    dominance: float
    prosody: tuple[int, int, int, int]
    annotations: list[dict] = field(default_factory=list)
    consensus: str = "N"
    consensus_attributes: tuple[float, float, float] = (4.0, 4.0, 4.0)
    noise_snr_db: float | None = None


# ---------------------------------------------------------------------- the label plan (pure python)


def plan_corpus(config: DemoCorpusConfig) -> list[PlannedUtterance]:
    rng = np.random.default_rng(config.seed)
    speakers = _plan_speakers(config, rng)
    codes = _sample_codes(config, rng)
    split_of = _assign_splits(config, rng)
    plan: list[PlannedUtterance] = []
    for i, code in enumerate(codes):
        split = split_of[i]
        pool = [s for s in speakers if s["split"] == split]
        speaker = pool[int(rng.integers(len(pool)))]
        plan.append(_plan_one(i, code, split, speaker, config, rng))
    _ensure_min_per_class(plan, config, rng, speakers)
    for utt in plan:
        _annotate(utt, config, rng)
    return plan + _plan_blind(config, speakers)


def _plan_blind(config: DemoCorpusConfig, speakers: list[dict]) -> list[PlannedUtterance]:
    """``config.blind`` files of the blind split: speech made like the rest (own rng, so the labelled part
    is the same corpus as without them), by two speakers of their own; they are written without labels."""
    if not config.blind:
        return []
    rng = np.random.default_rng([config.seed, 3])
    pool = []
    for k in range(2):
        sid = len(speakers) + k
        gender = "Female" if sid % 2 == 0 else "Male"
        voices = FEMALE_VOICES if gender == "Female" else MALE_VOICES
        pool.append({"id": 100 + sid, "split": BLIND_SPLIT, "gender": gender, "voice": voices[sid % len(voices)],
                     "pitch_offset": int(rng.integers(-10, 11)), "speed_offset": int(rng.integers(-12, 13))})
    codes = _sample_codes(DemoCorpusConfig(n=max(16, config.blind), seed=config.seed), rng)[:config.blind]
    return [_plan_one(config.n + i, code, BLIND_SPLIT, pool[i % 2], config, rng) for i, code in enumerate(codes)]

def _plan_speakers(config: DemoCorpusConfig, rng) -> list[dict]:
    counts = [max(2, round(config.n_speakers * s)) for s in config.split_shares]
    counts[0] = config.n_speakers - counts[1] - counts[2]
    speakers, sid = [], 0
    for split, count in zip(SPLITS, counts):
        for _ in range(count):
            gender = "Female" if sid % 2 == 0 else "Male"
            voices = FEMALE_VOICES if gender == "Female" else MALE_VOICES
            speakers.append({"id": 100 + sid, "split": split, "gender": gender,
                             "voice": voices[sid % len(voices)],
                             "pitch_offset": int(rng.integers(-10, 11)), "speed_offset": int(rng.integers(-12, 13))})
            sid += 1
    return speakers


def _sample_codes(config: DemoCorpusConfig, rng) -> list[str]:
    codes = list(CLASS_PRIOR) + list(EXTRA_SHARE)
    probs = np.array([CLASS_PRIOR[c] * (1 - sum(EXTRA_SHARE.values())) for c in CLASS_PRIOR]
                     + list(EXTRA_SHARE.values()))
    return [codes[i] for i in rng.choice(len(codes), size=config.n, p=probs / probs.sum())]


def _assign_splits(config: DemoCorpusConfig, rng) -> list[str]:
    shares = np.array(config.split_shares) / sum(config.split_shares)
    counts = np.floor(shares * config.n).astype(int)
    counts[0] += config.n - counts.sum()
    splits = [s for s, c in zip(SPLITS, counts) for _ in range(c)]
    return [splits[i] for i in rng.permutation(config.n)]


def _plan_one(i: int, code: str, split: str, speaker: dict, config: DemoCorpusConfig, rng) -> PlannedUtterance:
    acoustic = code if code in CLASS_CODES else str(rng.choice(list(CLASS_CODES)))
    means = np.array(ATTRIBUTE_MEANS[acoustic])
    attrs = np.clip(means + rng.normal(0, 0.75, 3), 1.0, 7.0)
    wording = code in EMOTIONAL_SENTENCES and rng.random() < config.emotional_wording_share
    pool = EMOTIONAL_SENTENCES[code] if wording else NEUTRAL_SENTENCES
    text = pool[int(rng.integers(len(pool)))]
    pitch, speed, amp, gap = PROSODY[acoustic]
    arousal_shift = attrs[0] - 4.0
    prosody = (int(np.clip(pitch + speaker["pitch_offset"] + rng.integers(-5, 6) + 3 * arousal_shift, 0, 99)),
               int(np.clip(speed + speaker["speed_offset"] + rng.integers(-8, 9) + 8 * arousal_shift, 90, 260)),
               int(np.clip(amp + rng.integers(-10, 11) + 12 * arousal_shift, 30, 200)),
               int(max(0, gap + rng.integers(-1, 2))))
    snr = float(rng.uniform(15, 35)) if config.noise else None
    return PlannedUtterance(
        file_name=f"MSP-PODCAST_{speaker['id']:04d}_{i:04d}.wav", split=split, speaker=speaker["id"],
        gender=speaker["gender"], voice=speaker["voice"], intended=code, text=text, emotional_wording=wording,
        arousal=float(attrs[0]), valence=float(attrs[1]), dominance=float(attrs[2]), prosody=prosody,
        noise_snr_db=snr)


def _ensure_min_per_class(plan: list[PlannedUtterance], config: DemoCorpusConfig, rng, speakers) -> None:
    """Every class appears at least twice in every split (when n allows): relabel frequent-class files."""
    if config.n < 200:
        return
    for split in SPLITS:
        for code in CLASS_CODES:
            have = [u for u in plan if u.split == split and u.intended == code]
            donors = [u for u in plan if u.split == split and u.intended in ("N", "H")]
            for _ in range(max(0, 2 - len(have))):
                if not donors:
                    break
                old = donors.pop(int(rng.integers(len(donors))))
                index = plan.index(old)
                speaker = next(s for s in speakers if s["id"] == old.speaker)
                plan[index] = _plan_one(int(old.file_name[-8:-4]), code, split, speaker, config, rng)


def _annotate(utt: PlannedUtterance, config: DemoCorpusConfig, rng) -> None:
    workers = rng.choice(config.annotator_pool, size=config.n_annotators, replace=False)
    votes = []
    for worker in workers:
        if utt.intended == "X":
            label = str(rng.choice(list(CLASS_CODES)))
        elif utt.intended == "O" and rng.random() < 0.75:
            label = "O"
        elif utt.intended in CLASS_CODES and rng.random() < config.annotator_accuracy:
            label = utt.intended
        elif utt.intended in CLASS_CODES and rng.random() < 0.8:
            label = str(rng.choice(list(CONFUSABLE[utt.intended])))
        else:
            label = "O" if rng.random() < 0.5 else str(rng.choice(list(CLASS_CODES)))
        values = np.clip(np.round(np.array([utt.arousal, utt.valence, utt.dominance]) + rng.normal(0, 0.8, 3)), 1, 7)
        name = f"Other-{OTHER_WORDS[int(rng.integers(len(OTHER_WORDS)))]}" if label == "O" else CODE_TO_NAME[label]
        utt.annotations.append({"WorkerID": f"W{int(worker):03d}", "EmoClass": name, "code": label,
                                "EmoAct": float(values[0]), "EmoVal": float(values[1]), "EmoDom": float(values[2])})
        votes.append(label)
    top, count = Counter(votes).most_common(1)[0]
    utt.consensus = top if count >= 3 else "X"
    utt.consensus_attributes = tuple(round(float(np.mean([a[k] for a in utt.annotations])), 4)
                                     for k in ("EmoAct", "EmoVal", "EmoDom"))


# ---------------------------------------------------------------------- synthesis and writing


def find_espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise DemoCorpusError("espeak-ng is not installed; it synthesises the demo corpus. Install it with "
                              "`apt-get install espeak-ng` (or run scripts/setup_env.sh as root)")
    return path


def _synthesise(espeak: str, utt: PlannedUtterance, out_path: Path, seed: int) -> None:
    import soundfile as sf
    import soxr

    pitch, speed, amp, gap = utt.prosody
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        cmd = [espeak, "-v", utt.voice, "-p", str(pitch), "-s", str(speed), "-a", str(amp), "-g", str(gap),
               "-w", str(raw), utt.text]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if result.returncode != 0 or not raw.is_file():
            raise DemoCorpusError(f"espeak-ng failed for {utt.file_name}: {result.stderr.strip()}")
        wave, rate = sf.read(str(raw), dtype="float32")
    if wave.ndim > 1:
        wave = wave.mean(axis=1)
    wave = soxr.resample(wave, rate, 16000)
    if utt.noise_snr_db is not None:
        rng = np.random.default_rng([seed, int(utt.file_name[-8:-4])])
        power = float(np.mean(wave**2)) + 1e-12
        wave = wave + rng.normal(0, np.sqrt(power / 10 ** (utt.noise_snr_db / 10)), wave.shape).astype(np.float32)
    wave = np.clip(wave, -1, 1)
    tmp_path = out_path.with_name(f".{out_path.name}.tmp.wav")
    sf.write(str(tmp_path), wave, 16000, subtype="PCM_16")
    tmp_path.replace(out_path)


def make_demo_corpus(out_dir: str | Path, config: DemoCorpusConfig | None = None, *, overwrite: bool = False,
                     progress: bool = True) -> dict:
    """Write the corpus into ``out_dir``; returns a summary (files, seconds, class counts per split)."""
    from tqdm.auto import tqdm

    config = config or DemoCorpusConfig()
    out = Path(out_dir)
    espeak = find_espeak()
    if out.exists() and any(out.iterdir()):
        if not (out / "demo_corpus.json").is_file():
            raise DemoCorpusError(f"{out} is not empty and is not a demo corpus; choose another folder")
        if not overwrite:
            raise DemoCorpusError(f"{out} already holds a demo corpus; pass --overwrite to replace it")
        for sub in ("Audios", "Labels", "Transcripts"):
            shutil.rmtree(out / sub, ignore_errors=True)
    started = time.perf_counter()
    plan = plan_corpus(config)
    for sub in ("Audios", "Labels", "Transcripts"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        jobs = [pool.submit(_synthesise, espeak, u, out / "Audios" / u.file_name, config.seed) for u in plan]
        for job in tqdm(jobs, desc="synthesising demo corpus", disable=not progress):
            job.result()
    for u in plan:
        atomic_write_text(out / "Transcripts" / f"{Path(u.file_name).stem}.txt", u.text + "\n")
    write_labels(out, plan)
    summary = {"n_files": len(plan), "seconds": round(time.perf_counter() - started, 2),
               "class_counts": class_counts(plan), "speakers": {
                   s: sorted({u.speaker for u in plan if u.split == s}) for s in SPLITS}}
    if config.blind:
        summary["blind"] = {"split": BLIND_SPLIT, "n_files": config.blind,
                            "speakers": sorted({u.speaker for u in plan if u.split == BLIND_SPLIT})}
    meta = {"synthetic": True, "generator": "llmser.data.demo_corpus", **asdict(config), **summary}
    atomic_write_json(out / "demo_corpus.json", meta)
    atomic_write_text(out / "README.md", _readme(config, summary))
    return summary


def write_labels(out: Path, plan: list[PlannedUtterance]) -> None:
    with atomic_open(out / "Labels" / "labels_consensus.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"])
        for u in plan:
            labels = ["", "", "", ""] if u.split == BLIND_SPLIT else [u.consensus, *u.consensus_attributes]
            writer.writerow([u.file_name, *labels, u.speaker, u.gender, u.split])
    with atomic_open(out / "Labels" / "labels_detailed.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["FileName", "WorkerID", "EmoClass", "EmoAct", "EmoVal", "EmoDom"])
        for u in plan:
            for a in u.annotations:  # none for the blind split
                writer.writerow([u.file_name, a["WorkerID"], a["EmoClass"], a["EmoAct"], a["EmoVal"], a["EmoDom"]])


def class_counts(plan: list[PlannedUtterance]) -> dict[str, dict[str, int]]:
    result = {}
    for split in SPLITS:
        counts = Counter(u.consensus for u in plan if u.split == split)
        result[split] = {c: counts.get(c, 0) for c in (*CLASS_CODES, "X", "O")}
    return result


def _readme(config: DemoCorpusConfig, summary: dict) -> str:
    rows = "\n".join(f"| {s} | " + " | ".join(str(v) for v in c.values()) + " |"
                     for s, c in summary["class_counts"].items())
    return (f"# llmser demo corpus (synthetic)\n\nGenerated by `llmser make-demo-corpus` (seed {config.seed}, "
            f"{config.n} files, {config.n_speakers} speakers). Speech is espeak-ng with class- and arousal-"
            "dependent prosody; about half of the sentences carry emotional wording. Labels follow the "
            "MSP-Podcast release layout. Not real data: use it to check pipelines, not to report results.\n\n"
            "| split | " + " | ".join((*CLASS_CODES, "X", "O")) + " |\n|---" * 11 + "|\n" + rows + "\n"
            + (f"\n{config.blind} more files form the blind split {BLIND_SPLIT}: their label cells are empty and "
               "labels_detailed.csv has no rows for them (predict them and write submission files).\n"
               if config.blind else ""))
