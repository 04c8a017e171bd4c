"""Assemble trained runs into one system folder: members, optional fusion adapter, manifest, card.

    llmser build-system --member wavlm=runs/demo/wavlm --member text_llm=runs/demo/text_head \
        --fusion runs/demo/fusion --method fusion --out runs/demo/system

Each member is the ``best/`` folder of a training run (its ``save_pretrained`` files plus the
``recipe.yaml`` it was trained with), copied without optimizer state or pickles. The folder is a
valid Hub model repo (``llmser push``) and what ``Predictor.from_pretrained`` / ``llmser predict`` load.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from llmser.utils.logging import get_logger

logger = get_logger(__name__)

METHODS = ("fusion", "average", "plurality", "stacking", "member")
SELECTION_FILE = "selection.json"
_SKIP = ("*.tmp", "*.partial", "optimizer*", "scheduler*", "rng_state*", "*.bin", "*.pt", "*.pth", "*.pkl")


def _best_folder(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    best = run_dir / "best" if (run_dir / "best").is_dir() else run_dir
    if not (best / "recipe.yaml").is_file():
        raise FileNotFoundError(f"{best / 'recipe.yaml'} is missing; give the folder of a finished `llmser train` "
                                "run (it writes best/ with the recipe)")
    return best


def _checked_best(run: str | Path, fusion: bool) -> Path:
    """A run's best/ folder, checked before anything is written: no links out of the run (copytree follows
    them), no folder holding only pickles (the copy leaves pickles out, so it would end up empty), and a
    branch that fits its place (a fusion adapter for ``--fusion``, a member for ``--member``)."""
    from llmser.config import BranchMismatchError, branch_mismatch, saved_branch
    from llmser.models.registry import load_recipe
    from llmser.utils.weights import check_no_outside_links, refuse_pickles

    best = _best_folder(run)
    check_no_outside_links(best, boundary=run)
    for folder in (best, *(p for p in best.iterdir() if p.is_dir())):
        refuse_pickles(folder)
    branch, saved = load_recipe(best / "recipe.yaml").branch, saved_branch(best)
    if saved is not None and saved != branch:
        raise BranchMismatchError(f"{best}: its recipe.yaml is a {branch!r}-branch recipe but its weights are a "
                                  f"{saved!r}-branch model; copy the run's best/ folder again")
    if fusion and branch != "fusion":
        raise BranchMismatchError(branch_mismatch(best, branch, "fusion", "a fusion adapter, for --fusion"))
    if not fusion and branch == "fusion":
        raise BranchMismatchError(f"{best} holds a 'fusion'-branch model, where a member ('wavlm', 'text_llm' or "
                                  "'audio_llm') is expected; give it as --fusion RUN_DIR")
    return best


def _test_fit(best: Path) -> list[str]:
    """What the run's ``metrics.json`` records as test used for more than a report (``data.allow_test_fit``),
    so the system's card says it; [] for a run without the opt-in (or without metrics.json)."""
    import json

    from llmser.config import ConfigError

    path = (best.parent if best.name == "best" else best) / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); it records whether the run trained on test, so fix "
                         "or restore it (llmser train writes it at the end of a run)") from None
    return list(metrics.get("test_fit") or []) if isinstance(metrics, dict) else []


def _member_entry(name: str, best: Path) -> tuple[Any, dict[str, str]]:
    from llmser.hub.manifest import BaseModelRef, Member
    from llmser.models.registry import branch_config, load_recipe

    recipe = load_recipe(best / "recipe.yaml")
    config = branch_config(recipe)
    bases: dict[str, BaseModelRef] = {}
    prompts: dict[str, str] = {}
    if recipe.branch in ("text_llm", "audio_llm"):
        from llmser.models.llm.identity import canonical_name
        from llmser.models.llm.prompts import default_prompt_dir

        bases["llm"] = BaseModelRef(canonical_name(config.llm), config.revision)
        folder = Path(config.prompt_dir) if getattr(config, "prompt_dir", None) else default_prompt_dir()
        prompts = {p: (folder / f"{p}.yaml").read_text(encoding="utf-8") for p in config.prompts}
    if recipe.branch == "wavlm" and not getattr(config, "is_preset", False):
        from llmser.models.whisper.loading import canonical_whisper_name

        # a Whisper preset (smol) records the Hub model it stands for, as the LLM presets do
        encoder = canonical_whisper_name(config.encoder) if getattr(config, "is_whisper", False) else config.encoder
        bases["encoder"] = BaseModelRef(encoder, config.revision)
    return Member(name, recipe.branch, name, bases, list(prompts)), prompts


def _voting_entry(best: Path) -> dict[str, Any]:
    """The variants an LLM member votes with and its rule, from the config saved with its weights (the
    resolved prompt list), else its recipe."""
    from llmser.models.registry import branch_config, get_branch, load_recipe

    recipe = load_recipe(best / "recipe.yaml")
    config = branch_config(recipe)
    if (best / "llmser_config.json").is_file():
        config = get_branch(recipe.branch).config_cls.load(best)
    return {"variants": config.voting.select(list(config.prompts)), "rule": config.voting.rule}


