"""DiffSynth-Studio's training framework as a library: data, models, families, training, tracking, export."""

__version__ = "0.1.0"
