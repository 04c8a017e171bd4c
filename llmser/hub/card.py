"""The model card (``README.md``) of a shared llmser system, with Hub metadata and the evaluation table.

The YAML header is built with ``huggingface_hub.ModelCardData``, so the Hub indexes it like any model:
``library_name: llmser``, the ``base_model`` ids, tags, datasets, metrics and a ``model-index`` with
the test scores taken from a ``report.json`` written by ``llmser evaluate`` (task 1 macro-F1 and
accuracy, task 2 CCC per attribute). The body lists the members, how to pull and use the system,
the per-class scores, the prompts and label words, and the library versions.

Usage::

    write_card("runs/system", report="runs/system/test/report.json", repo_id="org/llmser-msp")
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from llmser.hub.manifest import LLM_KINDS, SystemManifest

CARD_NAME = "README.md"
BASE_TAGS: tuple[str, ...] = ("llmser", "speech-emotion-recognition", "msp-podcast", "audio-classification")
KIND_TAGS = {"wavlm": "wavlm", "text_llm": "text-llm", "audio_llm": "audio-llm", "fusion": "fusion"}
DEFAULT_DATASETS: tuple[str, ...] = ("MSP-Podcast",)
PIPELINE_TAG = "audio-classification"
TASK_NAME = "Speech emotion recognition (MSP-Podcast challenge tasks 1 and 2)"


def load_report(report: str | Path | dict[str, Any] | None) -> dict[str, Any] | None:
    """A report dict from ``report.json`` (path or folder) or as given."""
    if report is None or isinstance(report, dict):
        return report
    path = Path(report)
    path = path / "report.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; write it with `llmser evaluate ... --out DIR`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); re-run llmser evaluate") from None


# ---------------------------------------------------------------------------------- metadata


def report_metrics(report: dict[str, Any] | None) -> list[tuple[str, str, float]]:
    """(metric type, display name, value) for the headline scores of a report; NaNs left out."""
    if not report:
        return []
    rows: list[tuple[str, str, float]] = []
    task1, task2 = report.get("task1") or {}, report.get("task2") or {}
    if task1:
        rows += [("f1", "Task 1 macro-F1", task1["macro_f1"]), ("accuracy", "Task 1 accuracy", task1["accuracy"])]
    if task2:
        rows += [("ccc", f"Task 2 CCC {name}", value) for name, value in task2["ccc"].items()]
        if "ccc_mean" in task2:
            rows.append(("ccc", "Task 2 mean CCC", task2["ccc_mean"]))
    return [(kind, name, round(float(v), 4)) for kind, name, v in rows if v is not None and not math.isnan(v)]


def card_data(manifest: SystemManifest, report: dict[str, Any] | None = None, model_name: str = "llmser system",
              dataset_split: str = "test", datasets: tuple[str, ...] | list[str] | None = DEFAULT_DATASETS,
              license: str | None = None) -> Any:
    """The ``huggingface_hub.ModelCardData`` of a system (its README.md YAML header)."""
    from huggingface_hub import EvalResult, ModelCardData

    results = [
        EvalResult(task_type=PIPELINE_TAG, task_name=TASK_NAME, dataset_type="msp-podcast",
                   dataset_name="MSP-Podcast", dataset_split=dataset_split, metric_type=kind,
                   metric_name=name, metric_value=value)
        for kind, name, value in report_metrics(report)
    ]
    metric_ids = sorted({kind for kind, _, _ in report_metrics(report)})
    return ModelCardData(
        library_name="llmser", pipeline_tag=PIPELINE_TAG, license=license, tags=card_tags(manifest),
        base_model=hub_base_models(manifest) or None, datasets=list(datasets) if datasets else None,
        metrics=metric_ids or None, model_name=model_name if results else None, eval_results=results or None)


def card_tags(manifest: SystemManifest) -> list[str]:
    tags = list(BASE_TAGS)
    kinds = [m.kind for m in manifest.members]
    if any(kind in LLM_KINDS for kind in kinds):
        tags += ["peft", "lora"]
    tags += [KIND_TAGS[kind] for kind in dict.fromkeys(kinds) if kind in KIND_TAGS]
    return tags


def hub_base_models(manifest: SystemManifest) -> list[str]:
    """Base models that are Hub ids (org/name): llmser presets map to theirs; random presets are left out."""
    from llmser.models.llm.identity import canonical_name

    ids = [canonical_name(model_id) for model_id in manifest.base_model_ids()]
    return list(dict.fromkeys(i for i in ids if i.count("/") == 1 and not i.startswith((".", "/", "~"))))


# ---------------------------------------------------------------------------------- body


def render_card(manifest: SystemManifest, report: str | Path | dict[str, Any] | None = None,
                repo_id: str | None = None, dataset_split: str = "test",
                datasets: tuple[str, ...] | list[str] | None = DEFAULT_DATASETS, license: str | None = None,
                description: str | None = None, base_weights: dict[str, list[dict]] | None = None) -> Any:
    """A ``huggingface_hub.ModelCard`` for the system (``str(card)`` is the README.md text); ``base_weights``
    (:func:`member_base_weights`) lists which weights each LLM member's adapters were trained on."""
    from huggingface_hub import ModelCard

    report = load_report(report)
    name = repo_id.split("/")[-1] if repo_id else "llmser system"
    data = card_data(manifest, report, model_name=name, dataset_split=dataset_split, datasets=datasets,
                     license=license)
    body = _body(manifest, report, repo_id or "ORG/NAME", name, dataset_split, description, base_weights or {})
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def write_card(folder: str | Path, report: str | Path | dict[str, Any] | None = None, repo_id: str | None = None,
               **kwargs: Any) -> Path:
    """Write ``folder/README.md`` from its ``llmser.json`` (and a report), atomically."""
    from llmser.utils.io import atomic_write_text

    folder = Path(folder)
    manifest = SystemManifest.load(folder, check_files=False)
    kwargs.setdefault("base_weights", member_base_weights(folder, manifest))
    card = render_card(manifest, report, repo_id=repo_id, **kwargs)
    path = folder / CARD_NAME
    atomic_write_text(path, str(card))
    return path


