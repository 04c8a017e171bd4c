"""Model branches (wavlm, text_llm, audio_llm, fusion) and the layers they share."""