def build_system(out_dir: str | Path, members: dict[str, str | Path], *, fusion: str | Path | None = None,
                 method: str | None = None, fusion_frame_stride: int = 4, report: str | Path | None = None,
                 settings: dict[str, Any] | None = None, stacker: Any = None,
                 selection: dict[str, Any] | None = None) -> Path:
    """Copy the runs' best models into ``out_dir`` and write ``llmser.json`` and a model card (with the
    scores of ``report``). ``method`` defaults to fusion when a fusion run is given, else average;
    ``settings`` are what it needs (``weights`` of average, the ``member`` that stands alone), ``stacker`` a
    fitted ``StackingEnsemble`` (method stacking), ``selection`` the dev table it was chosen from (``auto``)."""
    from llmser.hub.manifest import SystemManifest
    from llmser.utils.io import replace_dir

    method = method or ("fusion" if fusion is not None else "average")
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)} (or auto, with --outputs)")
    if method == "fusion" and fusion is None:
        raise ValueError("method fusion needs --fusion RUN_DIR (a trained fusion adapter)")
    if method == "stacking" and stacker is None:
        raise ValueError("method stacking needs a fitted StackingEnsemble (build-system --method auto fits one on dev)")
    out_dir = Path(out_dir)
    bests = {name: _checked_best(run, fusion=False) for name, run in members.items()}
    if fusion is not None:
        bests["fusion"] = _checked_best(fusion, fusion=True)
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    entries, prompts, voting = [], {}, {}
    for name, best in bests.items():
        shutil.copytree(best, tmp / name, ignore=shutil.ignore_patterns(*_SKIP))
        member, used = _member_entry(name, best)
        entries.append(member)
        prompts.update(used)
        if member.kind in ("text_llm", "audio_llm"):
            voting[name] = _voting_entry(best)
    test_fit = {name: used for name, best in bests.items() if (used := _test_fit(best))}
    ensemble = {"method": method, "members": list(members), "fusion_frame_stride": fusion_frame_stride,
                **(settings or {}), **({"voting": voting} if voting else {}), **({"test_fit": test_fit} if test_fit else {})}
    if stacker is not None:
        stacker.save(tmp / "stacking")
        ensemble["stacking"] = "stacking"
    if selection:
        from llmser.utils.io import atomic_write_json

        ensemble["selection"] = selection
        atomic_write_json(tmp / SELECTION_FILE, {"dev": selection["chosen_scores"], **selection})
    manifest = SystemManifest.create(entries, prompts=prompts, ensemble=ensemble)
    manifest.save(tmp)
    from llmser.hub.card import write_card

    write_card(tmp, report)  # model card README.md (with the evaluation table when a report is given)
    replace_dir(tmp, out_dir)
    logger.info("system with members %s (%s) written to %s", ", ".join(members), method, out_dir)
    return out_dir


def select_and_build(out_dir: str | Path, members: dict[str, str | Path], *, outputs_dir: str | Path,
                     corpus: str | Path, fusions: dict[str, str | Path] | None = None, dev_split: str = "dev",
                     folds: int = 5, metric: str = "combined", seed: int = 0, fusion_frame_stride: int = 4,
                     report: str | Path | None = None) -> tuple[Path, list[Any], Any]:
    """``build-system --method auto``: score every candidate on out-of-sample dev predictions (each member alone
    from its cached dev outputs in ``outputs_dir``, plurality, average, weighted average, stacking, and each
    fusion run by K-fold training on dev; ``llmser.ensemble.selection``), then build the best one, fitted on
    all of dev, with only the members it reads. Returns the folder, the candidates and the chosen one."""
    from llmser.data.branch_outputs import load_branch_outputs
    from llmser.data.msp_podcast import MSPPodcast, ReaderConfig
    from llmser.data.splits import SplitUse, check_split_roles
    from llmser.ensemble.selection import (
        choose,
        dev_folds,
        score_candidates,
        selection_markdown,
        shipped_settings,
    )
    from llmser.models.fusion.config import FusionBranchConfig
    from llmser.training.crossfit import cross_fit_dev, fitted_outside_note

    reader = MSPPodcast.from_folder(corpus, ReaderConfig(labels_only=True))
    check_split_roles([SplitUse("--dev-split", dev_split, "select")], reader, flag=None)  # never test, before any work
    dev = reader.resolve_split(dev_split)
    references = reader.utterances(dev, task="all")
    predictions = {name: load_branch_outputs(outputs_dir, name, dev).predictions() for name in members}
    fusions = dict(fusions or {})
    present = sorted(set(dev_folds(references, folds).values()))
    if len(present) < folds:
        logger.warning("%s has too few speakers for %d speaker-disjoint folds: %d of them hold files, and every "
                       "candidate is scored on those", dev, folds, len(present))
    oof = {name: cross_fit_dev(run, folds, split=dev, fold_ids=present) for name, run in fusions.items()}
    notes = {name: note for name, run in fusions.items() if (note := fitted_outside_note(run, dev)) is not None}
    candidates = score_candidates(predictions, references, fusion=oof, folds=folds, seed=seed, metric=metric,
                                  fusion_notes=notes)
    chosen = choose(candidates, metric)
    logger.info("chosen on dev by %s:\n%s", metric, selection_markdown(candidates, chosen, metric))
    settings, stacker = shipped_settings(chosen, predictions, references, metric, seed)
    fusion = None
    if chosen.method == "member":
        shipped = {settings["member"]: members[settings["member"]]}
    elif chosen.method == "fusion":
        fusion = fusions[settings.pop("fusion")]
        streams = FusionBranchConfig.load(_best_folder(fusion)).streams
        shipped = {name: run for name, run in members.items() if name in streams}
    else:
        weights = settings.get("weights")
        shipped = {name: run for name, run in members.items() if weights is None or name in weights}
    selection = {"metric": metric, "folds": folds, "split": dev, "chosen": chosen.name,
                 "chosen_scores": chosen.scores, "candidates": [c.row() for c in candidates],
                 "markdown": selection_markdown(candidates, chosen, metric)}
    folder = build_system(out_dir, shipped, fusion=fusion, method=chosen.method, settings=settings, stacker=stacker,
                          fusion_frame_stride=fusion_frame_stride, report=report, selection=selection)
    return folder, candidates, chosen
