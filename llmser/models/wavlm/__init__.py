"""The speech-SSL branch: WavLM (or HuBERT / wav2vec 2.0) with layer weighting, attentive statistics
pooling and emotion heads."""

from llmser.models.wavlm.config import WavLMBranchConfig
from llmser.models.wavlm.model import EmotionOutput, WavLMEmotionModel

__all__ = ["WavLMBranchConfig", "WavLMEmotionModel", "EmotionOutput"]
