"""The real architectures of every registered family, as data, and the schema of their entries.

Each family declares its entries in its own ``real_configs.py`` (registered with the family). An entry names the
diffusers/transformers class, its real config (as published next to the weights, or as the original code
hard-codes it when the weights ship without a config.json), its family and component, and where the weights
live. Tests build these on the meta device (no memory, no download) to check detection and key matching against
the full-size key lists; the memory plan builds them to count parameters.
"""
from __future__ import annotations

REAL_MODELS: dict[str, dict] = {}   # name -> {"cls", "family", "component", "files", "config"}
# Where each architecture's weights live, as data the memory plan matches model entries against: "repository:file"
# with a real file name (the first shard of a sharded set); the repository may be a glob, for files that every
# repository of a series ships. A model entry `model_id:pattern` is this architecture when its model id matches
# the repository and its pattern matches the file.
WEIGHT_FILES: dict[str, tuple[str, ...]] = {}


def register(real_models: dict, weight_files: dict) -> None:
    """Add a family's entries (called by the family registry)."""
    for name in real_models:
        if name in REAL_MODELS and REAL_MODELS[name] is not real_models[name]:
            raise ValueError(f"real architecture {name!r} registered twice")
    REAL_MODELS.update(real_models)
    WEIGHT_FILES.update(weight_files)


def t5_xxl(model_type: str, vocab_size: int) -> dict:
    """The XXL T5-style encoder config (T5 v1.1 and UMT5 share the sizes, not the vocabulary or type)."""
    return {"model_type": model_type, "vocab_size": vocab_size, "d_model": 4096, "d_kv": 64, "d_ff": 10240,
            "num_layers": 24, "num_heads": 64, "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
            "is_gated_act": True, "dense_act_fn": "gelu_new", "tie_word_embeddings": False}


def build_class(path: str):
    module, name = path.rsplit(".", 1)
    import importlib
    return getattr(importlib.import_module(module), name)


def build_real(entry: dict):
    """An entry's module from its config (call under ``init_empty_weights`` for the meta device): a diffusers
    model (``from_config``), a transformers model (its config class) or a plain module (keyword arguments)."""
    cls = build_class(entry["cls"])
    if hasattr(cls, "from_config"):
        return cls.from_config(entry["config"])
    if hasattr(cls, "config_class"):
        return cls(cls.config_class(**entry["config"]))
    return cls(**entry["config"])
