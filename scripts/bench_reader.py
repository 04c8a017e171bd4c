"""Benchmark: time and peak memory of reading the labels of a release-sized MSP-Podcast corpus.

    python scripts/bench_reader.py --quick                    # a tenth of a release, < 1 minute on 2 cores
    python scripts/bench_reader.py                            # release size: 116k consensus, 650k detailed rows
    python scripts/bench_reader.py --corpus /data/MSP-Podcast # a real release's Labels/ (audio not opened)

Writes ``Labels/labels_consensus.csv`` (FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set;
Train/Development/Test1/Test2 labelled, Test3 blind) and ``Labels/labels_detailed.csv`` in the release's
per-annotator layout (FileName,Workers,EmoClass_Major,EmoClass_Second,EmoAct,EmoVal,EmoDom; class words)
into a temp folder, with no Audios/ folder. A fresh child process then reads them as training does:
``MSPPodcast.from_folder(root, ReaderConfig(labels_only=True))``, every split's task-1 utterances and the
soft labels of the training split. The same read at half the size gives ``time_ratio_2x`` (seconds at
full size / at half size): about 2 when reading is linear, about 4 when it is quadratic, as it was.
Ends with the machine-readable lines ``reader_seconds:`` (full size) and ``reader_peak_gb:`` (the child's
peak resident memory, from ``resource.getrusage``). Targets: <= 15 s and <= 2 GB at full size on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: A release (MSP-Podcast 1.12): ~116k files in labels_consensus.csv, ~650k rows in labels_detailed.csv.
RELEASE_FILES = 116_000
RELEASE_ANNOTATIONS = 650_000
CODES = "ASHUFDCNXO"
WORDS = {"A": "Angry", "S": "Sad", "H": "Happy", "U": "Surprise", "F": "Fear", "D": "Disgust", "C": "Contempt",
         "N": "Neutral", "O": "Other-Concerned"}
SECONDARY = ["Frustrated", "Annoyed", "Amused", "Concerned", "Disappointed", "Excited", "Confused", "Sad",
             "Happy", "Angry", ""]
SPLITS = ["Train"] * 60 + ["Development"] * 17 + ["Test1"] * 9 + ["Test2"] * 7 + ["Test3"] * 7


def write_labels(root: Path, n_files: int, n_annotations: int, seed: int = 0) -> None:
    """Write both label files row by row (the generator itself stays small in memory)."""
    rng = random.Random(seed)
    labels = root / "Labels"
    labels.mkdir(parents=True, exist_ok=True)
    splits = [rng.choice(SPLITS) for _ in range(n_files)]
    labelled = sum(split != "Test3" for split in splits)
    per_file, extra = divmod(n_annotations, labelled)  # every detailed row belongs to a labelled file
    with open(labels / "labels_consensus.csv", "w", newline="") as cons, \
         open(labels / "labels_detailed.csv", "w", newline="") as det:
        consensus, detailed = csv.writer(cons), csv.writer(det)
        consensus.writerow(["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"])
        detailed.writerow(["FileName", "Workers", "EmoClass_Major", "EmoClass_Second", "EmoAct", "EmoVal", "EmoDom"])
        n_labelled = 0
        for i, split in enumerate(splits):
            name = f"MSP-PODCAST_{i // 100:04d}_{i % 100:04d}.wav"
            if split == "Test3":  # the blind test set: no labels at all
                consensus.writerow([name, "", "", "", "", "Unknown", "Unknown", split])
                continue
            code = rng.choice(CODES)
            ratings = [f"{rng.uniform(1, 7):.1f}" for _ in range(3)]
            consensus.writerow([name, code, *ratings, i // 40, rng.choice(["Female", "Male"]), split])
            n_labelled += 1
            for _ in range(per_file + (n_labelled <= extra)):
                vote = rng.choice(CODES[:-2] + "NO")
                second = ",".join(rng.sample(SECONDARY, rng.randint(0, 2)))
                detailed.writerow([name, f"WORKER{rng.randrange(3000):05d}", WORDS[vote], second,
                                   *(f"{rng.randint(1, 7)}.0" for _ in range(3))])


def read_labels(root: Path) -> dict:
    """Read as training does and report seconds (imports excluded) and this process's peak RSS."""
    import resource

    from llmser.data.msp_podcast import MSPPodcast, ReaderConfig

    start = time.perf_counter()
    corpus = MSPPodcast.from_folder(root, ReaderConfig(labels_only=True, on_error="skip"))
    per_split = {split: len(corpus.utterances(split, task="class")) for split in corpus.splits()}
    soft = sum(u.soft_label is not None for u in corpus.utterances("train", task="class"))
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"seconds": seconds, "peak_gb": peak_kb / 2**20, "files": len(corpus), "task1": per_split,
            "train_soft_labels": soft, "annotations": sum(len(u.annotations) for u in corpus.items),
            "problems": len(corpus.problems)}


def read_in_child(root: Path) -> dict:
    """A fresh process per read, so the peak memory is the reader's and not the generator's."""
    done = subprocess.run([sys.executable, __file__, "--read", str(root)], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        raise RuntimeError(f"reading {root} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of a release's rows")
    parser.add_argument("--corpus", default=None, help="read this corpus's Labels/ instead of generated ones")
    parser.add_argument("--read", default=None, help=argparse.SUPPRESS)  # the child process's entry point
    args = parser.parse_args()
    if args.read:
        print(json.dumps(read_labels(Path(args.read))))
        return
    scale = 0.1 if args.quick else 1.0
    n_files, n_annotations = int(RELEASE_FILES * scale), int(RELEASE_ANNOTATIONS * scale)
    with tempfile.TemporaryDirectory(prefix="bench_reader_") as tmp:
        if args.corpus:
            full, half = read_in_child(Path(args.corpus)), None
        else:
            for name, factor in (("half", 2), ("full", 1)):
                start = time.perf_counter()
                write_labels(Path(tmp) / name, n_files // factor, n_annotations // factor)
                print(f"wrote {name} size ({n_files // factor} files, {n_annotations // factor} annotations) "
                      f"in {time.perf_counter() - start:.1f} s")
            half, full = read_in_child(Path(tmp) / "half"), read_in_child(Path(tmp) / "full")
            print(f"half size: {half['seconds']:.2f} s, peak {half['peak_gb']:.3f} GB")
    print(f"full size: {full['files']} files, {full['annotations']} annotations kept, "
          f"{full['train_soft_labels']} train soft labels, task-1 files per split {full['task1']}, "
          f"{full['problems']} problem(s)")
    print(f"reader_seconds: {full['seconds']:.2f}")
    print(f"reader_peak_gb: {full['peak_gb']:.3f}")
    if half is not None:  # the ratio line last: ~2 when the reader is linear in the release's size
        print(f"time_ratio_2x: {full['seconds'] / half['seconds']:.2f}")


if __name__ == "__main__":
    main()
