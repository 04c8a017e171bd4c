"""Moving llmser systems to and from the Hugging Face Hub, safely.

- :func:`resolve_pretrained` turns a Hub id or a local folder into a local folder: a folder is used
  as it is; a Hub id is fetched with ``huggingface_hub.snapshot_download`` (pickle files are never
  downloaded), or found in the Hugging Face cache when offline (``HF_HUB_OFFLINE=1``).
- :func:`push` / :func:`pull` upload and download a whole system folder. The token comes from the
  usual places (``HF_TOKEN``, ``hf auth login``) or the ``token`` argument; it is passed to
  huggingface_hub and never logged or printed.
- :func:`check_safe_folder` refuses pickle weights (they can run code when loaded): llmser reads
  safetensors only, and never passes ``trust_remote_code``.
- :func:`check_adapter_base` catches a PEFT adapter loaded onto a base model it was not trained on.

Usage::

    folder = resolve_pretrained("org/llmser-msp-wavlm")          # or a local folder
    url = push("runs/system", "org/llmser-msp-wavlm", private=True)
    folder = pull("org/llmser-msp-wavlm", revision="v1.0")
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from pathlib import Path

from llmser.utils.logging import get_logger

logger = get_logger(__name__)

#: Pickle-based weight files: loading one can execute arbitrary code, so llmser never reads them.
PICKLE_PATTERNS: tuple[str, ...] = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt")
#: Left out of uploads: half-written temporary files of llmser's atomic writes, local caches.
PUSH_IGNORE_PATTERNS: tuple[str, ...] = ("*.tmp", "*.partial", ".cache/*", "**/.cache/*", ".git/*")
#: Written beside a local copy of a Hub model to say which Hub model (and revision) it is.
SOURCE_FILE = "llmser_source.json"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class HubError(ValueError):
    """A Hub id, folder or transfer llmser cannot use; the message says what to do."""


class UnsafeFolderError(HubError):
    """A folder that holds pickle weight files."""


class AdapterBaseMismatchError(HubError):
    """A PEFT adapter whose recorded base model is not the one it is being loaded onto."""


# ---------------------------------------------------------------------------------- safety


def pickle_files(folder: str | Path) -> list[str]:
    """Relative paths of pickle weight files under ``folder`` (``.git`` and caches skipped)."""
    folder = Path(folder)
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not {".git", ".cache"} & set(rel.parts) and _is_pickle(rel.name):
            found.append(rel.as_posix())
    return found


def _is_pickle(name: str) -> bool:
    return any(fnmatch.fnmatch(name.lower(), pattern) for pattern in PICKLE_PATTERNS)


def check_safe_folder(folder: str | Path) -> Path:
    """Raise :class:`UnsafeFolderError` if ``folder`` holds pickle weights; returns the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    found = pickle_files(folder)
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise UnsafeFolderError(
            f"{folder} holds pickle weight files ({shown}); llmser loads and shares safetensors only, because "
            "unpickling can run arbitrary code. Re-save them with save_pretrained(..., safe_serialization=True) "
            "or safetensors.torch.save_file, then delete the pickle files")
    return folder


# ---------------------------------------------------------------------------------- resolving


def resolve_pretrained(id_or_path: str | Path, revision: str | None = None,
                       allow_patterns: list[str] | str | None = None, *, cache_dir: str | Path | None = None,
                       local_files_only: bool | None = None, token: str | bool | None = None,
                       check_safe: bool = True) -> Path:
    """A local folder for a Hub id or a folder path.

    A folder is returned as it is (``revision`` does not apply to it). A Hub id is downloaded into the
    Hugging Face cache (``cache_dir``, default ``$HF_HUB_CACHE``, read at call time), or, offline
    (``HF_HUB_OFFLINE=1`` or ``local_files_only=True``), found there. Pickle files are never
    downloaded, and with ``check_safe`` a folder holding any is refused.
    """
    text = str(id_or_path)
    local = Path(text).expanduser()
    if local.is_dir():
        if revision is not None:
            logger.info("%s is a local folder; revision %r does not apply to it", local, revision)
        return check_safe_folder(local) if check_safe else local
    if _looks_like_path(text):
        raise FileNotFoundError(f"{text} is not a folder, nor a Hub id (org/name); check the path")
    folder = _snapshot(text, revision, allow_patterns, cache_dir, local_files_only, token)
    return check_safe_folder(folder) if check_safe else folder


def pull(repo_id: str, revision: str | None = None, local_dir: str | Path | None = None, *,
         cache_dir: str | Path | None = None, token: str | bool | None = None) -> Path:
    """Download a system (into the Hugging Face cache, or into ``local_dir``) and check it.

    Returns the local folder. A folder with ``llmser.json`` has its manifest validated, so a broken
    or incomplete system fails here rather than at prediction time.
    """
    _check_repo_id(repo_id)
    folder = _snapshot(repo_id, revision, None, cache_dir, None, token, local_dir=local_dir)
    check_safe_folder(folder)
    from llmser.hub.manifest import MANIFEST_NAME, SystemManifest

    if (folder / MANIFEST_NAME).is_file():
        manifest = SystemManifest.load(folder)
        for name, (old, new) in manifest.version_differences().items():
            logger.info("%s was made with %s %s (installed: %s)", repo_id, name, old, new)
    logger.info("pulled %s%s into %s", repo_id, f"@{revision}" if revision else "", folder)
    return folder


