"""Moving llmser systems to and from the Hugging Face Hub, safely.

- :func:`push` / :func:`pull` upload and download a whole system folder. The token comes from the
  usual places (``HF_TOKEN``, ``hf auth login``) or the ``token`` argument; it is passed to
  huggingface_hub and never logged or printed. Pickle weights are refused both ways
  (``llmser.utils.weights``).
- :func:`load_member` loads one member of a system (Hub id or folder) through the branch registry.
- Resolving ids to folders is ``llmser.utils.hub.resolve_pretrained``; adapter/base-model identity is
  ``llmser.models.llm.identity``.

Usage::

    url = push("runs/system", "org/llmser-msp-wavlm", private=True)
    folder = pull("org/llmser-msp-wavlm", revision="v1.0")
    model = load_member("org/llmser-msp-wavlm", "wavlm")
"""

from __future__ import annotations

from pathlib import Path

from llmser.hub.manifest import MANIFEST_NAME, SystemManifest
from llmser.utils.hub import HubError, check_repo_id, hub_offline, resolve_pretrained, snapshot
from llmser.utils.logging import get_logger
from llmser.utils.weights import check_no_outside_links, check_safe_folder

logger = get_logger(__name__)

#: Left out of uploads: half-written temporary files of llmser's atomic writes, local caches.
PUSH_IGNORE_PATTERNS: tuple[str, ...] = ("*.tmp", "*.partial", ".cache/*", "**/.cache/*", ".git/*")


def pull(repo_id: str, revision: str | None = None, local_dir: str | Path | None = None, *,
         cache_dir: str | Path | None = None, token: str | bool | None = None) -> Path:
    """Download a system (into the Hugging Face cache, or into ``local_dir``) and check it.

    Returns the local folder. A folder with ``llmser.json`` has its manifest validated, so a broken
    or incomplete system fails here rather than at prediction time.
    """
    check_repo_id(repo_id)
    folder = snapshot(repo_id, revision, None, cache_dir, None, token, local_dir=local_dir)
    check_safe_folder(folder)
    if (folder / MANIFEST_NAME).is_file():
        manifest = SystemManifest.load(folder)
        for name, (old, new) in manifest.version_differences().items():
            logger.info("%s was made with %s %s (installed: %s)", repo_id, name, old, new)
    logger.info("pulled %s%s into %s", repo_id, f"@{revision}" if revision else "", folder)
    return folder


def push(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
         commit_message: str = "Upload llmser system", revision: str | None = None,
         create_pr: bool = False) -> str:
    """Upload ``folder`` to the model repo ``repo_id`` (created if needed); returns the commit URL.

    Checked before anything is sent: the folder holds no pickle files, and its ``llmser.json`` (if
    any) is valid and names no local paths as base models.
    """
    folder = Path(folder)
    check_repo_id(repo_id)
    check_safe_folder(folder)
    check_no_outside_links(folder)  # the upload would send the files they point to
    _check_manifest_for_hub(folder)
    if not (folder / "README.md").is_file():
        logger.warning("%s has no README.md; the Hub page will have no model card (write one with "
                       "llmser.hub.card.write_card)", folder)
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        repo = api.create_repo(repo_id, token=token, private=private, exist_ok=True)
        logger.info("uploading %s to %s%s", folder, getattr(repo, "url", repo_id), " (private)" if private else "")
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                                   token=token, revision=revision, create_pr=create_pr,
                                   ignore_patterns=list(PUSH_IGNORE_PATTERNS))
    except Exception as exc:  # noqa: BLE001 - the HTTP stack's connection errors share no base class
        if not _unreachable(exc):
            raise
        if hub_offline():
            raise HubError(f"cannot push {folder} to {repo_id}: the Hub is off (HF_HUB_OFFLINE is set); unset "
                           "HF_HUB_OFFLINE on a machine with network access and push again") from None
        raise HubError(f"cannot push {folder} to {repo_id}: the Hub cannot be reached ({type(exc).__name__}: "
                       f"{exc}); check the network (or a proxy) and push again. Nothing was uploaded "
                       "unless the Hub page shows a commit.") from None
    url = str(getattr(commit, "commit_url", None) or getattr(commit, "pr_url", None) or commit)
    logger.info("pushed %s: %s", repo_id, url)
    return url


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a network failure rather than a refusal by the Hub."""
    while exc is not None:
        if isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__name__ in ("ConnectError", "ConnectTimeout",
                                                                                      "ReadTimeout", "NetworkError"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _check_manifest_for_hub(folder: Path) -> None:
    if (folder / MANIFEST_NAME).is_file():
        SystemManifest.load(folder).validate(folder, for_hub=True, source=str(folder / MANIFEST_NAME))
    else:
        logger.warning("%s has no %s; pushing it as a plain folder", folder, MANIFEST_NAME)


def load_member(id_or_path: str | Path, name: str, revision: str | None = None, **kwargs: object) -> object:
    """Load member ``name`` of a system given by Hub id or folder (offline from the cache if need be)."""
    from llmser.models.registry import BRANCHES

    folder = resolve_pretrained(id_or_path, revision)
    member = SystemManifest.load(folder).member(name)
    if member.kind not in BRANCHES:
        raise HubError(f"llmser cannot load {member.kind!r} members (member {name!r} of {id_or_path}); "
                       f"loadable kinds: {', '.join(BRANCHES)}")
    return BRANCHES[member.kind].model_cls.from_pretrained(folder / member.subfolder, **kwargs)


__all__ = ["PUSH_IGNORE_PATTERNS", "load_member", "pull", "push"]
