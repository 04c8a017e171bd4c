"""Builds small corpora in the MSP-Podcast layout on disk for reader tests (tones, no espeak-ng)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

HEADER = ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"]


def tone(seconds=1.0, rate=16000, freq=220.0, channels=1, amplitude=0.3):
    t = np.arange(int(rate * seconds)) / rate
    wave = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def write_corpus(root: Path, rows: list[list], detailed: list[list] | None = None, transcripts: dict | None = None,
                 audio: bool = True, header: list[str] | None = None) -> Path:
    (root / "Labels").mkdir(parents=True, exist_ok=True)
    (root / "Audios").mkdir(exist_ok=True)
    with open(root / "Labels" / "labels_consensus.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header or HEADER)
        writer.writerows(rows)
    if detailed is not None:
        with open(root / "Labels" / "labels_detailed.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["FileName", "WorkerID", "EmoClass", "EmoAct", "EmoVal", "EmoDom"])
            writer.writerows(detailed)
    if audio:
        for row in rows:
            if row[0]:
                sf.write(root / "Audios" / row[0], tone(freq=200 + 10 * len(row[0])), 16000)
    if transcripts:
        (root / "Transcripts").mkdir(exist_ok=True)
        for stem, text in transcripts.items():
            path = root / "Transcripts" / f"{stem}.txt"
            path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return root


def good_rows() -> list[list]:
    return [
        ["MSP-PODCAST_0001_0001.wav", "A", 6.0, 2.0, 5.5, 1, "Female", "Train"],
        ["MSP-PODCAST_0001_0002.wav", "N", 4.0, 4.0, 4.0, 1, "Female", "Train"],
        ["MSP-PODCAST_0002_0001.wav", "X", 3.0, 3.5, 3.0, 2, "Male", "Train"],
        ["MSP-PODCAST_0003_0001.wav", "H", 5.0, 6.0, 5.0, 3, "Male", "Development"],
        ["MSP-PODCAST_0004_0001.wav", "S", 2.0, 2.0, 2.0, 4, "Female", "Test1"],
        ["MSP-PODCAST_0004_0002.wav", "O", 4.5, 3.0, 4.0, 4, "Female", "Test1"],
    ]


def transcribed_corpus(root: Path) -> Path:
    """16 tone clips of 4 speakers with a transcript each: 10 train, 3 dev, 3 test (LLM-branch engine tests)."""
    codes = ["A", "S", "H", "N"]
    rows, texts = [], {}
    for i in range(16):
        split = "Train" if i < 10 else ("Development" if i < 13 else "Test1")
        name = f"MSP-PODCAST_{i // 4 + 1:04d}_{i:04d}.wav"
        rows.append([name, codes[i % 4], 4.0 + (i % 3), 3.0, 4.0, i // 4 + 1, "Female", split])
        texts[name[:-4]] = f"words of clip {i}"
    return write_corpus(root, rows, transcripts=texts)
