"""The export side of LoRA formats: family lookup for the export API, its error type, and the diffusers helper.
The formats themselves (writers and readers) are in ``models/lora_names.py``, which training uses too."""
from __future__ import annotations

from ..models import lora_names
from ..models.lora_names import FORMATS, LoraFormatError, Modules, lora_modules

ExportError = LoraFormatError  # an export that cannot be written correctly; the message names the key and the fix

__all__ = ["FORMATS", "ExportError", "family_spec", "from_original_names", "loaded_names_without_model",
           "to_diffsynth_checkpoint", "to_diffusers", "to_original_names", "write_format"]


def family_spec(family):
    """A family class, given one or a family name (the export API takes either); None stays None (the formats in
    the loaded modules' names need no family)."""
    from ..families import get_spec
    return family if family is None or isinstance(family, type) else get_spec(family)


def to_diffusers(state: dict, prefix: str = "transformer") -> dict:
    """DiffSynth-native (or any LoRA naming on the loaded modules) -> diffusers/PEFT names, scale folded."""
    return {k: v for n, (a, b) in lora_modules(state).items()
            for k, v in ((f"{prefix}.{n}.lora_A.weight", a), (f"{prefix}.{n}.lora_B.weight", b))}


def write_format(modules: Modules, fmt: str, family, shapes: dict[str, tuple] | None = None) -> dict:
    """``lora_names.write_format`` for a family given by name or spec."""
    return lora_names.write_format(modules, fmt, family_spec(family), shapes)


def to_original_names(modules: Modules, family, shapes: dict[str, tuple] | None = None) -> Modules:
    """``lora_names.to_original_names`` for a family given by name or spec."""
    return lora_names.to_original_names(modules, family_spec(family), shapes)


def from_original_names(modules: Modules, family, model) -> Modules:
    """``lora_names.from_original_names`` for a family given by name or spec."""
    return lora_names.from_original_names(modules, model, lora_names.layouts_of(family_spec(family)))


def to_diffsynth_checkpoint(state: dict, family, prefix: str = "", alpha: float | None = None) -> dict:
    """``lora_names.to_diffsynth_checkpoint`` for a family given by name or spec."""
    return lora_names.to_diffsynth_checkpoint(state, family_spec(family), prefix, alpha)


def loaded_names_without_model(modules: Modules, family) -> Modules:
    """Back to the loaded (diffusers) names where no base model is at hand (``diffsynth export``): the family's
    pure rename where it has one (Wan); FLUX's fused layers can only be split against the model."""
    spec = family_spec(family)
    return spec.lora_names_without_model(modules) if spec is not None and spec.lora_names_without_model \
        else dict(modules)
