"""Small helpers shared by every part of llmser: atomic file writes, logging."""
