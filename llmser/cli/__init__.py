"""The ``llmser`` command line: one entry point, one command table, one module per command group.

Examples::

    llmser make-demo-corpus demo_corpus --n 400 --seed 0
    llmser train adapters/wavlm_tiny.yaml train.max_steps=50
    llmser predict-prior --corpus demo_corpus --split test --out runs/prior/predictions.csv
    llmser evaluate --predictions runs/prior/predictions.csv --corpus demo_corpus --split test --out runs/prior
    accelerate launch -m llmser train adapters/wavlm_tiny.yaml       # several processes / GPUs

``COMMANDS`` maps each command to the module and function that add its parser; a group module
(``cli/train.py``, ``cli/predict.py`` ...) imports its heavy dependencies only when its command runs,
so ``llmser --help`` answers instantly. Errors llmser anticipates (bad corpus rows, unreadable audio,
bad recipes) are printed as one clear message and exit with status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from llmser import __version__

EXIT_USER_ERROR = 2

#: command -> (module under llmser.cli, function adding its parser); the order is ``llmser --help``'s.
COMMANDS: dict[str, tuple[str, str]] = {
    "make-demo-corpus": ("data", "add_make_demo_corpus"),
    "transcribe": ("predict", "add_transcribe"),
    "train": ("train", "add_train"),
    "plan": ("plan", "add_plan"),
    "import-salmonn": ("salmonn", "add_import_salmonn"),
    "predict-prior": ("predict", "add_predict_prior"),
    "baseline": ("baseline", "add_baseline"),
    "predict-prompts": ("predict", "add_predict_prompts"),
    "collect-outputs": ("fusion", "add_collect_outputs"),
    "ensemble": ("ensemble", "add_ensemble"),
    "build-system": ("predict", "add_build_system"),
    "predict": ("predict", "add_predict"),
    "evaluate": ("evaluate", "add_evaluate"),
    "compare": ("evaluate", "add_compare"),
    "validate-submission": ("evaluate", "add_validate_submission"),
    "push": ("hub", "add_push"),
    "pull": ("hub", "add_pull"),
}

#: command -> (argument, "file" or "dir"): its output location, checked (writable, the right kind) before
#: the command runs, so a read-only disk or a folder given for a file fails in a second, not after the work.
OUTPUTS: dict[str, tuple[str, str]] = {
    "make-demo-corpus": ("out", "dir"), "transcribe": ("out", "dir"), "predict-prior": ("out", "file"),
    "baseline": ("out", "dir"), "predict-prompts": ("out", "file"), "collect-outputs": ("out", "dir"),
    "ensemble": ("out", "dir"), "build-system": ("out", "dir"), "predict": ("out", "file"),
    "evaluate": ("out", "dir"), "compare": ("out", "file"), "plan": ("json", "file"), "pull": ("local_dir", "dir"),
    "import-salmonn": ("out", "dir"),
}

#: module -> exception class names that mean "bad input": printed as a message, exit code 2.
USER_ERRORS: dict[str, tuple[str, ...]] = {
    "llmser.config": ("ConfigError", "BranchMismatchError"),
    "llmser.data.msp_podcast": ("CorpusError",),
    "llmser.data.splits": ("SplitRoleError",),
    "llmser.data.audio": ("AudioError",),
    "llmser.data.text": ("TranscriptError",),
    "llmser.utils.outputs": ("OutputError",),
    "llmser.utils.io": ("DiskFullError",),
    "llmser.data.demo_corpus": ("DemoCorpusError",),
    "llmser.baselines": ("BaselineError",),
    "llmser.evaluation.submission": ("SubmissionError",),
    "llmser.evaluation.predictions": ("PredictionsError",),
    "llmser.utils.weights": ("WeightsError",),
    "llmser.utils.hub": ("HubError",),
    "llmser.models.llm.identity": ("AdapterBaseMismatchError",),
    "llmser.models.llm.prompts": ("PromptError",),
    "llmser.models.llm.adapter": ("AdapterMismatchError",),
    "llmser.models.text_llm.data": ("MissingTranscriptError",),
    "llmser.models.audio_llm.salmonn": ("SalmonnImportError",),
    "llmser.inference.predictor": ("LongAudioError",),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmser", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"llmser {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module, function in COMMANDS.values():
        getattr(importlib.import_module(f"llmser.cli.{module}"), function)(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types of the modules loaded so far that mean 'bad input' (a module not loaded raised none)."""
    errors: list[type[BaseException]] = [FileNotFoundError]
    for module, names in USER_ERRORS.items():
        loaded = sys.modules.get(module)
        errors += [getattr(loaded, name) for name in names if loaded is not None and hasattr(loaded, name)]
    return tuple(errors)


def _check_output(args: argparse.Namespace) -> None:
    from llmser.utils.outputs import check_output_dir, check_output_file

    name, kind = OUTPUTS.get(args.command, (None, None))
    value = getattr(args, name, None) if name else None
    if value:
        flag = name if name == "out" and args.command == "make-demo-corpus" else f"--{name.replace('_', '-')}"
        (check_output_file if kind == "file" else check_output_dir)(value, what=flag)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from llmser.cli.train import recipe_help

    if (text := recipe_help(argv)) is not None:  # `llmser train RECIPE --help`: the recipe's fields too
        print(text)
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        _check_output(args)
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - narrowed just below
        if isinstance(exc, _user_errors()):
            print(f"llmser {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        from llmser.utils.io import DISK_FULL

        if isinstance(exc, OSError) and exc.errno in DISK_FULL:  # a write outside atomic_open
            print(f"llmser {args.command}: error: disk full ({exc}); free space there and rerun", file=sys.stderr)
            return EXIT_USER_ERROR
        raise


if __name__ == "__main__":
    raise SystemExit(main())
