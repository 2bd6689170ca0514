"""Corpora, grain pipelines and host->device batches. Knows nothing of models."""
