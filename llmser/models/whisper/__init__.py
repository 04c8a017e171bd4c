"""Whisper: the speech encoder of the audio-LLM branch and the transcriber for audio without transcripts."""
