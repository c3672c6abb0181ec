"""Datasets in DiffSynth's format: a folder plus metadata.csv/.json/.jsonl (DiffSynth-Studio's
``diffsynth/core/data/``).

metadata (reading rows) -> loading / video (one file) -> resolution (sizing) -> operators (one cell) ->
dataset (UnifiedDataset); file_checks + validate check every row up front; sources / sample_dataset /
sample_video make a dataset available. Nothing here imports model code.
"""
