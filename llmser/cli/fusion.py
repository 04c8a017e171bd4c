"""``llmser collect-outputs RUN_DIR``: cache a trained branch's outputs for fusion and ensembles."""

from __future__ import annotations

import argparse

from llmser.cli.args import positive_int


def add_collect_outputs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect-outputs", help="cache a trained branch's embeddings/probabilities per split",
                       description="Run a trained branch (RUN_DIR/best) over corpus splits and write its pooled "
                                   "embeddings, class probabilities and attributes (and, with --frames, WavLM frame "
                                   "states) to OUT/<name>/<split>.safetensors: the inputs of the fusion adapter and "
                                   "of ensembles.")
    p.add_argument("run_dir", help="a training run folder (with best/ and best/recipe.yaml)")
    p.add_argument("--out", required=True, help="outputs folder shared by the branches")
    p.add_argument("--name", default=None, help="subfolder name (default: the recipe's branch)")
    p.add_argument("--splits", default="train,dev,test", help="comma-separated splits (default: train,dev,test)")
    p.add_argument("--corpus", default=None, help="override the recipe's corpus folder")
    p.add_argument("--frames", action="store_true", help="also store WavLM frame states (fusion attends to them)")
    p.add_argument("--frame-stride", type=positive_int, default=4, help="average every N frames to keep the cache small")
    p.add_argument("--cross-fit", type=int, default=0, metavar="K",
                   help="train split: out-of-fold outputs of K fold models (K trainings; for cheap branches), "
                        "so fusion and stacking may learn from train without in-sample optimism")
    p.set_defaults(handler=run_collect_outputs)


def run_collect_outputs(args: argparse.Namespace) -> int:
    from llmser.inference.collect import collect_run_outputs, wavlm_sequence

    overrides = [f"data.corpus={args.corpus}"] if args.corpus else []
    splits = [s for s in args.splits.split(",") if s and not (args.cross_fit and s.lower() == "train")]
    written = collect_run_outputs(args.run_dir, args.out, splits,
                                  name=args.name, overrides=overrides,
                                  sequence_fn=wavlm_sequence if args.frames else None,
                                  sequence_stride=args.frame_stride if args.frames else 1)
    if args.cross_fit:
        from llmser.training.crossfit import cross_fit_outputs

        written["train (cross-fitted)"] = cross_fit_outputs(
            args.run_dir, args.out, args.cross_fit, name=args.name, overrides=overrides,
            sequence_fn=wavlm_sequence if args.frames else None, sequence_stride=args.frame_stride if args.frames else 1)
    for split, path in written.items():
        print(f"{split}: {path}")
    return 0
