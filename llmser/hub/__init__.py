"""Sharing trained llmser systems on the Hugging Face Hub: manifest, model card, push/pull, safe loading.

Light to import: huggingface_hub, torch and peft are imported only by the functions that need them.
"""

from llmser.hub.io import load_member, pull, push
from llmser.hub.manifest import MANIFEST_NAME, BaseModelRef, ManifestError, Member, SystemManifest
from llmser.models.llm.identity import AdapterBaseMismatchError, check_adapter_base, write_source_marker
from llmser.utils.hub import HubError, resolve_pretrained
from llmser.utils.weights import UnsafeFolderError, check_safe_folder

__all__ = [
    "MANIFEST_NAME",
    "AdapterBaseMismatchError",
    "BaseModelRef",
    "HubError",
    "ManifestError",
    "Member",
    "SystemManifest",
    "UnsafeFolderError",
    "check_adapter_base",
    "check_safe_folder",
    "load_member",
    "pull",
    "push",
    "resolve_pretrained",
    "write_source_marker",
]