def member_base_weights(folder: str | Path, manifest: SystemManifest) -> dict[str, list[dict]]:
    """Per LLM member, the distinct base-weight identities its adapters record (``llmser_base.json``)."""
    from llmser.models.llm.identity import PROVENANCE_FILE, adapter_provenance

    found: dict[str, list[dict]] = {}
    for member in manifest.members:
        sub = Path(folder) / member.subfolder
        if member.kind not in LLM_KINDS or not sub.is_dir():
            continue
        for path in sorted(sub.rglob(PROVENANCE_FILE)):
            identity = adapter_provenance(path.parent)
            if identity and identity not in found.setdefault(member.name, []):
                found[member.name].append(identity)
    return found


def _body(manifest: SystemManifest, report: dict[str, Any] | None, repo_id: str, name: str, split: str,
          description: str | None, base_weights: dict[str, list[dict]] | None = None) -> str:
    lines = [f"# {name}", "",
             description or ("An llmser speech emotion recognition system for "
                             "the MSP-Podcast challenge: eight emotion classes (task 1, macro-F1) and arousal, "
                             "valence and dominance on a 1-7 scale (task 2, CCC)."), ""]
    lines += _test_fit_section(manifest)
    lines += _members_section(manifest)
    lines += _base_weights_section(base_weights or {})
    lines += _selection_section(manifest)
    lines += _voting_section(manifest)
    lines += _usage_section(repo_id)
    lines += _evaluation_section(report, split)
    lines += _labels_section(manifest)
    lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in manifest.versions.items()) or "not recorded", ""]
    return "\n".join(lines)


def _members_section(manifest: SystemManifest) -> list[str]:
    lines = ["## Members", "", "| member | kind | folder | base models | prompts |", "|---|---|---|---|---|"]
    for m in manifest.members:
        bases = "<br>".join(f"{role}: `{ref.id}`" + (f" @ `{ref.revision}`" if ref.revision else "")
                            for role, ref in m.base_models.items()) or "–"
        lines.append(f"| {m.name} | {m.kind} | `{m.subfolder}/` | {bases} | {', '.join(m.prompts) or '–'} |")
    lines.append("")
    shown = {k: v for k, v in (manifest.ensemble or {}).items() if k != "selection"}  # its own section
    if shown:
        lines += ["Ensemble:", "", "```json", json.dumps(shown, indent=2), "```", ""]
    lines += ["LLM members are standard PEFT adapters (`adapter_config.json` + `adapter_model.safetensors`) that "
              "load with `peft.PeftModel.from_pretrained` onto their base model; all weights are safetensors.", ""]
    return lines


def _base_weights_section(base_weights: dict[str, list[dict]]) -> list[str]:
    """Which weights each LLM member was trained on: a converted base (e.g. SmolLM2 dequantised from the Q4_1
    GGUF file) is not the full-precision Hub model of the same name, and loading onto that one warns."""
    if not base_weights:
        return []
    from llmser.models.llm.identity import describe_identity

    lines = ["## Base weights", "", "| member | trained on |", "|---|---|"]
    lines += [f"| {member} | {describe_identity(identity)} |" for member, identities in base_weights.items()
              for identity in identities]
    converted = [i for identities in base_weights.values() for i in identities if i.get("converted_from")]
    if converted:
        lines += ["", "A converted base is not the Hub model of the same name: load these adapters onto the same "
                  "converted weights (llmser builds them offline for its `smol` preset; the sha256 above is the "
                  "source file's). llmser warns when they are loaded onto other weights."]
    return lines + [""]


