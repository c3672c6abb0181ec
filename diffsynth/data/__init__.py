"""Datasets in DiffSynth's format: a folder plus metadata.csv/.json/.jsonl (reference spec §2)."""
