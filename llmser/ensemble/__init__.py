"""Ensembles of trained systems: plurality vote, averaging and RandomForest stacking, chosen by a YAML spec.

Names are imported lazily (PEP 562) so that ``llmser --help`` stays light.
"""

from importlib import import_module

_EXPORTS = {
    "EnsembleRun": "methods", "StackingEnsemble": "methods", "align_members": "methods", "average": "methods",
    "plurality_vote": "methods", "run_ensemble": "methods", "EnsembleSpec": "spec", "MemberSpec": "spec",
    "StackingSpec": "spec", "load_member_predictions": "spec",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
