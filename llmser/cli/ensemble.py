"""``llmser ensemble SPEC``: run an ensemble spec's methods and report each on its predict split."""

from __future__ import annotations

import argparse


def add_ensemble(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ensemble", help="plurality vote / averaging / stacking across trained systems",
                       description="Run every method of an ensemble spec (YAML, see ensembles/demo.yaml): stacking "
                                   "fits on the spec's fit split, every method predicts its predict split; writes "
                                   "<method>_predictions.csv and a report per method.")
    p.add_argument("spec", help="ensemble spec YAML")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the spec, e.g. methods=[plurality,average]")
    p.add_argument("--corpus", required=True, help="corpus folder in the MSP-Podcast layout (references)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(handler=run_ensemble_command)


def run_ensemble_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmser.data.msp_podcast import MSPPodcast
    from llmser.data.splits import check_split_roles
    from llmser.ensemble import EnsembleSpec, run_ensemble
    from llmser.evaluation.report import format_summary_table, report_or_submit, summary_row
    from llmser.utils.io import atomic_write_json

    spec = EnsembleSpec.load(args.spec, args.overrides)
    corpus = MSPPodcast.from_folder(args.corpus)
    roles = check_split_roles(spec.split_uses(), corpus, allow_test_fit=spec.allow_test_fit, flag="allow_test_fit=true")
    fit = corpus.utterances(corpus.resolve_split(spec.fit_split), task="all") if "stacking" in spec.methods else None
    out = Path(args.out)
    result = run_ensemble(spec, fit, out)
    atomic_write_json(out / "ensemble.json", {**roles, "allow_test_fit": spec.allow_test_fit})
    references = corpus.utterances(corpus.resolve_split(spec.predict_split), task="all")
    rows = []
    for method, predictions in result.predictions.items():  # a blind predict split: submission files, no scores
        report = report_or_submit(predictions, references, out / method,
                                  title=f"ensemble ({method}), {spec.predict_split}")
        if report.get("blind"):
            print(f"{method}: {spec.predict_split} has no labels (blind), not scored; submission files in {out / method}")
        else:
            rows.append(summary_row(method, report))
    if rows:
        print(format_summary_table(rows))
    return 0
