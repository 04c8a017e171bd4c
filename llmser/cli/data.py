"""``llmser make-demo-corpus``: the synthetic corpus in the MSP-Podcast layout."""

from __future__ import annotations

import argparse

from llmser.cli.args import non_negative_int, positive_int, seed


def add_make_demo_corpus(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-demo-corpus", help="write a synthetic corpus in the MSP-Podcast release layout",
                       description="Synthesise a small corpus (espeak-ng speech) in the exact MSP-Podcast layout.")
    p.add_argument("out", help="output folder (Labels/, Audios/, Transcripts/ are created inside)")
    p.add_argument("--n", type=positive_int, default=400, help="number of utterances (default: 400)")
    p.add_argument("--seed", type=seed, default=0, help="random seed; the same seed gives the same corpus")
    p.add_argument("--speakers", type=positive_int, default=20, help="number of speakers (default: 20)")
    p.add_argument("--workers", type=positive_int, default=4, help="parallel espeak-ng processes (default: 4)")
    p.add_argument("--blind", type=non_negative_int, default=0, metavar="N",
                   help="also write N files of a blind split Test3 (empty label cells, no annotator rows), "
                        "to rehearse predicting the challenge's unlabelled test set (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo corpus in OUT")
    p.set_defaults(handler=run_make_demo_corpus)


def run_make_demo_corpus(args: argparse.Namespace) -> int:
    from llmser.data.demo_corpus import DemoCorpusConfig, make_demo_corpus

    config = DemoCorpusConfig(n=args.n, seed=args.seed, n_speakers=args.speakers, workers=args.workers,
                              blind=args.blind)
    summary = make_demo_corpus(args.out, config, overwrite=args.overwrite)
    print(f"wrote {summary['n_files']} files to {args.out} in {summary['seconds']:.1f} s")
    for split, counts in summary["class_counts"].items():
        print(f"  {split:<12} " + " ".join(f"{code}={count}" for code, count in counts.items()))
    if summary.get("blind"):
        print(f"  {summary['blind']['split']:<12} {summary['blind']['n_files']} files, no labels (blind)")
    return 0
