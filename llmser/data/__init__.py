"""Data: the MSP-Podcast reader, audio loading, the synthetic demo corpus and augmentation."""
