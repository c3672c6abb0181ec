"""The Wan family (DiffSynth's examples/wanvideo): Wan2.1 / Wan2.2 text-, image- and text-image-to-video.

Files: ``pipeline.py`` (the family class), ``convert.py`` (Wan-AI's original names), ``checkpoints.py`` (checkpoint
kinds), ``real_configs.py`` (real architectures), ``tiny.py`` (tiny twins).
"""
from ..registry import register
from .pipeline import Wan
from .vace import WanVace

register(Wan)
register(WanVace)

__all__ = ["Wan", "WanVace"]
