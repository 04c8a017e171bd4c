"""Inference: prior baselines, constrained label scoring, prompt voting and the Predictor."""
