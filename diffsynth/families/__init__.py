"""Model families. Each module builds a family's pipeline; training talks to it only through `Pipeline`."""
from __future__ import annotations

from .base import Pipeline


def get_family(name: str):
    """The family module for ``name`` (``qwen_image``; more families come with their modules)."""
    key = name.lower().replace("-", "_")
    if key in ("qwen_image", "qwen"):
        from . import qwen_image
        return qwen_image
    raise ValueError(f"Unknown model family {name!r}; supported: qwen_image")


__all__ = ["Pipeline", "get_family"]
