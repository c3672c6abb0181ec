"""The export side of LoRA formats: family lookup for the export API, its error type, and the diffusers helper.
The formats themselves (writers and readers) are in ``models/lora_names.py``, which training uses too."""
from __future__ import annotations

from ..models import lora_names
from ..models.lora_names import FORMATS, LoraFormatError, Modules, lora_modules

ExportError = LoraFormatError  # an export that cannot be written correctly; the message names the key and the fix

__all__ = ["FORMATS", "ExportError", "family_spec", "to_diffusers", "to_original_names", "write_format"]


def family_spec(family):
    """A FamilySpec, given one or a family name (the export API takes either); None stays None (the formats in
    the loaded modules' names need no family)."""
    from ..families.spec import FamilySpec, get_spec
    return family if family is None or isinstance(family, FamilySpec) else get_spec(family)


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
