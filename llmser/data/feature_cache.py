"""On-disk cache of a frozen encoder's outputs, so later epochs and other heads skip the encoder.

One safetensors file per (audio file, encoder, preprocessing). The key hashes:

- the audio file's resolved path, size and modification time (edit the audio: new key),
- the encoder fingerprint: its class, config and a checksum of its weights (swap or retrain the
  encoder: new key),
- the preprocessing settings (sample rate, max duration, dtype: new key).

So the cache never serves stale features; old entries are just unused files that ``clear()`` or
deleting the folder removes. Writes are atomic, so concurrent processes can share one cache folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from llmser.utils.hashing import hash_weights
from llmser.utils.weights import save_safetensors


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """Stable id of an encoder's architecture and weights: every tensor's bytes are hashed.

    Exact bytes, not a float sum: a sum's rounding depends on the reduction order, which changes with the
    thread count, so the same weights got another key under OMP_NUM_THREADS=1 than under 2 and the corpus was
    encoded again (``llmser.utils.hashing.hash_weights``)."""
    digest = hashlib.sha256()
    digest.update(type(encoder).__name__.encode())
    config = getattr(encoder, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        digest.update(config.to_json_string(use_diff=False).encode())
    hash_weights(digest, encoder)
    return digest.hexdigest()[:16]


def audio_key(path: str | Path) -> str:
    path = Path(path).resolve()
    stat = path.stat()
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


class FeatureCache:
    """Maps (audio file, encoder, preprocessing) -> cached tensors."""

    def __init__(self, directory: str | Path, encoder_id: str, preprocessing: dict[str, Any]):
        self.directory = Path(directory)
        self.encoder_id = encoder_id
        self.preprocessing = json.dumps(preprocessing, sort_keys=True)
        self.hits = 0
        self.misses = 0

    def path_for(self, audio_path: str | Path) -> Path:
        digest = hashlib.sha256(f"{audio_key(audio_path)}|{self.encoder_id}|{self.preprocessing}".encode())
        name = digest.hexdigest()
        return self.directory / self.encoder_id / name[:2] / f"{name}.safetensors"

    def get(self, audio_path: str | Path) -> dict[str, torch.Tensor] | None:
        path = self.path_for(audio_path)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            tensors = load_file(str(path))
        except Exception:  # noqa: BLE001 - a damaged entry is recomputed, never fatal
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return tensors

    def put(self, audio_path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
        path = self.path_for(audio_path)
        save_safetensors(tensors, path)  # atomic: concurrent writers of one entry each replace it whole

    def __contains__(self, audio_path: str | Path) -> bool:
        return self.path_for(audio_path).is_file()

    def clear(self) -> None:
        import shutil

        shutil.rmtree(self.directory / self.encoder_id, ignore_errors=True)
