"""``llmser evaluate``, ``compare`` and ``validate-submission``: scores, tables and challenge files."""

from __future__ import annotations

import argparse
import sys


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score predictions against a corpus split and write the report",
                       description="Macro-F1, per-class scores, confusion matrix, CCCs, extreme-value bins and "
                                   "the gender breakdown; writes report.json, report.md and PNG plots.")
    p.add_argument("--predictions", required=True, help="predictions CSV written by llmser (predict / predict-prior)")
    p.add_argument("--corpus", required=True, help="corpus folder in the MSP-Podcast layout")
    p.add_argument("--split", default="test", help="split to score (default: test)")
    p.add_argument("--out", default=None, help="report folder (default: beside the predictions file)")
    p.add_argument("--submission", action="store_true",
                   help="also write the challenge submission files (task1/task2 CSVs) into the report folder")
    p.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmser.evaluation.report import evaluate_corpus

    out_dir = Path(args.out) if args.out else Path(args.predictions).resolve().parent
    if args.submission:  # before scoring: a blind split (Test3) is refused scoring but can be submitted
        from llmser.evaluation.predictions import Predictions
        from llmser.evaluation.submission import write_submissions

        written = write_submissions(out_dir, Predictions.read_csv(args.predictions))
        for task, path in written.items():
            print(f"  {task} submission: {path}")
    report = evaluate_corpus(args.predictions, args.corpus, args.split, out_dir, blind_ok=args.submission)
    if report.get("blind"):
        print(f"split {report['split']} has no labels (blind): not scored; upload the submission files above")
        return 0
    _print_headline(report)
    print(f"report: {out_dir / 'report.md'}")
    return 0


def _print_headline(report: dict) -> None:
    task1 = report.get("task1") or {}
    task2 = report.get("task2") or {}
    if task1:
        print(f"task 1  macro-F1 {task1['macro_f1']:.4f} (all 8 classes: {task1.get('macro_f1_8', float('nan')):.4f})  "
              f"accuracy {task1['accuracy']:.4f}  (n={task1['n']})")
    if task2:
        cccs = "  ".join(f"{name} {value:.4f}" for name, value in task2["ccc"].items())
        print(f"task 2  CCC {cccs}  (n={task2['n']})")


def add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="one table (and a PNG) of several systems' scores, with seeds",
                       description="Collect macro-F1 and the CCCs of several reports into one table, printed, "
                                   "written as JSON and plotted. Give a system several reports (NAME=a.json,b.json "
                                   "or NAME=... repeated) to get mean ± standard deviation over seeds.")
    p.add_argument("reports", nargs="+", metavar="NAME=REPORT_JSON[,REPORT_JSON...]",
                   help="a system name and its report.json (written by llmser evaluate / train), or several; "
                        "a run's metrics.json gives its best dev scores")
    p.add_argument("--out", default=None, help="JSON file to write the table to (the PNG goes beside it)")
    p.add_argument("--plot", default=None, help="PNG to draw the table into (default: beside --out)")
    p.add_argument("--title", default="", help="title of the plot")
    p.set_defaults(handler=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from llmser.evaluation.summary import aggregate_reports, format_table, plot_summary
    from llmser.utils.io import atomic_write_json

    reports: dict[str, list[dict]] = {}
    for item in args.reports:
        name, sep, paths = item.partition("=")
        if not sep or not name or not paths:
            raise FileNotFoundError(f"{item!r}: give each report as NAME=path/to/report.json[,more.json]")
        for path in (Path(p) for p in paths.split(",") if p):
            if not path.is_file():
                print(f"llmser compare: {path} is missing; left out of {name}", file=sys.stderr)
                continue
            reports.setdefault(name, []).append(json.loads(path.read_text(encoding="utf-8")))
    if not reports:
        raise FileNotFoundError("none of the reports exist; nothing to compare")
    rows = [aggregate_reports(name, found) for name, found in reports.items()]
    print(format_table(rows))
    plot = Path(args.plot) if args.plot else Path(args.out).with_suffix(".png") if args.out else None
    if args.out:
        atomic_write_json(args.out, {"systems": rows})
        print(f"wrote {args.out}")
    if plot is not None:
        print(f"wrote {plot_summary(rows, plot, title=args.title)}")
    return 0


def add_validate_submission(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate-submission", help="check a challenge submission CSV before uploading it")
    p.add_argument("path", help="task1 (FileName,EmoClass), task1 probabilities (FileName,Angry,...,Neutral) or "
                                "task2 (FileName,EmoAct,EmoVal,EmoDom) CSV")
    p.add_argument("--corpus", default=None, help="corpus folder: check every file of --split is present once")
    p.add_argument("--split", default="test", help="split the submission is for (default: test)")
    p.set_defaults(handler=run_validate_submission)


def run_validate_submission(args: argparse.Namespace) -> int:
    from llmser.evaluation import submission

    expected = None
    if args.corpus:
        from llmser.data.msp_podcast import MSPPodcast

        corpus = MSPPodcast.from_folder(args.corpus)
        expected = [u.file_name for u in corpus.utterances(corpus.resolve_split(args.split), task="all")]
    kind, rows = submission.validate_file(args.path, expected)
    print(f"{args.path}: valid {kind} submission ({len(rows)} files)")
    return 0
