"""LLaMA-family language models: loading presets, prompt templates, label scoring, the text branch."""
