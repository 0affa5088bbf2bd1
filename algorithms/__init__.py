"""Inference-time algorithms, one file per family (selection, search, speculative decoding, ...)."""
