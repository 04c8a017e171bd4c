"""What differs between the transformers releases ``pyproject.toml`` admits, decided once per process.

transformers 5.24 renamed the key/value cache argument of the models' ``forward`` (and of
``create_causal_mask``) from ``past_key_values`` to ``cache``. Earlier 5.x releases take extra keyword
arguments silently, so passing ``cache=`` there does not fail: the cache is dropped and every score after a
cached prefix is wrong. ``scripts/test_floors.sh`` runs the scoring tests on the oldest release allowed.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.cache
def cache_argument() -> str:
    """The name the installed transformers gives the key/value cache in a decoder's ``forward``."""
    from transformers.models.llama.modeling_llama import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


@functools.cache
def mask_cache_argument() -> str:
    """The same for ``transformers.masking_utils.create_causal_mask``."""
    from transformers.masking_utils import create_causal_mask

    return "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for a model / decoder / decoder layer call, under the installed release's name."""
    return {cache_argument(): cache}


def mask_cache_kwargs(cache: Any) -> dict[str, Any]:
    return {mask_cache_argument(): cache}
