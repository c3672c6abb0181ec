"""The Qwen-Image family (DiffSynth's examples/qwen_image): Qwen-Image and its Edit variant (-Edit, -2509, -2511).

Files: ``pipeline.py`` (the family class), ``edit.py`` (the Edit variant), ``checkpoints.py`` (checkpoint kinds and
key names), ``real_configs.py`` (real architectures), ``tiny.py`` (tiny twins).
"""
from ..registry import register
from .edit import QwenImageEdit
from .pipeline import QwenImage

register(QwenImage)
register(QwenImageEdit)

__all__ = ["QwenImage", "QwenImageEdit"]
