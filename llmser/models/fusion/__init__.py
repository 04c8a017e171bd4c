"""Fusion adapter: combines the branches' cached outputs (WavLM, text LLM, audio LLM) into one model.

Names are imported lazily (PEP 562) so that ``llmser --help`` does not import torch.
"""

from importlib import import_module

_EXPORTS = {
    "FusionBranchConfig": "config", "FusionEmotionModel": "model", "BranchOutputs": "data", "FusionDataset": "data",
    "collate_fusion": "data", "collect_branch_outputs": "data", "load_branch_outputs": "data",
    "save_branch_outputs": "data", "wavlm_sequence": "data",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
