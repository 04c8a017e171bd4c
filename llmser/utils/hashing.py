"""Exact digests of module weights, for cache keys."""

from __future__ import annotations

import hashlib

import torch


def hash_weights(digest: hashlib._Hash, module: torch.nn.Module, prefix: str = "") -> None:
    """Feed every tensor of ``module``'s state dict (name, shape, dtype, bytes) into ``digest``.

    Bytes, not a float sum: a sum's rounding depends on the reduction order, which changes with torch's thread
    count, so one model got two cache keys under OMP_NUM_THREADS=1 and 2 and its features were computed twice.
    Hashing 1.2 GB of weights (a 300 M-parameter encoder) takes about a second, once per run."""
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(f"{prefix}{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(flat.view(torch.uint8).numpy())
