"""The ``llmser`` command line: one entry point, one subcommand per job.

Examples::

    llmser make-demo-corpus demo_corpus --n 400 --seed 0
    llmser predict-prior --corpus demo_corpus --split test --out runs/prior/predictions.csv
    llmser evaluate --predictions runs/prior/predictions.csv --corpus demo_corpus --split test --out runs/prior
    llmser validate-submission runs/prior/task1_predictions.csv --corpus demo_corpus --split test

Each subcommand's work lives in its own module and is imported only when that subcommand runs, so
``llmser --help`` answers instantly. Errors llmser anticipates (bad corpus rows, unreadable audio,
bad recipes) are printed as one clear message and exit with status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from llmser import __version__

EXIT_USER_ERROR = 2


def _add_make_demo_corpus(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-demo-corpus", help="write a synthetic corpus in the MSP-Podcast release layout",
                       description="Synthesise a small corpus (espeak-ng speech) in the exact MSP-Podcast layout.")
    p.add_argument("out", help="output folder (Labels/, Audios/, Transcripts/ are created inside)")
    p.add_argument("--n", type=int, default=400, help="number of utterances (default: 400)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same corpus")
    p.add_argument("--speakers", type=int, default=20, help="number of speakers (default: 20)")
    p.add_argument("--workers", type=int, default=4, help="parallel espeak-ng processes (default: 4)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo corpus in OUT")
    p.set_defaults(handler=_run_make_demo_corpus)


def _run_make_demo_corpus(args: argparse.Namespace) -> int:
    from llmser.data.demo_corpus import DemoCorpusConfig, make_demo_corpus

    config = DemoCorpusConfig(n=args.n, seed=args.seed, n_speakers=args.speakers, workers=args.workers)
    summary = make_demo_corpus(args.out, config, overwrite=args.overwrite)
    print(f"wrote {summary['n_files']} files to {args.out} in {summary['seconds']:.1f} s")
    for split, counts in summary["class_counts"].items():
        print(f"  {split:<12} " + " ".join(f"{code}={count}" for code, count in counts.items()))
    return 0


def _add_predict_prior(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict-prior", help="majority-class / training-prior baseline predictions",
                       description="Predict every file of a split from the training split's label prior: the "
                                   "majority class and the mean attributes. The floor every model must beat.")
    p.add_argument("--corpus", required=True, help="corpus folder in the MSP-Podcast layout")
    p.add_argument("--split", default="test", help="split to predict (default: test)")
    p.add_argument("--train-split", default="train", help="split whose prior is used (default: train)")
    p.add_argument("--out", required=True, help="predictions CSV to write")
    p.set_defaults(handler=_run_predict_prior)


def _run_predict_prior(args: argparse.Namespace) -> int:
    from llmser.inference.prior import predict_prior

    predictions = predict_prior(args.corpus, split=args.split, train_split=args.train_split)
    predictions.write_csv(args.out)
    print(f"wrote {len(predictions)} prior predictions to {args.out}")
    return 0


def _add_predict_prompts(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict-prompts", help="instruction-prompt predictions from transcripts (zero-shot or tuned)",
                       description="Score every label under each prompt variant with an instruct LLM and take the "
                                   "variants' vote (zero-shot with --llm, or a text-branch adapter with --adapter); "
                                   "attributes from the rating prompts. Writes predictions and the report.")
    p.add_argument("--corpus", required=True, help="corpus folder in the MSP-Podcast layout (with transcripts)")
    p.add_argument("--split", default="test", help="split to predict (default: test)")
    p.add_argument("--llm", default="smol", help="preset (smol, llama3-8b, tiny), Hub id or folder (default: smol)")
    p.add_argument("--adapter", default=None, help="a text-branch folder saved by training (mode: sft)")
    p.add_argument("--prompts", default=None, help="comma-separated prompt variants (default: the adapter's or five)")
    p.add_argument("--no-ratings", action="store_true", help="skip the attribute rating prompts")
    p.add_argument("--calibrate", action="store_true",
                   help="contextual calibration: divide each variant's probabilities by its answer to content-free "
                        "transcripts (removes a variant's constant label bias)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None, help="only the first N files (quick looks)")
    p.add_argument("--out", required=True, help="predictions CSV to write; the report goes beside it")
    p.set_defaults(handler=_run_predict_prompts)


def _run_predict_prompts(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmser.evaluation.report import evaluate
    from llmser.inference.prompting import predict_corpus_split

    prompts = args.prompts.split(",") if args.prompts else None
    predictions, utterances = predict_corpus_split(args.corpus, args.split, llm=args.llm, adapter=args.adapter,
                                                   prompts=prompts, ratings=not args.no_ratings,
                                                   batch_size=args.batch_size, limit=args.limit,
                                                   calibrate=args.calibrate)
    out = Path(args.out)
    predictions.write_csv(out)
    report = evaluate(predictions, utterances, out.parent, title=f"prompt voting ({args.adapter or args.llm})")
    task1 = report.get("task1") or {}
    print(f"wrote {len(predictions)} predictions to {out}; macro-F1 {task1.get('macro_f1', float('nan')):.4f}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score predictions against a corpus split and write the report",
                       description="Macro-F1, per-class scores, confusion matrix, CCCs, extreme-value bins and "
                                   "the gender breakdown; writes report.json, report.md and PNG plots.")
    p.add_argument("--predictions", required=True, help="predictions CSV written by llmser (predict / predict-prior)")
    p.add_argument("--corpus", required=True, help="corpus folder in the MSP-Podcast layout")
    p.add_argument("--split", default="test", help="split to score (default: test)")
    p.add_argument("--out", default=None, help="report folder (default: beside the predictions file)")
    p.add_argument("--submission", action="store_true",
                   help="also write the challenge submission files (task1/task2 CSVs) into the report folder")
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmser.evaluation.report import evaluate_corpus

    out_dir = Path(args.out) if args.out else Path(args.predictions).resolve().parent
    if args.submission:  # before scoring: a blind split (Test3) is refused scoring but can be submitted
        from llmser.evaluation.predictions import Predictions
        from llmser.evaluation.submission import write_submissions

        written = write_submissions(out_dir, Predictions.read_csv(args.predictions))
        for task, path in written.items():
            print(f"  {task} submission: {path}")
    report = evaluate_corpus(args.predictions, args.corpus, args.split, out_dir)
    _print_headline(report)
    print(f"report: {out_dir / 'report.md'}")
    return 0


def _print_headline(report: dict) -> None:
    task1 = report.get("task1") or {}
    task2 = report.get("task2") or {}
    if task1:
        print(f"task 1  macro-F1 {task1['macro_f1']:.4f}  accuracy {task1['accuracy']:.4f}  (n={task1['n']})")
    if task2:
        cccs = "  ".join(f"{name} {value:.4f}" for name, value in task2["ccc"].items())
        print(f"task 2  CCC {cccs}  (n={task2['n']})")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="one table of several systems' test scores (from their report.json)",
                       description="Collect macro-F1 and the CCCs of several reports into one table, printed and "
                                   "written as JSON (one entry per system).")
    p.add_argument("reports", nargs="+", metavar="NAME=REPORT_JSON",
                   help="a system name and its report.json (written by llmser evaluate / train)")
    p.add_argument("--out", default=None, help="JSON file to write the table to")
    p.set_defaults(handler=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from llmser.evaluation.report import format_summary_table, summary_row
    from llmser.utils.io import atomic_write_json

    rows = []
    for item in args.reports:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise FileNotFoundError(f"{item!r}: give each report as NAME=path/to/report.json")
        report_path = Path(path)
        if not report_path.is_file():
            print(f"llmser compare: {report_path} is missing; {name} left out of the table", file=sys.stderr)
            continue
        rows.append(summary_row(name, json.loads(report_path.read_text(encoding="utf-8"))))
    if not rows:
        raise FileNotFoundError("none of the reports exist; nothing to compare")
    print(format_summary_table(rows))
    if args.out:
        atomic_write_json(args.out, {"systems": rows})
        print(f"wrote {args.out}")
    return 0


def _add_validate_submission(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate-submission", help="check a challenge submission CSV before uploading it")
    p.add_argument("path", help="task1 (FileName,EmoClass), task1 probabilities (FileName,Angry,...,Neutral) or "
                                "task2 (FileName,EmoAct,EmoVal,EmoDom) CSV")
    p.add_argument("--corpus", default=None, help="corpus folder: check every file of --split is present once")
    p.add_argument("--split", default="test", help="split the submission is for (default: test)")
    p.set_defaults(handler=_run_validate_submission)


def _run_validate_submission(args: argparse.Namespace) -> int:
    from llmser.evaluation import submission

    expected = None
    if args.corpus:
        from llmser.data.msp_podcast import MSPPodcast

        corpus = MSPPodcast.from_folder(args.corpus)
        expected = [u.file_name for u in corpus.utterances(corpus.resolve_split(args.split), task="all")]
    kind, rows = submission.validate_file(args.path, expected)
    print(f"{args.path}: valid {kind} submission ({len(rows)} files)")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    from llmser.train import add_arguments

    p = sub.add_parser("train", help="train a branch from a YAML recipe (one process; see accelerate launch)",
                       description="Train a branch from a recipe under adapters/. For several processes or "
                                   "GPUs: accelerate launch -m llmser.train RECIPE [key=value ...]")
    add_arguments(p)
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from llmser.train import run

    result = run(args.recipe, args.overrides, args.resume)
    test = result.get("test") or {}
    if test:
        print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in test["metrics"].items()))
        print(f"report: {test['report']}")
    return 0


def _add_plan(sub: argparse._SubParsersAction) -> None:
    from llmser.planning import build_parser as build_plan_parser
    from llmser.planning import plan_command

    p = sub.add_parser("plan", help="parameters and GPU memory per process for full-size models (meta device)",
                       description="Build a recipe's models at full size on the meta device (nothing downloaded) "
                                   "and estimate GPU memory for full fine-tuning, LoRA and QLoRA.")
    build_plan_parser(p)
    p.set_defaults(handler=plan_command)


#: name -> parser builder; the order is the order of ``llmser --help``.
def _add_push(sub: argparse._SubParsersAction) -> None:
    from llmser.hub.cli import add_push_parser

    add_push_parser(sub)


def _add_pull(sub: argparse._SubParsersAction) -> None:
    from llmser.hub.cli import add_pull_parser

    add_pull_parser(sub)


def _add_collect_outputs(sub: argparse._SubParsersAction) -> None:
    from llmser.models.fusion.cli import add_collect_outputs_parser

    add_collect_outputs_parser(sub)


def _add_ensemble(sub: argparse._SubParsersAction) -> None:
    from llmser.ensemble.cli import add_ensemble_parser

    add_ensemble_parser(sub)


def _add_build_system(sub: argparse._SubParsersAction) -> None:
    from llmser.inference.cli import add_build_system_parser

    add_build_system_parser(sub)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    from llmser.inference.cli import add_predict_parser

    add_predict_parser(sub)


def _add_transcribe(sub: argparse._SubParsersAction) -> None:
    from llmser.inference.cli import add_transcribe_parser

    add_transcribe_parser(sub)


COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "make-demo-corpus": _add_make_demo_corpus,
    "predict-prior": _add_predict_prior,
    "predict-prompts": _add_predict_prompts,
    "evaluate": _add_evaluate,
    "compare": _add_compare,
    "validate-submission": _add_validate_submission,
    "train": _add_train,
    "plan": _add_plan,
    "collect-outputs": _add_collect_outputs,
    "build-system": _add_build_system,
    "predict": _add_predict,
    "transcribe": _add_transcribe,
    "ensemble": _add_ensemble,
    "push": _add_push,
    "pull": _add_pull,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmser", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"llmser {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS.values():
        add(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'bad input', printed as a message rather than a traceback."""
    from llmser.config import ConfigError

    errors: list[type[BaseException]] = [ConfigError, FileNotFoundError]
    for module, name in (("llmser.data.msp_podcast", "CorpusError"), ("llmser.data.audio", "AudioError"),
                         ("llmser.evaluation.submission", "SubmissionError"),
                         ("llmser.evaluation.predictions", "PredictionsError"),
                         ("llmser.data.demo_corpus", "DemoCorpusError"),
                         ("llmser.training.checkpoint", "CheckpointError"), ("llmser.hub.io", "HubError"),
                         ("llmser.models.llm.prompts", "PromptError"),
                         ("llmser.models.llm.adapter", "AdapterMismatchError"),
                         ("llmser.models.text_llm.data", "MissingTranscriptError")):
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, name):
            errors.append(getattr(mod, name))
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - narrowed just below
        if isinstance(exc, _user_errors()):
            print(f"llmser {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise


if __name__ == "__main__":
    raise SystemExit(main())
