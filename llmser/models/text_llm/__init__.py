"""The text branch: a LoRA/QLoRA-tuned LLM that reads the transcript through instruction prompts."""
