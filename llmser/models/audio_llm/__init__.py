"""The audio-LLM branch (SALMONN-style): Whisper frames -> window-level Q-Former -> speech tokens in an LLM prompt."""
