"""Model configuration, fetching, detection, loading and tiny presets (DiffSynth's
``diffsynth/core/loader/``)."""
