"""LoRA export formats and the check that every key lands on a module of the base model.

DiffSynth-native keys: ``<module>.lora_A.default.weight``. diffusers/PEFT keys: ``transformer.<module>.lora_A.weight``
(what ``load_lora_weights`` / ``load_lora_adapter(prefix="transformer")`` read).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .files import atomic_path

LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.default)?\.weight$")


class ExportError(ValueError):
    pass


def lora_module_names(state: dict) -> set[str]:
    """The module path each LoRA tensor of ``state`` targets (prefixes ``transformer.``/``diffusion_model.`` removed)."""
    names = set()
    for key in state:
        m = LORA_KEY.match(key)
        if not m:
            raise ExportError(f"{key!r} is not a LoRA tensor name (expected <module>.lora_A[.default].weight)")
        names.add(re.sub(r"^(transformer|diffusion_model)\.", "", m.group("module")))
    return names


def to_diffusers(state: dict[str, torch.Tensor], prefix: str = "transformer") -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        m = LORA_KEY.match(key)
        if not m:
            raise ExportError(f"{key!r} is not a LoRA tensor name")
        kind = {"lora_down": "lora_A", "lora_up": "lora_B"}.get(m.group("kind"), m.group("kind"))
        out[f"{prefix}.{m.group('module')}.{kind}.weight"] = value
    return out


def check_against_model(state: dict, model: torch.nn.Module) -> dict:
    """Which LoRA target modules exist (as Linear layers) in ``model``; shapes must fit too."""
    modules = dict(model.named_modules())
    matched, unmatched = [], []
    for name in sorted(lora_module_names(state)):
        module = modules.get(name)
        if isinstance(module, torch.nn.Linear):
            matched.append(name)
        else:
            unmatched.append(name)
    for key, value in state.items():
        m = LORA_KEY.match(key)
        name = re.sub(r"^(transformer|diffusion_model)\.", "", m.group("module"))
        module = modules.get(name)
        if isinstance(module, torch.nn.Linear):
            kind = m.group("kind")
            ok = (value.shape[1] == module.in_features) if kind in ("lora_A", "lora_down") else (value.shape[0] == module.out_features)
            if not ok and name not in unmatched:
                unmatched.append(name)
                matched.remove(name)
    return {"matched_modules": len(matched), "unmatched_modules": len(unmatched), "unmatched": unmatched,
            "tensors": len(state)}


def export_lora(checkpoint: str | Path, out_file: str | Path, fmt: str = "diffusers") -> dict[str, torch.Tensor]:
    state = load_file(str(checkpoint))
    if not state:
        raise ExportError(f"{checkpoint} holds no tensors")
    if fmt != "diffusers":
        raise ExportError(f"Unknown export format {fmt!r}; supported: diffusers")
    exported = to_diffusers(state)
    with atomic_path(out_file) as tmp:
        save_file({k: v.contiguous() for k, v in exported.items()}, str(tmp))
    return exported