def _snapshot(repo_id: str, revision: str | None, allow_patterns: list[str] | str | None,
              cache_dir: str | Path | None, local_files_only: bool | None, token: str | bool | None,
              local_dir: str | Path | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    _check_repo_id(repo_id)
    offline = hub_offline() if local_files_only is None else local_files_only
    cache = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=str(cache), allow_patterns=allow_patterns,
                                 ignore_patterns=list(PICKLE_PATTERNS), local_files_only=offline, token=token,
                                 local_dir=str(local_dir) if local_dir is not None else None)
    except LocalEntryNotFoundError:
        where = f"{local_dir}" if local_dir is not None else f"the Hugging Face cache ({cache})"
        hint = (f"download it once online (unset HF_HUB_OFFLINE; `llmser pull {repo_id}`), after which offline "
                "loads find it in the cache") if offline else "check your network and the repo id"
        raise HubError(f"{repo_id}{'@' + revision if revision else ''} is not in {where} and the Hub "
                       f"cannot be reached{' (offline mode)' if offline else ''}; {hint}") from None
    return Path(path)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE read now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read now from HF_HUB_CACHE / HF_HOME (as huggingface_hub resolves it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1 or os.sep + os.sep in text


def _check_repo_id(repo_id: str) -> None:
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise HubError(f"{repo_id!r} is not a valid Hub repo id; use org/name (letters, digits, '-', '_', '.')")


# ---------------------------------------------------------------------------------- pushing


def push(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
         commit_message: str = "Upload llmser system", revision: str | None = None,
         create_pr: bool = False) -> str:
    """Upload ``folder`` to the model repo ``repo_id`` (created if needed); returns the commit URL.

    Checked before anything is sent: the folder holds no pickle files, and its ``llmser.json`` (if
    any) is valid and names no local paths as base models.
    """
    folder = Path(folder)
    _check_repo_id(repo_id)
    check_safe_folder(folder)
    _check_manifest_for_hub(folder)
    if not (folder / "README.md").is_file():
        logger.warning("%s has no README.md; the Hub page will have no model card (write one with "
                       "llmser.hub.card.write_card)", folder)
    from huggingface_hub import HfApi

    api = HfApi()
    repo = api.create_repo(repo_id, token=token, private=private, exist_ok=True)
    logger.info("uploading %s to %s%s", folder, getattr(repo, "url", repo_id), " (private)" if private else "")
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                               token=token, revision=revision, create_pr=create_pr,
                               ignore_patterns=list(PUSH_IGNORE_PATTERNS))
    url = str(getattr(commit, "commit_url", None) or getattr(commit, "pr_url", None) or commit)
    logger.info("pushed %s: %s", repo_id, url)
    return url


def _check_manifest_for_hub(folder: Path) -> None:
    from llmser.hub.manifest import MANIFEST_NAME, SystemManifest

    if (folder / MANIFEST_NAME).is_file():
        SystemManifest.load(folder).validate(folder, for_hub=True, source=str(folder / MANIFEST_NAME))
    else:
        logger.warning("%s has no %s; pushing it as a plain folder", folder, MANIFEST_NAME)


# ---------------------------------------------------------------------------------- members

#: kind -> "module:Class" whose ``from_pretrained(folder)`` loads a member saved in its subfolder.
#: Each branch adds its entry here when it gains save_pretrained/from_pretrained.
MEMBER_LOADERS: dict[str, str] = {
    "wavlm": "llmser.models.wavlm:SSLEmotionModel",
    "text_llm": "llmser.models.text_llm.model:TextEmotionModel",
    "audio_llm": "llmser.models.audio_llm.model:AudioLLMModel",
    "fusion": "llmser.models.fusion.model:FusionModel",
}


def load_member(id_or_path: str | Path, name: str, revision: str | None = None, **kwargs: object) -> object:
    """Load member ``name`` of a system given by Hub id or folder (offline from the cache if need be)."""
    import importlib

    from llmser.hub.manifest import SystemManifest

    folder = resolve_pretrained(id_or_path, revision)
    member = SystemManifest.load(folder).member(name)
    target = MEMBER_LOADERS.get(member.kind)
    if target is None:
        raise HubError(f"llmser cannot load {member.kind!r} members yet (member {name!r} of {id_or_path}); "
                       f"loadable kinds: {', '.join(MEMBER_LOADERS)}")
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls).from_pretrained(folder / member.subfolder, **kwargs)


# ---------------------------------------------------------------------------------- adapters


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
    names.add(_preset_hub_id(name))
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


def _preset_hub_id(name: str) -> str:
    try:
        from llmser.models.llm.loading import canonical_name
    except ImportError:  # the LLM branch is optional for the hub layer
        return name
    return canonical_name(name)


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
        "llmser.hub.io.write_source_marker)")


__all__ = ["HubError", "UnsafeFolderError", "AdapterBaseMismatchError", "PICKLE_PATTERNS", "SOURCE_FILE",
           "resolve_pretrained", "load_member", "MEMBER_LOADERS", "pull", "push", "check_safe_folder", "pickle_files", "check_adapter_base",
           "adapter_base", "model_identities", "write_source_marker", "hub_cache_dir", "hub_offline"]
