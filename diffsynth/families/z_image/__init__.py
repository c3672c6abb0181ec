"""The Z-Image family (DiffSynth's examples/z_image): Z-Image, Z-Image-Turbo and Z-Image-Omni-Base.

Files: ``pipeline.py`` (the family class), ``checkpoints.py`` (checkpoint kinds), ``convert.py`` (original /
ComfyUI names, LoRA names), ``real_configs.py`` (real architectures), ``tiny.py`` (tiny twins), ``blocks.py``
(the memory plan's block inputs), ``controlnet.py`` (the Z-Image-Turbo Fun-ControlNet variant).
"""
from ..registry import register
from .controlnet import ZImageControlNet
from .pipeline import ZImage

register(ZImage)
register(ZImageControlNet)

__all__ = ["ZImage", "ZImageControlNet"]
