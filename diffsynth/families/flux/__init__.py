"""The FLUX.1 family (DiffSynth's examples/flux): FLUX.1-dev, Krea-dev, and the Kontext variant.

Files: ``pipeline.py`` (the family class), ``kontext.py`` (the Kontext variant), ``convert.py`` (BFL, DiffSynth and
kohya names), ``checkpoints.py`` (checkpoint kinds), ``real_configs.py`` (real architectures), ``tiny.py`` (tiny twins).
"""
from ..registry import register
from .kontext import FluxKontext
from .pipeline import Flux

register(Flux)
register(FluxKontext)

__all__ = ["Flux", "FluxKontext"]
