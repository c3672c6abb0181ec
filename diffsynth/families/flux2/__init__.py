"""The FLUX.2 family (DiffSynth's examples/flux2): FLUX.2-dev and FLUX.2-klein 4B/9B, klein-base 4B/9B.

Files: ``pipeline.py`` (the family class), ``checkpoints.py`` (checkpoint kinds), ``convert.py`` (ComfyUI's names),
``real_configs.py`` (real architectures), ``tiny.py`` (tiny twins), ``blocks.py`` (memory plan).
"""
from ..registry import register
from .pipeline import Flux2

register(Flux2)

__all__ = ["Flux2"]
