"""``llmser.json``: the manifest that makes a folder a shareable llmser system.

A trained system is a folder that is also a valid Hub model repo::

    SYSTEM/
      llmser.json            this manifest
      README.md              model card with Hub metadata (llmser.hub.card)
      wavlm/                 one subfolder per member, each saved by its branch's save_pretrained
      text_llm/              (LLM members hold standard PEFT adapters: adapter_config.json + safetensors)
      fusion/

The manifest says what the members are (name, kind, subfolder), which base models and revisions
they were trained on (so a loader can fetch exactly those, and an adapter on the wrong base is caught),
which prompts and label verbalisations they were trained and evaluated with (their text, so a pulled
system does not depend on the puller's ``prompts/`` folder), the label map (so a class index means
what it meant when the system was trained), how members combine (``ensemble``), and the library
versions it was made with.

Usage::

    manifest = SystemManifest.create([Member("wavlm", "wavlm", "wavlm", {"encoder": BaseModelRef("microsoft/wavlm-large")})])
    manifest.save("runs/system")              # validates the folder first
    manifest = SystemManifest.load("runs/system")
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from llmser.config import ConfigError, from_dict, to_dict

MANIFEST_NAME = "llmser.json"
FORMAT_NAME = "llmser-system"
FORMAT_VERSION = 1

#: Member kinds and the files each member folder must hold. LLM kinds hold at least one PEFT adapter
#: somewhere under their folder (its layout is the branch's business); every kind holds safetensors.
MEMBER_KINDS: dict[str, tuple[str, ...]] = {
    "wavlm": ("config.json", "model.safetensors"),
    "text_llm": (),
    "audio_llm": (),
    "fusion": (),
}
LLM_KINDS = ("text_llm", "audio_llm")
#: Packages whose versions are recorded (and compared on load).
VERSIONED_PACKAGES = ("llmser", "torch", "transformers", "peft", "huggingface_hub")


class ManifestError(ConfigError):
    """A missing, malformed or inconsistent ``llmser.json``; the message lists every problem."""


@dataclass
class BaseModelRef:
    """A base model a member was trained on: a Hub id (or preset name) and the revision used."""

    id: str
    revision: str | None = None


@dataclass
class Member:
    """One trained component of the system, saved in ``subfolder`` by its branch's ``save_pretrained``.

    ``base_models`` maps a role (``llm``, ``encoder``, ``speech_encoder``...) to its base model;
    ``prompts`` names the prompt variants it uses (their text is in ``SystemManifest.prompts``).
    """

    name: str
    kind: str
    subfolder: str
    base_models: dict[str, BaseModelRef] = field(default_factory=dict)
    prompts: list[str] = field(default_factory=list)


@dataclass
class SystemManifest:
    members: list[Member]
    prompts: dict[str, str] = field(default_factory=dict)  # prompt name -> prompt file text (YAML)
    verbalisations: dict[str, list[str]] = field(default_factory=dict)  # name -> 8 words, CLASS_CODES order
    label_map: dict[str, Any] = field(default_factory=dict)
    ensemble: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(cls, members: list[Member], prompts: dict[str, str] | None = None,
               verbalisations: dict[str, list[str]] | None = None,
               ensemble: dict[str, Any] | None = None) -> SystemManifest:
        """A manifest with the current label map and library versions filled in.

        ``verbalisations`` defaults to those of llmser.schema that the given prompts use (all of them
        when no prompt text names one).
        """
        prompts = dict(prompts or {})
        return cls(members=list(members), prompts=prompts,
                   verbalisations=verbalisations if verbalisations is not None else _used_verbalisations(prompts),
                   label_map=current_label_map(), ensemble=dict(ensemble or {}), versions=current_versions())

    def member(self, name: str) -> Member:
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(f"no member {name!r} in the manifest; members: {', '.join(m.name for m in self.members)}")

    def base_model_ids(self) -> list[str]:
        """Every base model id, in member order, without duplicates."""
        seen: dict[str, None] = {}
        for member in self.members:
            for ref in member.base_models.values():
                seen.setdefault(ref.id, None)
        return list(seen)

    # ------------------------------------------------------------------ validation

    def problems(self, folder: str | Path | None = None, for_hub: bool = False) -> list[str]:
        """Every problem at once: structure always; member files when ``folder`` is given; local paths
        as base models when the system is to be shared (``for_hub``)."""
        issues = self._structure_problems()
        if folder is not None:
            issues += self._folder_problems(Path(folder))
        if for_hub:
            issues += self._shareability_problems(None if folder is None else Path(folder))
        return issues

    def validate(self, folder: str | Path | None = None, for_hub: bool = False, source: str = MANIFEST_NAME) -> None:
        issues = self.problems(folder, for_hub)
        if issues:
            raise ManifestError(f"{source}: {len(issues)} problem(s):\n  - " + "\n  - ".join(issues))

    def _structure_problems(self) -> list[str]:
        issues: list[str] = []
        if self.format != FORMAT_NAME:
            issues.append(f"format is {self.format!r}, expected {FORMAT_NAME!r}: not an llmser system manifest")
        if self.format_version > FORMAT_VERSION:
            issues.append(f"format_version {self.format_version} is newer than this llmser reads "
                          f"({FORMAT_VERSION}); upgrade llmser (pip install -U llmser)")
        if not self.members:
            issues.append("members is empty: a system needs at least one member")
        names = [m.name for m in self.members]
        issues += [f"member name {n!r} is used more than once" for n in sorted({n for n in names if names.count(n) > 1})]
        for i, member in enumerate(self.members):
            issues += _member_problems(member, f"members[{i}] ({member.name!r})", self.prompts)
        for name, words in self.verbalisations.items():
            issues += _verbalisation_problems(name, words)
        issues += _label_map_problems(self.label_map)
        issues += _ensemble_problems(self.ensemble, set(names))
        return issues

    def _folder_problems(self, folder: Path) -> list[str]:
        issues: list[str] = []
        for member in self.members:
            if not _is_relative_subfolder(member.subfolder):
                continue  # already reported
            sub = folder / member.subfolder
            where = f"member {member.name!r}"
            if not sub.is_dir():
                issues.append(f"{where}: folder {sub} does not exist; save the member there or fix its subfolder")
                continue
            issues += [f"{where}: {sub / name} is missing" for name in MEMBER_KINDS.get(member.kind, ())
                       if not (sub / name).is_file()]
            if not any(sub.rglob("*.safetensors")):
                issues.append(f"{where}: {sub} holds no .safetensors weights")
            if member.kind in LLM_KINDS:
                issues += _adapter_problems(member, sub, where)
        return issues

    def _shareability_problems(self, folder: Path | None) -> list[str]:
        issues = []
        for member in self.members:
            for role, ref in member.base_models.items():
                if _looks_local(ref.id):
                    issues.append(
                        f"member {member.name!r}: base model {role!r} is the local path {ref.id!r}, which nobody "
                        "else can load; record its Hub id (and revision) instead")
            if folder is None or member.kind not in LLM_KINDS or not _is_relative_subfolder(member.subfolder):
                continue
            for config in sorted((folder / member.subfolder).rglob("adapter_config.json")):
                recorded = _recorded_adapter_base(config)
                if recorded and _looks_local(recorded):
                    issues.append(
                        f"member {member.name!r}: {config} records its base model as the local path "
                        f"{recorded!r}; set base_model_name_or_path to the Hub id before sharing")
        return issues

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict[str, Any]:
        data = to_dict(self)
        # format first, so ``head llmser.json`` says what the file is
        return {"format": data.pop("format"), "format_version": data.pop("format_version"), **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = MANIFEST_NAME) -> SystemManifest:
        try:
            manifest = from_dict(cls, data, source=source)
        except ManifestError:
            raise
        except ConfigError as exc:
            raise ManifestError(str(exc)) from None
        manifest.validate(source=source)
        return manifest

    def save(self, folder: str | Path, for_hub: bool = False) -> Path:
        """Validate against ``folder`` (members present) and write ``folder/llmser.json`` atomically."""
        from llmser.utils.io import atomic_write_json

        path = Path(folder) / MANIFEST_NAME
        self.validate(folder, for_hub=for_hub, source=str(path))
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder: str | Path, check_files: bool = True) -> SystemManifest:
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"{path} does not exist: {folder} is not an llmser system folder (save one with "
                                "SystemManifest.save, or pull one with `llmser pull REPO_ID`)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} is not valid JSON ({exc}); re-save or re-download it") from None
        if not isinstance(data, dict):
            raise ManifestError(f"{path} must hold a JSON object, not a {type(data).__name__}")
        manifest = cls.from_dict(data, source=str(path))
        if check_files:
            manifest.validate(folder, source=str(path))
        return manifest

    def version_differences(self) -> dict[str, tuple[str, str]]:
        """Packages whose recorded version differs from the installed one: name -> (recorded, installed)."""
        now = current_versions()
        return {name: (old, now.get(name, "not installed")) for name, old in self.versions.items()
                if now.get(name, "not installed") != old}


# ---------------------------------------------------------------------------------- current values


def current_label_map() -> dict[str, Any]:
    """The label map of llmser.schema: what every index and column of a trained system means."""
    from llmser import schema

    return {
        "classes": list(schema.CLASS_CODES),
        "class_names": list(schema.CLASS_NAMES),
        "attributes": list(schema.ATTRIBUTES),
        "attribute_range": [schema.ATTRIBUTE_MIN, schema.ATTRIBUTE_MAX],
    }


def current_versions() -> dict[str, str]:
    """Installed versions of the packages a system depends on (read from metadata: nothing imported)."""
    from importlib import metadata

    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            if name == "llmser":  # running from a checkout that is not pip-installed
                from llmser import __version__

                versions[name] = __version__
    return versions


def _used_verbalisations(prompts: dict[str, str]) -> dict[str, list[str]]:
    from llmser.schema import VERBALISATIONS

    used = {name for name in VERBALISATIONS for text in prompts.values() if f"verbalisation: {name}" in text}
    return {name: list(v.words) for name, v in VERBALISATIONS.items() if not used or name in used}


# ---------------------------------------------------------------------------------- checks


def _member_problems(member: Member, where: str, prompts: dict[str, str]) -> list[str]:
    issues = []
    if not member.name.strip():
        issues.append(f"{where}: name is empty")
    if member.kind not in MEMBER_KINDS:
        issues.append(f"{where}: kind {member.kind!r} is not one of {', '.join(MEMBER_KINDS)}")
    if not _is_relative_subfolder(member.subfolder):
        issues.append(f"{where}: subfolder {member.subfolder!r} must be a relative path inside the system folder "
                      "(no '..', no leading '/')")
    for role, ref in member.base_models.items():
        if not ref.id.strip():
            issues.append(f"{where}: base model {role!r} has an empty id")
    if member.kind in LLM_KINDS and "llm" not in member.base_models:
        issues.append(f"{where}: an {member.kind} member names its base LLM as base_models.llm")
    missing = [p for p in member.prompts if p not in prompts]
    if missing:
        issues.append(f"{where}: prompts {missing} have no text in the manifest's prompts; add them "
                      "(name -> prompt file text)")
    return issues


def _verbalisation_problems(name: str, words: list[str]) -> list[str]:
    from llmser.schema import NUM_CLASSES

    if len(words) != NUM_CLASSES:
        return [f"verbalisation {name!r} needs {NUM_CLASSES} words (one per class), got {len(words)}"]
    if len({w.strip().lower() for w in words}) != NUM_CLASSES:
        return [f"verbalisation {name!r} has duplicate words: {words}"]
    return []


def _label_map_problems(label_map: dict[str, Any]) -> list[str]:
    current = current_label_map()
    if not label_map:
        return ["label_map is empty; SystemManifest.create fills it from llmser.schema"]
    differing = [key for key in current if label_map.get(key) != current[key]]
    if differing:
        return [f"label_map differs from this llmser's schema in {differing} (system: "
                f"{ {k: label_map.get(k) for k in differing} }, llmser: { {k: current[k] for k in differing} }); "
                "the class indices would mean different things, so use the llmser version that trained it"]
    return []


def _ensemble_problems(ensemble: dict[str, Any], names: set[str]) -> list[str]:
    """Member names the ensemble spec refers to (``members`` list, ``weights`` mapping) must exist."""
    referenced = list(ensemble.get("members", []) or []) + list((ensemble.get("weights") or {}).keys())
    unknown = sorted({str(n) for n in referenced if n not in names})
    if unknown:
        return [f"ensemble refers to unknown members {unknown}; members are {sorted(names)}"]
    return []


def _adapter_problems(member: Member, sub: Path, where: str) -> list[str]:
    adapters = sorted(sub.rglob("adapter_config.json"))
    if not adapters:
        return [f"{where}: {sub} holds no PEFT adapter (adapter_config.json); save the LLM with "
                "PeftModel.save_pretrained"]
    from llmser.models.llm.identity import check_adapter_base
    from llmser.utils.hub import HubError

    issues = []
    expected = member.base_models["llm"].id if "llm" in member.base_models else None
    for config in adapters:
        if expected is None:
            break
        try:
            check_adapter_base(config.parent, expected)
        except HubError as exc:
            issues.append(f"{where}: {exc}")
    return issues


def _recorded_adapter_base(config: Path) -> str | None:
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _is_relative_subfolder(subfolder: str) -> bool:
    path = PurePosixPath(subfolder.replace("\\", "/"))
    return bool(subfolder.strip()) and not path.is_absolute() and ".." not in path.parts


def _looks_local(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~")) or "\\" in model_id or model_id.count("/") > 1


__all__ = ["BaseModelRef", "Member", "SystemManifest", "ManifestError", "MANIFEST_NAME", "MEMBER_KINDS",
           "current_label_map", "current_versions"]
