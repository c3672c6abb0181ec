"""Model families. Each family module provides, and training uses only:

- ``FAMILY`` (name), ``HEIGHT_FACTOR`` / ``WIDTH_FACTOR`` (image sides are floored to these multiples),
  ``TIME_DIVISION_FACTOR`` / ``TIME_DIVISION_REMAINDER`` (video frame counts, 4k+1), ``VIDEO_KEYS``
  (dataset columns loaded as videos);
- ``load_pipeline(config, dtype, device) -> Pipeline``: fetch, detect and load the family's models as
  ``config.model`` says (model flags, tokenizer/processor paths, extra_inputs);
- ``auxiliary_entries(config) -> {name: path or model_id:folder/}``: the tokenizer/processor folders it loads,
  so the models stage fetches and pins them before training (which never downloads).
"""
from __future__ import annotations

import importlib

from .base import Pipeline, load_components

# family name (and aliases) -> module
_FAMILIES = {
    "qwen_image": "qwen_image", "qwen": "qwen_image",
    "qwen_image_edit": "qwen_image_edit",
    "flux": "flux", "flux1": "flux",
    "wan": "wan", "wanvideo": "wan",
}


def get_family(name: str):
    key = name.lower().replace("-", "_").replace(".", "")
    if key not in _FAMILIES:
        raise ValueError(f"Unknown model family {name!r}; supported: {sorted(set(_FAMILIES.values()))}")
    try:
        return importlib.import_module(f".{_FAMILIES[key]}", __name__)
    except ModuleNotFoundError as e:
        if e.name and e.name.endswith(_FAMILIES[key]):
            raise ValueError(f"Model family {name!r} is not implemented yet") from None
        raise


def data_rules(name: str, config=None) -> dict:
    """The family's dataset rules as keyword arguments of ``diffsynth.data.validate.check_dataset``.

    With ``config``, a family whose size multiple depends on the model (Wan2.2's VAE: 32, not 16) overrides
    the module constants through its optional ``data_factors(config) -> {"size_factor", "width_factor"}``."""
    family = get_family(name)
    rules = {"size_factor": family.HEIGHT_FACTOR, "width_factor": family.WIDTH_FACTOR,
             "time_division_factor": family.TIME_DIVISION_FACTOR,
             "time_division_remainder": family.TIME_DIVISION_REMAINDER, "video_keys": family.VIDEO_KEYS,
             # extra inputs the family computes from other columns (Wan: input_image = first video frame)
             "derived_inputs": getattr(family, "DERIVED_INPUTS", ())}
    if config is not None and hasattr(family, "data_factors"):
        rules.update(family.data_factors(config))
    return rules


__all__ = ["Pipeline", "get_family", "load_components", "data_rules"]
