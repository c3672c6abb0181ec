"""Model configuration, fetching, detection, loading and tiny presets (reference spec §3)."""
