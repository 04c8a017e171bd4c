"""Train any llmser branch from a recipe: what ``llmser train`` (and ``accelerate launch -m llmser train``) runs.

    # one process (CPU or one GPU)
    llmser train adapters/wavlm_tiny.yaml
    # two CPU processes (gloo) on this machine; same global batch as one process with batch_size 8
    accelerate launch --config_file scripts/accelerate/cpu_2proc.yaml -m llmser train \
        adapters/wavlm_tiny.yaml data.batch_size=4
    # 8 GPUs, bf16
    accelerate launch --config_file scripts/accelerate/multi_gpu.yaml -m llmser train adapters/wavlm_large.yaml
    # continue the latest checkpoint of the run's output_dir
    llmser train adapters/wavlm_tiny.yaml --resume

After training, the best model (``output_dir/best``) predicts the test split: ``test_predictions.csv``
and a full report in ``output_dir/test/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmser.utils.logging import get_logger

logger = get_logger(__name__)


def run(recipe_path: str | Path, overrides: list[str] | None = None, resume: str | None = None) -> dict[str, Any]:
    """Train, then predict and report the test split; returns the final metrics."""
    from accelerate.utils import set_seed

    from llmser.data.msp_podcast import MSPPodcast, ReaderConfig
    from llmser.models.registry import branch_config, get_branch, load_recipe
    from llmser.training.engine import Trainer, make_accelerator
    from llmser.utils.outputs import check_output_dir

    recipe = load_recipe(recipe_path, overrides)
    check_output_dir(recipe.train.output_dir, what="train.output_dir")  # before hours of training, not after
    set_seed(recipe.train.seed)
    corpus = MSPPodcast.from_folder(recipe.data.corpus, ReaderConfig(on_error=recipe.data.on_error, extra_splits=tuple(recipe.data.extra_splits)))
    roles = recipe_split_roles(recipe, corpus)  # test is only reported on: refused before any work
    roles.update(blind_test_split(recipe, corpus))
    model_config = branch_config(recipe)
    if getattr(model_config, "mode", None) == "sft":  # instruction tuning runs in trl's own trainer
        return _run_sft(recipe, model_config, corpus, resume, roles)
    accelerator = make_accelerator(recipe)
    spec = get_branch(recipe.branch)
    setup = spec.prepare_fn(recipe, model_config, corpus, accelerator)
    warmup = {}
    if setup.fit_readout and resume is None:  # a resumed run's checkpoint already holds the fitted readout
        from llmser.training.readout import fit_readout

        warmup.update(fit_readout(setup, recipe, accelerator.device, progress=accelerator.is_main_process))
    if setup.warmup_steps and resume is None:  # a resumed run's checkpoint already holds the stage-1 weights
        from llmser.training.warmup import warm_up

        warmup.update(warm_up(setup, recipe, accelerator.device, progress=accelerator.is_main_process))
    trainer = Trainer(recipe, setup.model, setup.train_set, setup.eval_set, setup.collate_fn,
                      class_counts=setup.class_counts, train_labels=setup.train_labels, accelerator=accelerator)
    state = trainer.fit(resume=resume)
    result: dict[str, Any] = {"step": state["step"], "best_step": state.get("best_step"),
                              "dev": state.get("best_metrics", {}), "train_seconds": state.get("train_seconds"), **warmup,
                              **roles}
    if recipe.train.predict_test and setup.test_set is not None:
        result["test"] = predict_test(trainer, spec, setup)
        dev_votes = (result["test"].get("voting") or {}).get("dev")
    else:
        dev_votes = score_dev_by_vote(trainer, spec, setup)
    if dev_votes:  # what the run ships (calibrated answers, the recipe's vote) on dev: what choices compare
        result["dev_final"] = {k: v for k, v in dev_votes[0].items() if k not in ("variant", "n") and v is not None}
        result["dev_voting"] = dev_votes
    choice = Path(recipe.train.output_dir) / "best" / VOTING_CHOICE
    if choice.is_file():
        import json

        result["voting_choice"] = json.loads(choice.read_text(encoding="utf-8"))
    _finish(accelerator, trainer)
    if accelerator.is_main_process:
        from llmser.utils.io import atomic_write_json

        atomic_write_json(Path(recipe.train.output_dir) / "metrics.json", result)
    return result


def _finish(accelerator: Any, trainer: Any) -> None:
    """Tear the process group down only when every process is done, and only after the wrapped model.

    A process that left early (the non-main ones skip writing the report) used to destroy the group while
    the others still worked, and a DDP wrapper still alive at interpreter exit keeps the gloo group's
    threads alive with it; both can end a finished run in ``terminate called without an active exception``.
    """
    import gc

    accelerator.wait_for_everyone()
    trainer.model = trainer.optimizer = trainer.scheduler = None
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()  # trackers closed, process group torn down


def recipe_split_roles(recipe: Any, corpus: Any) -> dict[str, Any]:
    """The recipe's splits by role (train fits, eval selects, test reports), refusing test for fit or select
    unless ``data.allow_test_fit`` (then recorded); what metrics.json keeps of them."""
    from llmser.data.splits import SplitUse, check_split_roles

    data = recipe.data
    uses = [SplitUse("data.train_split", data.train_split, "fit"), SplitUse("data.eval_split", data.eval_split, "select"),
            SplitUse("data.test_split", data.test_split, "report")]
    return check_split_roles(uses, corpus, allow_test_fit=data.allow_test_fit, flag="data.allow_test_fit=true")


def blind_test_split(recipe: Any, corpus: Any) -> dict[str, Any]:
    """Say before training when the test split has no labels (the challenge's Test3): it is then predicted and
    written as submission files, not scored, and the run's dev results are kept as for any other run."""
    from llmser.evaluation.report import is_blind

    split = recipe.data.test_split
    if not split or not recipe.train.predict_test or not is_blind(corpus.utterances(corpus.resolve_split(split))):
        return {}
    logger.info("report split %s (data.test_split) has no labels (a blind split): after training it is predicted "
                "and written as submission files under %s/test, not scored", split, recipe.train.output_dir)
    return {"test_blind": True}


def _run_sft(recipe: Any, model_config: Any, corpus: Any, resume: str | None, roles: dict[str, Any]) -> dict[str, Any]:
    from accelerate import PartialState

    from llmser.training.sft import run_sft
    from llmser.utils.io import atomic_write_json

    result = {**run_sft(recipe, model_config, corpus, resume), **roles}
    if PartialState().is_main_process:
        atomic_write_json(Path(recipe.train.output_dir) / "metrics.json", result)
    return result


def score_dev_by_vote(trainer: Any, spec: Any, setup: Any) -> list[dict[str, Any]] | None:
    """Without a test split, an LLM branch's shipped form (best checkpoint, answer priors fitted on dev without
    labels, the recipe's vote) is still scored on dev: one row for the vote, one per variant (main process)."""
    from llmser.models.llm.votes import report_rows, vote_with_every_variant, votes

    if setup.eval_set is None or not votes(trainer.accelerator.unwrap_model(trainer.model), setup.eval_set):
        return None
    model = load_best(trainer, spec, setup)
    if not trainer.is_main:
        return None
    every, dev = vote_with_every_variant(model, setup.eval_set, setup.collate_fn,
                                         batch_size=trainer.recipe.data.eval_batch_size,
                                         max_tokens=trainer.recipe.data.eval_max_tokens, desc="voting on dev")
    return report_rows(every, dev, setup.eval_set.utterances)


def load_best(trainer: Any, spec: Any, setup: Any) -> Any:
    """The unwrapped model with the best checkpoint's weights, its answer priors fitted on dev (LLM branches)."""
    from llmser.models.branch import ReloadsWeights

    best_dir = Path(trainer.recipe.train.output_dir) / "best"
    trainer.accelerator.wait_for_everyone()
    if trainer.is_main:
        from llmser.utils.io import recover_dir

        recover_dir(best_dir)  # a run killed while replacing best/ left it as a backup
    trainer.accelerator.wait_for_everyone()
    model = trainer.accelerator.unwrap_model(trainer.model)
    if best_dir.is_dir():
        if isinstance(model, ReloadsWeights):  # LLM branches: reload the adapter, not the base
            model.load_trained_weights(best_dir)
        else:
            model.load_state_dict(spec.model_cls.from_pretrained(best_dir).state_dict())
    calibrate_on_dev(trainer, model, setup, best_dir)
    choose_voting_on_dev(trainer, model, setup, best_dir)
    return model


VOTING_CHOICE = "voting_choice.json"


def choose_voting_on_dev(trainer: Any, model: Any, setup: Any, best_dir: Path) -> None:
    """``model.voting.variants: auto``: which prompt variants vote, and by which rule, is chosen on dev once
    the best checkpoint is known (``llmser.models.llm.votes.choose_voting``: the k best variants, plurality
    or mean) and saved with the best model, so every consumer of the run votes the same way. The
    candidates' dev table goes to ``best/voting_choice.json`` and the run's ``metrics.json``."""
    from llmser.models.llm.votes import adopt_saved_voting, choose_voting, collect_votes, votes
    from llmser.models.voting import VotingConfig
    from llmser.utils.io import atomic_write_json

    voting = getattr(model.config, "voting", None)
    if voting is None or not voting.chosen_on_dev or setup.eval_set is None or not votes(model, setup.eval_set):
        return
    if trainer.is_main:
        dev = collect_votes(model, setup.eval_set, setup.collate_fn, batch_size=trainer.recipe.data.eval_batch_size,
                            max_tokens=trainer.recipe.data.eval_max_tokens, desc="choosing the vote on dev")
        variants, rule, table = choose_voting(dev, setup.eval_set.utterances)
        model.config.voting = VotingConfig(variants=variants, rule=rule)
        logger.info("vote chosen on dev: %s of %s (%d candidates, macro-F1 %s)", rule, ", ".join(variants),
                    len(table), next((round(r["macro_f1"], 4) for r in table
                                      if r["variants"] == variants and r["rule"] == rule), None))
        if best_dir.is_dir():
            model.save_pretrained(best_dir)
            atomic_write_json(best_dir / VOTING_CHOICE, {"variants": variants, "rule": rule, "candidates": table})
    trainer.accelerator.wait_for_everyone()
    adopt_saved_voting(model, best_dir)


def predict_test(trainer: Any, spec: Any, setup: Any) -> dict[str, Any]:
    """Score the test split with the best model; the main process writes predictions and the report."""
    from llmser.evaluation.predictions import Predictions
    from llmser.evaluation.report import report_or_submit
    from llmser.models.llm.votes import votes

    output_dir = Path(trainer.recipe.train.output_dir)
    model = load_best(trainer, spec, setup)

    if votes(model, setup.test_set):  # LLM branches: the recipe's prompt vote (model.voting)
        return predict_test_by_vote(trainer, model, setup)
    out = trainer.evaluate(setup.test_set, desc="test")
    if not trainer.is_main:  # the main process writes and reports; the others return the same shape
        return {"metrics": out.metrics}
    names = [setup.test_utterances[i].file_name for i in out.indices]
    predictions = Predictions.from_probs(names, out.probs, attributes=out.attributes) if out.probs is not None \
        else Predictions(file_names=names, classes=None, probs=None, attributes=out.attributes, extras={})
    predictions.write_csv(output_dir / "test_predictions.csv")
    report = report_or_submit(predictions, setup.test_utterances, output_dir / "test",
                              title=f"{trainer.recipe.branch} branch, test split")
    if report.get("blind"):
        return {"blind": True, "submission": report["submission"]}
    # DEBUG, not INFO: dev is what the log shows; test is read once, from the report (docs/protocol.md)
    logger.debug("test: %s", {k: round(v, 4) for k, v in out.metrics.items()})
    return {"metrics": out.metrics, "report": str(output_dir / "test" / "report.md"),
            "macro_f1": (report.get("task1") or {}).get("macro_f1")}


def predict_test_by_vote(trainer: Any, model: Any, setup: Any) -> dict[str, Any]:
    """The test split by the configured prompt vote, and what the vote is worth (main process only).

    Writes ``test_predictions.csv`` and ``test/report.md`` for the vote (each variant's vote in
    ``vote_<variant>`` columns), ``test/single/report.md`` for the single variant that scored best on
    dev (the first variant without dev), and ``test/voting.md``/``.json``: one row per variant and one
    for the vote, on dev and test, with a sentence on whether the vote beat the best variant on dev.
    """
    from llmser.evaluation.report import evaluate, is_blind, report_or_submit
    from llmser.models.llm.votes import (
        best_single,
        report_rows,
        verdict,
        vote_with_every_variant,
        voting_markdown,
    )
    from llmser.utils.io import atomic_write_json, atomic_write_text

    if not trainer.is_main:
        return {"metrics": {}}
    output_dir = Path(trainer.recipe.train.output_dir)
    batch_size, rule = trainer.recipe.data.eval_batch_size, model.config.voting.rule
    tables = {}
    if setup.eval_set is not None:
        every_dev, dev = vote_with_every_variant(model, setup.eval_set, setup.collate_fn, batch_size=batch_size,
                                                 max_tokens=trainer.recipe.data.eval_max_tokens, desc="voting on dev")
        tables["dev"] = report_rows(every_dev, dev, setup.eval_set.utterances)
    every, test = vote_with_every_variant(model, setup.test_set, setup.collate_fn, batch_size=batch_size,
                                          max_tokens=trainer.recipe.data.eval_max_tokens, desc="voting on test")
    predictions = test.predictions()
    predictions.write_csv(output_dir / "test_predictions.csv")
    if is_blind(setup.test_utterances):  # nothing to score: the submission files, and dev's table kept
        written = report_or_submit(predictions, setup.test_utterances, output_dir / "test")["submission"]
        atomic_write_json(output_dir / "test" / "voting.json", {"rule": rule, **tables})
        return {"blind": True, "submission": written, "voting": tables}
    tables["test"] = report_rows(every, test, setup.test_utterances)
    single = best_single(tables["dev"])["variant"] if "dev" in tables else every.variant_names[0]
    title = f"{trainer.recipe.branch} branch, test split, {rule} vote of {len(test.variant_names)} prompt variants"
    report = evaluate(predictions, setup.test_utterances, output_dir / "test", title=title)
    evaluate(every.variant_predictions(single), setup.test_utterances, output_dir / "test" / "single",
             title=f"{trainer.recipe.branch} branch, test split, prompt variant {single} alone (best on dev)",
             plots=False)
    atomic_write_json(output_dir / "test" / "voting.json", {"rule": rule, "single": single, **tables})
    atomic_write_text(output_dir / "test" / "voting.md", voting_markdown(tables, rule))
    if "dev" in tables:
        logger.info(verdict(tables["dev"]))
    metrics = {k: v for k, v in tables["test"][0].items() if k not in ("variant", "n") and v is not None}
    logger.debug("test (vote): %s", {k: round(v, 4) for k, v in metrics.items()})  # dev only at INFO
    return {"metrics": metrics, "report": str(output_dir / "test" / "report.md"),
            "macro_f1": (report.get("task1") or {}).get("macro_f1"), "voting": tables}


def calibrate_on_dev(trainer: Any, model: Any, setup: Any, best_dir: Path) -> None:
    """Branches that answer with an LLM (``model.calibration``, e.g. the audio-LLM) fit each prompt variant's
    answer prior on the dev split and save them with the best model, before the test split is predicted.

    Every variant is fitted (the evaluation dataset reads the dev files through one variant at a time),
    so that voting over the variants divides out each one's own prior.
    """
    calibration = getattr(model, "calibration", None)
    if calibration is None or setup.eval_set is None or not getattr(model.config, "calibrate", False):
        return
    calibration.log_prior.zero_()
    variants = len(calibration.log_prior) if hasattr(setup.eval_set, "variant") else 1
    for variant in range(variants):
        if variants > 1:
            setup.eval_set.variant = variant
        dev = trainer.evaluate(setup.eval_set, desc=f"calibrate variant {variant} on dev")
        calibration.fit(dev.probs, variant=variant)  # not yet fitted variants read uncalibrated answers
        logger.info("answer prior of variant %d fitted on %d dev files: %s", variant, len(dev.probs),
                    [round(float(p), 3) for p in calibration.log_prior[variant].softmax(-1)])
    if variants > 1:
        setup.eval_set.variant = 0
    if trainer.is_main and best_dir.is_dir():
        model.save_pretrained(best_dir)
    trainer.accelerator.wait_for_everyone()
