"""llmser: LLM-centric speech emotion recognition in naturalistic conditions.

Branches (WavLM, text LLM, SALMONN-style audio-LLM), a fusion adapter and ensembles for the
MSP-Podcast challenge tasks: eight emotion classes (macro-F1) and arousal/valence/dominance (CCC).
Heavy libraries (torch, transformers) are imported lazily so ``llmser --help`` is instant.
"""

__version__ = "0.1.0"
