"""``llmser baseline classical``: the classical reference rows of every results table.

    llmser baseline classical --corpus demo_corpus --split test --out runs/demo/classical
    llmser baseline classical --corpus /data/MSP-Podcast --split test --out runs/msp/classical \\
        --systems tfidf --missing-transcripts empty

Writes OUT/<system>/{predictions.csv, report.json, report.md, dev/, selection.json} for each of
egemaps, tfidf and late_fusion, and OUT/summary.json. Only argparse is imported at start-up.
"""

from __future__ import annotations

import argparse
import sys

from llmser.baselines import BaselineError
from llmser.baselines.config import SYSTEM_NAMES, ClassicalConfig
from llmser.cli.args import positive_float


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated numbers, e.g. 0.01,0.1,1") from None


def add_baseline(commands: argparse._SubParsersAction) -> None:
    """The ``baseline`` command and its subcommands (one so far: ``classical``)."""
    parser = commands.add_parser("baseline", help="classical reference systems (eGeMAPS / TF-IDF + linear models)")
    parser.set_defaults(handler=run)
    sub = parser.add_subparsers(dest="baseline", metavar="BASELINE", required=True)
    defaults = ClassicalConfig()
    p = sub.add_parser("classical", help="eGeMAPS and TF-IDF with linear models, and their late fusion",
                       description="Fit eGeMAPS (openSMILE) and transcript TF-IDF features with a class-balanced "
                                   "logistic regression (task 1) and ridge regression per attribute (task 2) on "
                                   "train, choose regularisation on dev, predict --split; late_fusion averages "
                                   "the two. Writes predictions and reports per system.")
    p.add_argument("--corpus", required=True, help="corpus folder in the MSP-Podcast layout")
    p.add_argument("--split", default="test", help="split to predict and report (default: test)")
    p.add_argument("--out", required=True, help="output folder; one subfolder per system")
    p.add_argument("--systems", default=",".join(SYSTEM_NAMES),
                   help=f"comma-separated, from {', '.join(SYSTEM_NAMES)} (default: all)")
    p.add_argument("--train-split", default=defaults.train_split, help="split the models are fitted on")
    p.add_argument("--dev-split", default=defaults.dev_split, help="split that chooses the regularisation")
    p.add_argument("--c-grid", type=_floats, default=defaults.c_grid,
                   help="logistic-regression C values, strongest regularisation first")
    p.add_argument("--alpha-grid", type=_floats, default=defaults.alpha_grid,
                   help="ridge alpha values, strongest regularisation first")
    p.add_argument("--missing-transcripts", choices=("error", "empty", "asr"), default=defaults.missing_transcripts,
                   help="a file without a transcript: stop naming it (default), score it as empty text, or asr: "
                        "Whisper makes it (cached under --cache-dir/transcripts; the corpus is not changed)")
    p.add_argument("--asr", default=defaults.asr_model, help="Whisper for --missing-transcripts asr (default: smol)")
    p.add_argument("--cache-dir", default=defaults.cache_dir, help="eGeMAPS feature cache (default: %(default)s)")
    p.add_argument("--max-seconds", type=positive_float, default=None, help="crop audio to this length before eGeMAPS")
    p.add_argument("--allow-test-fit", action="store_true",
                   help="let --train-split/--dev-split be test (a deliberate refit; logged and recorded)")


def config_from_args(args: argparse.Namespace) -> ClassicalConfig:
    return ClassicalConfig(systems=tuple(s.strip() for s in args.systems.split(",") if s.strip()),
                           train_split=args.train_split, dev_split=args.dev_split, c_grid=tuple(args.c_grid),
                           alpha_grid=tuple(args.alpha_grid), missing_transcripts=args.missing_transcripts,
                           asr_model=args.asr, cache_dir=args.cache_dir, max_seconds=args.max_seconds,
                           allow_test_fit=args.allow_test_fit)


def run(args: argparse.Namespace) -> int:
    """Run the chosen baseline; a BaselineError is printed as one message with exit status 2."""
    try:
        from llmser.baselines.classical import run_classical
        from llmser.evaluation.report import format_summary_table

        summary = run_classical(args.corpus, args.split, args.out, config_from_args(args))
    except BaselineError as exc:
        print(f"llmser baseline {args.baseline}: error: {exc}", file=sys.stderr)
        return 2
    # Dev chose the regularisation; the predicted split's scores are in each system's report.json.
    print(f"select split {summary['splits']['dev']} (--dev-split):")
    print(format_summary_table([entry["dev"] for entry in summary["systems"].values()]))
    print(f"wrote {', '.join(summary['systems'])} ({summary['splits']['target']} predicted) under {args.out} "
          f"in {summary['seconds']:.1f} s")
    return 0
