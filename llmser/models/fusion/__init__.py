"""Fusion adapter: combines the branches' cached outputs (WavLM, text LLM, audio LLM) into one model.

The outputs' store is :mod:`llmser.data.branch_outputs`; the collectors are in :mod:`llmser.inference.collect`.

Names are imported lazily (PEP 562) so that ``llmser --help`` does not import torch.
"""

from importlib import import_module

_EXPORTS = {"FusionBranchConfig": "config", "FusionEmotionModel": "model", "FusionDataset": "data",
            "collate_fusion": "data"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
