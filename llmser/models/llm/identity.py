"""Which base model is which: identities of LLM names, and the check that an adapter fits its base.

A PEFT adapter records the base it was trained on (``base_model_name_or_path``). Loading it onto
another base gives silently wrong outputs, so every adapter load checks it here. Names are compared
by identity (:func:`model_identities`): a preset and the Hub id it stands for, a local folder and the
Hub id it was copied from (``llmser_source.json``) all count as the same model.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmser.utils.hub import HubError

#: Presets llmser knows by a short name, and the Hub id each stands for ("tiny" is random, built locally).
SMOL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
LLM_PRESETS: dict[str, str] = {
    "llama3-8b": "meta-llama/Meta-Llama-3-8B-Instruct",
    "smol": SMOL_HUB_ID,
    "tiny": "tiny",
}
#: Written beside a local copy of a Hub model to say which Hub model (and revision) it is.
SOURCE_FILE = "llmser_source.json"


class AdapterBaseMismatchError(HubError):
    """A PEFT adapter whose recorded base model is not the one it is being loaded onto."""


def write_source_marker(folder: str | Path, hub_id: str, revision: str | None = None) -> Path:
    """Record that the local model ``folder`` is a copy of ``hub_id`` (see :func:`check_adapter_base`)."""
    from llmser.utils.io import atomic_write_json

    path = Path(folder) / SOURCE_FILE
    atomic_write_json(path, {"hub_id": hub_id, "revision": revision})
    return path


def model_identities(name_or_path: str) -> set[str]:
    """Every name ``name_or_path`` is known by, for comparing base models.

    The name itself (normalised); the Hub id an llmser preset stands for; and for a local folder its
    resolved path plus the Hub id it was copied from, read from ``llmser_source.json`` (``hub_id``)
    or, for models saved by older transformers, the ``_name_or_path`` in its ``config.json``.
    """
    name = str(name_or_path).strip().rstrip("/")
    names = {name}
    names.add(canonical_name(name))
    folder = Path(name).expanduser()
    if folder.is_dir():
        names.add(str(folder.resolve()))
        names |= _recorded_sources(folder)
    return {n for n in names if n}


def _recorded_sources(folder: Path) -> set[str]:
    found = set()
    for file, key in ((SOURCE_FILE, "hub_id"), ("config.json", "_name_or_path")):
        try:
            value = json.loads((folder / file).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, str) and value.strip() and not Path(value).is_absolute():
            found.add(value.strip().rstrip("/"))
    return found


def canonical_name(name_or_path: str) -> str:
    """The Hub id a preset stands for (what adapters record as their base model)."""
    return LLM_PRESETS.get(name_or_path, name_or_path)


def adapter_base(adapter_dir: str | Path) -> str | None:
    """The ``base_model_name_or_path`` an adapter folder records (None if it records none)."""
    config = Path(adapter_dir) / "adapter_config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config} does not exist; is {adapter_dir} a PEFT adapter folder?")
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except json.JSONDecodeError as exc:
        raise HubError(f"{config} is not valid JSON ({exc}); re-save the adapter") from None


def check_adapter_base(adapter_dir: str | Path, expected_base: str) -> None:
    """Raise :class:`AdapterBaseMismatchError`, naming both, unless the adapter was trained on ``expected_base``.

    Two names match when they share an identity (:func:`model_identities`): the same Hub id or
    preset, the same folder, or a local folder and the Hub id it records as its source.
    """
    recorded = adapter_base(adapter_dir)
    if not recorded:
        raise AdapterBaseMismatchError(
            f"{Path(adapter_dir) / 'adapter_config.json'} does not name its base model "
            "(base_model_name_or_path is empty), so it cannot be checked against "
            f"{expected_base!r}; set it to the Hub id the adapter was trained on")
    if model_identities(recorded) & model_identities(expected_base):
        return
    raise AdapterBaseMismatchError(
        f"the adapter in {adapter_dir} was trained on {recorded!r}, but it is being loaded onto {expected_base!r}; "
        f"load it onto {recorded!r} (a local copy of it needs an {SOURCE_FILE} naming it: "
        "llmser.models.llm.identity.write_source_marker)")
