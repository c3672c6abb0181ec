"""The Wan family (DiffSynth's examples/wanvideo): Wan2.1 / Wan2.2 text-, image- and text-image-to-video.

Files: ``pipeline.py`` (the family class), ``fun.py`` (first-last frame and Wan-Fun variants), ``speed.py`` (speed
control), ``vace.py`` / ``vace_model.py`` (VACE), ``animate.py`` / ``animate_model.py`` (Wan2.2-Animate), ``animate2.py`` / ``animate2_model.py`` (Wan2.2-Animate-2),
``refusals.py`` (inputs refused by name), ``fun_dit.py`` (the Wan-Fun DiT additions), ``camera.py`` (camera
embeddings), ``convert.py`` (Wan-AI's original names), ``checkpoints.py`` (checkpoint kinds), ``real_configs.py``
(real architectures), ``tiny.py`` (tiny twins).
"""
from ..registry import register
from .animate import WanAnimate
from .animate2 import WanAnimate2
from .fun import WanFirstLastFrame, WanFunCamera, WanFunControl
from .pipeline import Wan
from .speed import WanSpeedControl
from .vace import WanVace

register(Wan)
register(WanFirstLastFrame)
register(WanFunControl)
register(WanFunCamera)
register(WanSpeedControl)
register(WanVace)
register(WanAnimate)
register(WanAnimate2)

__all__ = ["Wan", "WanFirstLastFrame", "WanFunControl", "WanFunCamera", "WanSpeedControl", "WanVace",
           "WanAnimate", "WanAnimate2"]
