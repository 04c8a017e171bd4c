"""Which base model is which: identities of LLM names, and the check that an adapter fits its base.

A PEFT adapter records the base it was trained on (``base_model_name_or_path``). Loading it onto
another base gives silently wrong outputs, so every adapter load checks it here. Names are compared
by identity (:func:`model_identities`): a preset and the Hub id it stands for, a local folder and the
Hub id it was copied from (``llmser_source.json``) all count as the same model.

A name is not the weights, though: llmser's ``smol`` copy of SmolLM2-135M-Instruct is dequantised from
a Q4_1 GGUF file, not the full-precision Hub weights. A base built from a converted file records where it
came from (``converted_from`` in its ``llmser_source.json``: file name, sha256, quantisation, converter),
every adapter llmser saves records the weights it was trained on (``llmser_base.json`` beside the standard
``adapter_config.json``), and loading it onto other weights of the same name warns, naming both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmser.models import presets
from llmser.utils.hub import HubError

#: Presets llmser knows by a short name, and the Hub id each stands for ("tiny" is random, built locally):
#: a view of the one table, ``llmser.models.presets``.
SMOL_HUB_ID = presets.from_name("smol", "llm").hub_id
LLM_PRESETS: dict[str, str] = presets.hub_ids("llm")
#: Written beside a local copy of a Hub model to say which Hub model (and revision) it is.
SOURCE_FILE = "llmser_source.json"
#: Written in an adapter folder by ``save_lora``: the identity of the weights it was trained on.
PROVENANCE_FILE = "llmser_base.json"
#: The fields of ``converted_from`` that make two converted bases the same weights.
_SAME_WEIGHTS_KEYS = ("sha256", "quantisation")


class AdapterBaseMismatchError(HubError):
    """A PEFT adapter whose recorded base model is not the one it is being loaded onto."""


def write_source_marker(folder: str | Path, hub_id: str, revision: str | None = None,
                        converted_from: dict[str, str] | None = None) -> Path:
    """Record that the local model ``folder`` is a copy of ``hub_id`` (see :func:`check_adapter_base`);
    ``converted_from`` (:func:`conversion_record`) says it was built from a quantised/converted file."""
    from llmser.utils.io import atomic_write_json

    path = Path(folder) / SOURCE_FILE
    record: dict = {"hub_id": hub_id, "revision": revision}
    if converted_from:
        record["converted_from"] = dict(converted_from)
    atomic_write_json(path, record)
    return path


def conversion_record(source_file: str | Path, quantisation: str, converter: str = "llmser gguf->transformers"
                      ) -> dict[str, str]:
    """What a converted base came from: the file's name and sha256, its quantisation, the converter and version."""
    import hashlib

    from llmser import __version__

    digest = hashlib.sha256()
    with open(source_file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"source_file": Path(source_file).name, "sha256": digest.hexdigest(), "quantisation": quantisation,
            "converter": f"{converter} {__version__}"}


def read_source_marker(folder: str | Path) -> dict:
    """The ``llmser_source.json`` of a local model folder ({} when it has none or it is unreadable)."""
    try:
        data = json.loads((Path(folder) / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------- which weights a loaded base has


def base_weights_identity(model: Any, base: str) -> dict:
    """The identity of the weights ``model`` (a loaded base, or a PEFT model on it) holds.

    ``{"base_model": Hub id, "weights": "original"}``, or ``"weights": "converted"`` with the
    ``converted_from`` record when the model was loaded from a folder built from a converted file.
    """
    source = str(getattr(getattr(model, "config", None), "name_or_path", "") or "")
    marker = read_source_marker(source) if source and Path(source).is_dir() else {}
    identity: dict = {"base_model": str(marker.get("hub_id") or canonical_name(base))}
    converted = marker.get("converted_from")
    if isinstance(converted, dict) and converted:
        identity.update(weights="converted", converted_from=dict(converted))
    else:
        identity["weights"] = "original"
    return identity


def describe_identity(identity: dict) -> str:
    """One phrase for an identity: "X (original weights)" or "X dequantised from the Q4_1 GGUF file F (sha256 ...)"."""
    name = identity.get("base_model", "?")
    converted = identity.get("converted_from") or {}
    if not converted:
        return f"{name} (original weights)"
    quant = str(converted.get("quantisation", "converted")).replace(" dequantised", "")
    return (f"{name} dequantised from the {quant} file {converted.get('source_file', '?')} "
            f"(sha256 {str(converted.get('sha256', '?'))[:12]}..., {converted.get('converter', '?')})")


def write_adapter_provenance(adapter_dir: str | Path, model: Any, base: str) -> Path:
    """Record in ``adapter_dir`` which weights the adapter was trained on (read back by :func:`adapter_provenance`)."""
    from llmser.utils.io import atomic_write_json

    path = Path(adapter_dir) / PROVENANCE_FILE
    atomic_write_json(path, base_weights_identity(model, base))
    return path


def adapter_provenance(adapter_dir: str | Path) -> dict | None:
    """The recorded identity of an adapter's base weights (None for adapters saved without one, e.g. by plain peft)."""
    path = Path(adapter_dir) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HubError(f"{path} is not readable JSON ({exc}); re-save the adapter or delete the file") from None
    return data if isinstance(data, dict) else None


def _weights_key(identity: dict) -> tuple:
    converted = identity.get("converted_from") or {}
    return tuple(converted.get(key) for key in _SAME_WEIGHTS_KEYS)


def provenance_mismatch(adapter_dir: str | Path, model: Any, base: str) -> str | None:
    """A warning, naming both identities and the fix, when the adapter was trained on other weights than
    ``model`` holds (same name, e.g. the full-precision model vs its Q4_1 GGUF dequantisation); else None."""
    recorded = adapter_provenance(adapter_dir)
    if recorded is None:
        return None
    actual = base_weights_identity(model, base)
    if _weights_key(recorded) == _weights_key(actual):
        return None
    fix = ("load it onto the weights it was trained on" + (
        " (llmser's converted copy: base=llmser.models.llm.loading.ensure_smol_from_gguf(), which HF_HUB_OFFLINE=1 "
        "without a cached Hub copy also gives the smol preset)" if recorded.get("base_model") == SMOL_HUB_ID else
        " (a folder whose llmser_source.json records the same converted_from)") + ", or retrain it on this base")
    return (f"the adapter in {adapter_dir} was trained on {describe_identity(recorded)}, but it is being loaded "
            f"onto {describe_identity(actual)}: its outputs will differ from the ones it was evaluated with; {fix}")


def warn_if_other_weights(adapter_dir: str | Path, model: Any, base: str) -> str | None:
    """Log :func:`provenance_mismatch`'s warning (if any) and return it."""
    message = provenance_mismatch(adapter_dir, model, base)
    if message:
        from llmser.utils.logging import get_logger

        get_logger(__name__).warning("%s", message)
    return message


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
    return presets.hub_id(name_or_path, "llm")


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