def _test_fit_section(manifest: SystemManifest) -> list[str]:
    """A member trained with the explicit test opt-in (``data.allow_test_fit``): said first, since its test
    scores are then not a held-out result."""
    test_fit = (manifest.ensemble or {}).get("test_fit") or {}
    if not test_fit:
        return []
    lines = ["## Warning: Test data was used for training", "",
             "These members were trained with `data.allow_test_fit=true` (a deliberate final refit): they learned "
             "from, or were selected on, the test split, so any score on that split is not a held-out result.", "",
             "| member | test used as |", "|---|---|"]
    lines += [f"| {member} | {use} |" for member, uses in test_fit.items() for use in uses]
    return lines + [""]


def _selection_section(manifest: SystemManifest) -> list[str]:
    """How the shipped method was chosen (``build-system --method auto``): every candidate's out-of-sample dev
    scores, the same folds for all."""
    selection = (manifest.ensemble or {}).get("selection") or {}
    if not selection:
        return []
    return ["## How this system was chosen (dev split)", "",
            f"Every candidate was scored on out-of-sample predictions of the `{selection['split']}` split (members "
            f"trained on train; what learns from their outputs fitted on {selection['folds']} speaker-disjoint "
            "folds and scored on the held-out one), and the best one was shipped, fitted on all of dev.", "",
            selection["markdown"]]


def _voting_section(manifest: SystemManifest) -> list[str]:
    """Which prompt variants each LLM member runs and how they vote (what ``llmser predict`` does)."""
    voting = (manifest.ensemble or {}).get("voting") or {}
    if not voting:
        return []
    lines = ["## Prompt voting", "", "Each LLM member scores every file with each listed prompt variant and takes "
             "their vote; the predictions keep each variant's class in `vote_<member>_<variant>` columns.", "",
             "| member | rule | variants |", "|---|---|---|"]
    for member, setting in voting.items():
        lines.append(f"| {member} | {setting['rule']} | {', '.join(setting['variants'])} |")
    return lines + [""]


def _usage_section(repo_id: str) -> list[str]:
    return ["## Use", "", "```bash", "pip install llmser",
            f"llmser pull {repo_id}                 # into the Hugging Face cache (works offline afterwards)",
            "```", "", "```python", "from llmser.hub import SystemManifest, load_member, resolve_pretrained", "",
            f'folder = resolve_pretrained("{repo_id}")   # a Hub id or a local folder; HF_HUB_OFFLINE=1 uses the cache',
            "manifest = SystemManifest.load(folder)      # members, base models, prompts, label map",
            f'model = load_member("{repo_id}", manifest.members[0].name).eval()', "```", ""]


def _evaluation_section(report: dict[str, Any] | None, split: str) -> list[str]:
    scores = report_metrics(report)
    if not scores:
        return ["## Evaluation", "", "No evaluation report was attached.", ""]
    lines = ["## Evaluation", "", f"{report.get('title', 'llmser evaluation')} ({split} split).", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for _, name, value in scores]
    lines.append("")
    per_class = (report.get("task1") or {}).get("per_class") or {}
    if per_class:
        lines += ["| class | name | precision | recall | F1 | support |", "|---|---|---|---|---|---|"]
        lines += [f"| {code} | {s['name']} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | "
                  f"{s['support']} |" for code, s in per_class.items()]
        lines.append("")
    return lines


def _labels_section(manifest: SystemManifest) -> list[str]:
    label_map = manifest.label_map
    lines = ["## Labels and prompts", "",
             "Class order: " + ", ".join(f"{c} ({n})" for c, n in zip(label_map.get("classes", []),
                                                                     label_map.get("class_names", []))) + ".",
             f"Attributes: {', '.join(label_map.get('attributes', []))} on {label_map.get('attribute_range')}.", ""]
    if manifest.verbalisations:
        lines += ["Label words: " + "; ".join(f"`{k}`: {', '.join(v)}" for k, v in manifest.verbalisations.items())
                  + ".", ""]
    if manifest.prompts:
        lines += [f"Prompts (full text in `llmser.json`): {', '.join(manifest.prompts)}.", ""]
    return lines


__all__ = ["CARD_NAME", "card_data", "card_tags", "hub_base_models", "load_report", "member_base_weights", "render_card",
           "report_metrics", "write_card"]
