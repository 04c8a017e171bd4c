"""``llmser build-system`` and ``llmser predict``: assemble trained runs, then predict audio files with them.

    llmser build-system --member wavlm=runs/demo/wavlm --member text_llm=runs/demo/text_head \
        --fusion runs/demo/fusion --out runs/demo/system
    llmser predict --model runs/demo/system --audio clips/ --out preds.csv [--transcripts DIR] [--submission]
    accelerate launch --num_processes 2 -m llmser predict ...     # data-parallel: one shard per process

``predict`` resumes: files already in ``--out`` are skipped, and the file is rewritten atomically after
every chunk, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llmser.cli.args import positive_int

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def add_build_system(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-system", help="assemble trained runs into one system folder (llmser.json + members)",
                       description="Copy the best models of training runs into one folder with an llmser.json "
                                   "manifest and a model card: what llmser predict and llmser push take.")
    p.add_argument("--member", action="append", required=True, metavar="NAME=RUN_DIR",
                   help="a member and its run folder (repeat); NAME must match the fusion adapter's streams")
    p.add_argument("--fusion", action="append", default=None, metavar="[NAME=]RUN_DIR",
                   help="run folder of a trained fusion adapter (repeat with --method auto: each is a candidate)")
    p.add_argument("--method", default=None, choices=("auto", "fusion", "average", "plurality"),
                   help="how members combine; auto (the default when --outputs is given): every candidate - each "
                        "member alone, plurality, average, weighted average, stacking, each fusion adapter - is "
                        "scored on out-of-sample dev predictions and the best is shipped (default without "
                        "--outputs: fusion when given, else average)")
    p.add_argument("--outputs", default=None, help="with auto: the members' cached outputs (llmser collect-outputs), "
                                                    "one folder per member name, holding the dev split")
    p.add_argument("--corpus", default=None, help="with auto: the corpus whose dev labels score the candidates")
    p.add_argument("--dev-split", default="dev", help="with auto: the split candidates are chosen on (default dev)")
    p.add_argument("--folds", type=positive_int, default=5,
                   help="with auto: speaker-disjoint dev folds for what learns on dev (default 5)")
    p.add_argument("--select-by", default="combined", choices=("combined", "macro_f1", "ccc_mean"),
                   help="with auto: the dev score that decides (combined = mean of macro-F1 and mean CCC)")
    p.add_argument("--frame-stride", type=positive_int, default=4, help="the --frame-stride the fusion inputs were collected with")
    p.add_argument("--report", default=None, help="report.json whose scores go into the model card")
    p.add_argument("--out", required=True, help="system folder to write")
    p.set_defaults(handler=run_build_system)


def run_build_system(args: argparse.Namespace) -> int:
    from llmser.config import ConfigError
    from llmser.inference.system import build_system

    members = {}
    for item in args.member:
        name, sep, run = item.partition("=")
        if not sep or not name or not run:
            raise FileNotFoundError(f"--member {item!r}: write it as NAME=RUN_DIR")
        members[name] = run
    fusions = _named_runs(args.fusion or [], "--fusion")
    method = args.method or ("auto" if args.outputs else "fusion" if fusions else "average")
    if method == "auto":
        from llmser.inference.system import select_and_build

        if not args.outputs or not args.corpus:
            raise ConfigError("--method auto needs --outputs DIR (the members' cached dev outputs, llmser "
                             "collect-outputs) and --corpus DIR (the dev labels)")
        out, _, chosen = select_and_build(args.out, members, outputs_dir=args.outputs, corpus=args.corpus,
                                          fusions=fusions, dev_split=args.dev_split, folds=args.folds,
                                          metric=args.select_by, fusion_frame_stride=args.frame_stride,
                                          report=args.report)
        print(f"system written to {out}: {chosen.name} ({chosen.method}), chosen on {args.dev_split} by "
              f"{args.select_by} = {chosen.scores[args.select_by]:.4f}; the candidates are in its README.md")
        return 0
    if len(fusions) > 1:
        raise ConfigError(f"--method {method} ships one fusion adapter; {len(fusions)} were given (use --method auto "
                         "to choose between them on dev)")
    out = build_system(args.out, members, fusion=next(iter(fusions.values()), None), method=method,
                       fusion_frame_stride=args.frame_stride, report=args.report)
    print(f"system written to {out} ({method} of {', '.join(members)})")
    return 0


def _named_runs(items: list[str], flag: str) -> dict[str, str]:
    """``NAME=RUN_DIR`` (or a bare ``RUN_DIR``, named after its folder) -> {name: run}."""
    from llmser.config import ConfigError

    runs: dict[str, str] = {}
    for item in items:
        name, sep, run = item.partition("=")
        name, run = (name, run) if sep else (Path(item).name, item)
        if not name or not run:
            raise FileNotFoundError(f"{flag} {item!r}: write it as NAME=RUN_DIR or RUN_DIR")
        if name in runs:
            raise ConfigError(f"{flag}: the name {name!r} is given twice; name them NAME=RUN_DIR")
        runs[name] = run
    return runs


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict emotion classes and attributes for audio files with a system",
                       description="Run a trained system (folder or Hub id) on audio files: per file the class, "
                                   "its probabilities, the attributes and each member's vote.")
    p.add_argument("--model", required=True, help="system folder (llmser build-system) or Hub id")
    p.add_argument("--revision", default=None, help="Hub revision")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio", nargs="+", help="audio files and/or folders (searched recursively)")
    source.add_argument("--corpus", help="predict a split of a corpus in the MSP-Podcast layout (with --split)")
    p.add_argument("--split", default="test", help="the corpus split to predict (default: test)")
    p.add_argument("--transcripts", default=None, help="folder of <stem>.txt transcripts (else Whisper makes them)")
    p.add_argument("--asr", default="smol", help="Whisper preset/id for missing transcripts (default: smol)")
    p.add_argument("--long-audio", choices=("windows", "crop", "error"), default="windows",
                   help="files longer than a member's window: predict each window and average by length (default), "
                        "read the first window only, or refuse naming the file and its length")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--out", required=True, help="predictions CSV (resumed if it exists)")
    p.add_argument("--submission", action="store_true", help="also write the challenge submission files beside it")
    p.set_defaults(handler=run_predict)


def audio_files(items: list[str]) -> list[Path]:
    """The audio files named or found (recursively, sorted) in the given folders."""
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist; pass audio files or folders to --audio")
    names = [f.name for f in files]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FileNotFoundError(f"file names repeat ({duplicates[:3]}); predictions are keyed by file name, so "
                                "predict each folder into its own CSV")
    return files


def read_transcripts(folder: str | None) -> dict[str, str]:
    """``<stem>.txt`` files by stem, cleaned (llmser.data.text); every unusable file is refused at once."""
    from llmser.data.text import TranscriptError, read_transcript

    if folder is None:
        return {}
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"--transcripts {folder} is not a folder; give the folder of <stem>.txt files")
    out, problems = {}, []
    for path in sorted(Path(folder).glob("*.txt")):
        try:
            out[path.stem] = read_transcript(path)
        except TranscriptError as exc:
            problems.append(str(exc))
    if problems:
        raise TranscriptError(f"{len(problems)} unusable transcript(s):\n  - " + "\n  - ".join(problems))
    return out


def run_predict(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    _check_model_names(asr=args.asr)
    state = PartialState()
    out = Path(args.out)
    files, transcripts = _inputs(args)
    with _guarded_output(args, out, files, state.is_main_process):
        return _predict_into(args, state, out, files, transcripts)


def _check_model_names(asr: str | None = None, llm: str | None = None) -> None:
    """A typo in a preset is refused with "did you mean" before anything asks the Hub about it."""
    from llmser.utils.hub import check_model_name

    if asr is not None:
        from llmser.models.whisper.loading import WHISPER_PRESETS

        check_model_name(asr, WHISPER_PRESETS, "--asr")
    if llm is not None:
        from llmser.models.llm.identity import LLM_PRESETS

        check_model_name(llm, LLM_PRESETS, "--llm")


def _guarded_output(args: argparse.Namespace, out: Path, files: list[Path], writer: bool):
    """``--out`` checked (writable, not a folder, space) and locked before any work; resuming only a
    file written by the same system for the same inputs and options (llmser.utils.outputs)."""
    from llmser.utils.hub import resolve_pretrained
    from llmser.utils.outputs import files_digest, folder_digest, resumable_output, run_fingerprint

    system = resolve_pretrained(args.model, args.revision)
    fingerprint = run_fingerprint(system=folder_digest(system), inputs=files_digest(files),
                                  options=[args.transcripts, args.asr, args.corpus, args.split, args.long_audio])
    return resumable_output(out, fingerprint, expected_bytes=400 * len(files) * (3 if args.submission else 1),
                            writer=writer)


def _predict_into(args, state, out, files, transcripts) -> int:
    from llmser.evaluation.predictions import Predictions, concat_predictions
    from llmser.inference.predictor import Predictor

    done = Predictions.read_csv(out) if out.is_file() else None
    finished = set(done.file_names) if done is not None else set()
    todo = [f for f in files if f.name not in finished]
    if finished and state.is_main_process:
        print(f"resuming {out}: {len(finished)} file(s) already predicted, {len(todo)} to go")
    shard = todo[state.process_index::state.num_processes]  # data-parallel: one shard per process
    predictor = Predictor.from_pretrained(args.model, args.revision, asr=args.asr, long_audio=args.long_audio)
    parts = [done] if done is not None else []
    skipped: dict[str, str] = {}
    chunk = max(args.batch_size * 8, 1)
    for start in range(0, len(shard), chunk):
        result = predictor(shard[start:start + chunk], transcripts, batch_size=args.batch_size,
                           progress=state.is_main_process)
        skipped.update(result.skipped)
        parts.append(result.predictions)
        if state.num_processes == 1:  # checkpoint the CSV so an interrupted run resumes here
            concat_predictions(parts).write_csv(out)
    merged = _gather(state, parts)
    if state.is_main_process:
        merged.write_csv(out)
        if args.submission:
            from llmser.evaluation.submission import write_submissions

            write_submissions(out.parent, merged)
        print(f"wrote {len(merged)} predictions to {out}; skipped {len(skipped)} unreadable file(s)")
        for name, why in sorted(skipped.items()):
            print(f"  skipped {name}: {why}")
    return 0


def _inputs(args: argparse.Namespace) -> tuple[list[Path], dict[str, str]]:
    """The files to predict and the transcripts known for them (a corpus brings its own)."""
    transcripts = read_transcripts(args.transcripts)
    if args.corpus is None:
        return audio_files(args.audio), transcripts
    from llmser.data.msp_podcast import MSPPodcast

    corpus = MSPPodcast.from_folder(args.corpus)
    utterances = corpus.utterances(corpus.resolve_split(args.split), task="all")
    transcripts.update({u.file_name: u.transcript for u in utterances if u.transcript})
    return [Path(u.audio_path) for u in utterances], transcripts


def _gather(state, parts):
    from llmser.evaluation.predictions import concat_predictions

    if state.num_processes == 1:
        return concat_predictions(parts)
    from accelerate.utils import gather_object

    gathered = gather_object([concat_predictions(parts)])
    seen, unique = set(), []
    for predictions in gathered:  # the resumed rows are in every process's list: keep one copy
        keep = [i for i, n in enumerate(predictions.file_names) if n not in seen]
        seen.update(predictions.file_names)
        unique.append(_rows(predictions, keep))
    return concat_predictions(unique)


def _rows(p, rows):
    from llmser.evaluation.predictions import Predictions

    return Predictions([p.file_names[i] for i in rows], [p.classes[i] for i in rows] if p.classes else None,
                       p.probs[rows] if p.probs is not None else None,
                       p.attributes[rows] if p.attributes is not None else None,
                       {k: [v[i] for i in rows] for k, v in p.extras.items()})


def add_transcribe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="write Whisper transcripts for audio that has none",
                       description="Transcribe audio files with Whisper into <stem>.txt files. With --corpus, every "
                                   "file of the corpus without a transcript gets CORPUS/Transcripts/<stem>.txt "
                                   "(existing transcripts are never overwritten).")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio", nargs="+", help="audio files and/or folders")
    source.add_argument("--corpus", help="a corpus in the MSP-Podcast layout: fill its missing transcripts")
    p.add_argument("--out", default=None, help="folder for the .txt files (default: CORPUS/Transcripts)")
    p.add_argument("--model", default="smol", help="Whisper preset (smol = tiny.en, large-v3), Hub id or folder")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.set_defaults(handler=run_transcribe)


def run_transcribe(args: argparse.Namespace) -> int:
    from llmser.models.whisper.asr import transcribe
    from llmser.models.whisper.loading import WHISPER_PRESETS
    from llmser.utils.hub import check_model_name
    from llmser.utils.io import atomic_write_text

    check_model_name(args.model, WHISPER_PRESETS, "--model")
    if args.corpus:
        files = sorted(p for p in (Path(args.corpus) / "Audios").rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        out = Path(args.out) if args.out else Path(args.corpus) / "Transcripts"
    else:
        if not args.out:
            raise FileNotFoundError("--audio needs --out FOLDER for the transcripts")
        files, out = audio_files(args.audio), Path(args.out)
    todo = [f for f in files if not (out / f"{f.stem}.txt").is_file()]
    print(f"{len(files) - len(todo)} file(s) already have a transcript; transcribing {len(todo)}")
    for path, text in zip(todo, transcribe(todo, model=args.model, batch_size=args.batch_size)):
        atomic_write_text(out / f"{path.stem}.txt", text + "\n")
    print(f"wrote {len(todo)} transcript(s) to {out}")
    return 0


def add_predict_prior(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict-prior", help="majority-class / training-prior baseline predictions",
                       description="Predict every file of a split from the training split's label prior: the "
                                   "majority class and the mean attributes. The floor every model must beat.")
    p.add_argument("--corpus", required=True, help="corpus folder in the MSP-Podcast layout")
    p.add_argument("--split", default="test", help="split to predict (default: test)")
    p.add_argument("--train-split", default="train", help="split whose prior is used (default: train)")
    p.add_argument("--allow-test-fit", action="store_true",
                   help="let --train-split be test (a deliberate refit; logged and recorded in OUT's .splits.json)")
    p.add_argument("--out", required=True, help="predictions CSV to write")
    p.set_defaults(handler=run_predict_prior)


def run_predict_prior(args: argparse.Namespace) -> int:
    from llmser.inference.prior import predict_prior
    from llmser.utils.io import atomic_write_json

    predictions, roles = predict_prior(args.corpus, split=args.split, train_split=args.train_split,
                                       allow_test_fit=args.allow_test_fit)
    predictions.write_csv(args.out)
    if roles.get("test_fit"):
        atomic_write_json(Path(args.out).with_suffix(".splits.json"), roles)
    print(f"wrote {len(predictions)} prior predictions to {args.out}")
    return 0


def add_predict_prompts(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict-prompts", help="instruction-prompt predictions from transcripts (zero-shot or tuned)",
                       description="Score every label under each prompt variant with an instruct LLM and take the "
                                   "variants' vote (zero-shot with --llm, or a text-branch adapter with --adapter); "
                                   "attributes from the rating prompts. Writes predictions and the report.")
    p.add_argument("--corpus", required=True, help="corpus folder in the MSP-Podcast layout (with transcripts)")
    p.add_argument("--split", default="test", help="split to predict (default: test)")
    p.add_argument("--llm", default="smol", help="preset (smol, llama3-8b, tiny), Hub id or folder (default: smol)")
    p.add_argument("--adapter", default=None, help="a text-branch folder saved by training (mode: sft), or its Hub id")
    p.add_argument("--revision", default=None, help="Hub revision of --adapter (or of --llm without an adapter)")
    p.add_argument("--prompts", default=None, help="comma-separated prompt variants (default: the adapter's or five)")
    p.add_argument("--no-ratings", action="store_true", help="skip the attribute rating prompts")
    p.add_argument("--missing-transcripts", choices=("error", "asr"), default="error",
                   help="files without a transcript: stop naming them (default), or asr: Whisper makes them "
                        "(cached under --cache-dir/transcripts; the corpus is not changed)")
    p.add_argument("--asr", default="smol", help="Whisper for --missing-transcripts asr (default: smol = tiny.en)")
    p.add_argument("--cache-dir", default=".cache/llmser/features", help="where ASR transcripts are cached")
    p.add_argument("--calibrate", action="store_true",
                   help="contextual calibration: divide each variant's probabilities by its answer to content-free "
                        "transcripts (removes a variant's constant label bias)")
    p.add_argument("--answer-scoring", choices=("first_token", "whole"), default=None,
                   help="score only each label's first token (no answer token runs) or its whole answer (default: "
                        "the --adapter's recipe setting, else first_token, chosen on dev)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N files (quick looks)")
    p.add_argument("--out", required=True, help="predictions CSV to write; the report goes beside it")
    p.set_defaults(handler=run_predict_prompts)


def run_predict_prompts(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmser.evaluation.report import report_or_submit
    from llmser.inference.prompting import predict_corpus_split

    _check_model_names(llm=args.llm)
    prompts = args.prompts.split(",") if args.prompts else None
    predictions, utterances = predict_corpus_split(args.corpus, args.split, llm=args.llm, adapter=args.adapter,
                                                   revision=args.revision, prompts=prompts, ratings=not args.no_ratings,
                                                   batch_size=args.batch_size, limit=args.limit,
                                                   calibrate=args.calibrate,
                                                   missing_transcripts=args.missing_transcripts, asr=args.asr,
                                                   cache_dir=args.cache_dir, answer_scoring=args.answer_scoring)
    out = Path(args.out)
    predictions.write_csv(out)
    report = report_or_submit(predictions, utterances, out.parent, title=f"prompt voting ({args.adapter or args.llm})")
    done = "no labels (blind), submission files beside it" if report.get("blind") else f"report: {out.parent / 'report.md'}"
    print(f"wrote {len(predictions)} predictions to {out}; {done}")
    return 0
