"""Where a model lives: a Hub id or a local folder, resolved to a local folder (offline from the cache too).

Everything that loads (``from_pretrained`` of every branch, the predictor, the LLM loaders) calls
:func:`resolve_pretrained`: a folder is used as it is; a Hub id is fetched with
``huggingface_hub.snapshot_download`` (pickle files are never downloaded), or found in the Hugging
Face cache when offline (``HF_HUB_OFFLINE=1``). Publishing (push, pull, model cards) is ``llmser.hub``'s
job; this module only finds files, so models use it without importing the Hub layer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from llmser.utils.logging import get_logger
from llmser.utils.weights import PICKLE_PATTERNS, check_safe_folder

logger = get_logger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class HubError(ValueError):
    """A Hub id, folder or transfer llmser cannot use; the message says what to do."""


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
    folder = snapshot(text, revision, allow_patterns, cache_dir, local_files_only, token)
    return check_safe_folder(folder) if check_safe else folder


def snapshot(repo_id: str, revision: str | None, allow_patterns: list[str] | str | None,
              cache_dir: str | Path | None, local_files_only: bool | None, token: str | bool | None,
              local_dir: str | Path | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    check_repo_id(repo_id)
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


def unknown_model_name(value: str, presets: Iterable[str]) -> str | None:
    """Why ``value`` cannot name a model, or None when it can (a preset, a folder, an ``org/name`` id).

    A bare word that is neither a preset nor a folder is a typo far more often than a legacy Hub id, and
    asking the Hub about it retries for a minute before an OSError; so it is refused here, with the
    closest preset.
    """
    import difflib

    presets = list(presets)
    text = str(value).strip()
    if text in presets or "/" in text or _looks_like_path(text) or Path(text).expanduser().is_dir():
        return None
    close = difflib.get_close_matches(text.lower(), presets, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"{text!r} is not a preset ({', '.join(presets)}), nor a local folder, nor a Hub id (org/name); "
            f"{hint}llmser does not ask the Hub about a bare name")


def check_model_name(value: str, presets: Iterable[str], what: str) -> str:
    """Raise :class:`HubError` (``what``: the option, e.g. ``--asr``) for a name :func:`unknown_model_name` refuses."""
    problem = unknown_model_name(value, presets)
    if problem:
        raise HubError(f"{what}: {problem}")
    return value


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1 or os.sep + os.sep in text


def check_repo_id(repo_id: str) -> None:
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise HubError(f"{repo_id!r} is not a valid Hub repo id; use org/name (letters, digits, '-', '_', '.')")
