"""Check an exported LoRA against the base model: every tensor must address an existing 2-D weight with fitting
shapes, in the naming the format promises (diffusers module names, or the family's original checkpoint names for
ComfyUI/kohya). The result is the ``lora_compat.json`` record; any unmatched key fails the export stage."""
from __future__ import annotations

import torch

from ..models.adapters import ADAPTER_KEY, _missing, check_shapes
from ..models.lora_names import LORA_KEY, PREFIXES, kohya_name
from .lora_formats import family_spec


def weight_shapes(model: torch.nn.Module) -> dict[str, tuple]:
    """``{module: (out, in)}`` of every Linear of ``model`` (works on the meta device)."""
    return {name: (m.out_features, m.in_features) for name, m in model.named_modules()
            if isinstance(getattr(m, "base_layer", m), torch.nn.Linear) and not name.endswith(".base_layer")}


def original_weight_shapes(model: torch.nn.Module, family) -> dict[str, tuple]:
    """``{module: (out, in)}`` of the 2-D weights in the family's original checkpoint layout, derived from the
    diffusers model (on meta: no weights read) with the family's state-dict converter."""
    spec = family_spec(family)
    state = {k: v for k, v in model.state_dict().items() if k.endswith(".weight")}
    if spec is not None and spec.original_state_dict:
        state = spec.original_state_dict(state)
    return {k[: -len(".weight")]: tuple(v.shape) for k, v in state.items() if v.dim() == 2}


def diffsynth_weight_shapes(model: torch.nn.Module, family) -> dict[str, tuple]:
    """``{module: (out, in)}`` of the 2-D weights of DiffSynth-Studio's own DiT for the family (the names its trainer
    saves), derived from the diffusers model like :func:`original_weight_shapes`."""
    spec = family_spec(family)
    state = {k: v for k, v in model.state_dict().items() if k.endswith(".weight")}
    if spec is not None and spec.diffsynth_state_dict:
        state = spec.diffsynth_state_dict(state)
    return {k[: -len(".weight")]: tuple(v.shape) for k, v in state.items() if v.dim() == 2}


def diffusers_weight_shapes(model: torch.nn.Module, family) -> dict[str, tuple]:
    """``{module: (out, in)}`` in diffusers' names where the family's loaded DiT has others (else the loaded ones)."""
    spec = family_spec(family)
    if spec is None or not spec.diffusers_state_dict:
        return weight_shapes(model)
    state = spec.diffusers_state_dict({k: v for k, v in model.state_dict().items() if k.endswith(".weight")})
    return {k[: -len(".weight")]: tuple(v.shape) for k, v in state.items() if v.dim() == 2}


def _target(key: str, fmt: str, kohya: dict[str, str]) -> tuple[str | None, str | None]:
    """(module, slot A/B/alpha) a key of ``fmt`` addresses; module None when the name has the wrong form."""
    if key.endswith(".alpha"):
        base, slot = key[: -len(".alpha")], "alpha"
    else:
        m = LORA_KEY.match(key)
        if not m:
            return None, None
        base, slot = m.group("module"), "A" if m.group("kind") in ("lora_A", "lora_down") else "B"
    if fmt == "kohya":
        return kohya.get(base), slot
    prefix = {"diffusers": "transformer.", "comfyui": "diffusion_model."}.get(fmt, "")
    if prefix and not base.startswith(prefix):
        return None, slot
    if not prefix and base.startswith(PREFIXES):
        return None, slot
    return base[len(prefix):], slot


def check_lora(state: dict, fmt: str, shapes: dict[str, tuple]) -> dict:
    """Match every tensor of ``state`` (format ``fmt``) to ``shapes`` (the base model's modules in that format's
    naming); returns counts and the unmatched keys with the reason."""
    kohya = {kohya_name(name): name for name in shapes}
    matched, unmatched = set(), {}
    for key, value in sorted(state.items()):
        module, slot = _target(key, fmt, kohya)
        if module is None or module not in shapes:
            unmatched[key] = "no such module in the base model"
            continue
        out_f, in_f = shapes[module]
        if slot == "A" and value.shape[-1] != in_f:
            unmatched[key] = f"A has {value.shape[-1]} inputs, the layer {in_f}"
        elif slot == "B" and value.shape[0] != out_f:
            unmatched[key] = f"B has {value.shape[0]} outputs, the layer {out_f}"
        else:
            matched.add(module)
    bad_modules = {(_target(k, fmt, kohya)[0] or k) for k in unmatched}
    return {"tensors": len(state), "matched_modules": len(matched - bad_modules),
            "unmatched_modules": len(bad_modules), "unmatched_keys": len(unmatched),
            "unmatched": dict(list(unmatched.items())[:50])}


def check_against_model(state: dict, model: torch.nn.Module, fmt: str = "diffusers", family=None) -> dict:
    shapes = (original_weight_shapes(model, family) if fmt in ("comfyui", "kohya") else
              diffsynth_weight_shapes(model, family) if fmt == "diffsynth" else weight_shapes(model))
    return check_lora(state, fmt, shapes)


def check_adapter(state: dict, fmt: str, shapes: dict[str, tuple], kind: str) -> dict:
    """:func:`check_lora` for a DoRA/LoHa/LoKr file: the tensors of each module are grouped, must all address one
    layer of ``shapes`` (in ``fmt``'s naming) and compose to an update of its shape."""
    kohya = {kohya_name(name): name for name in shapes}
    prefix = {"diffusers": "transformer.", "comfyui": "diffusion_model."}.get(fmt, "")
    groups: dict[str, dict] = {}
    unmatched = {}
    for key, value in sorted(state.items()):
        if key.endswith(".alpha"):
            base, slot = key[: -len(".alpha")], "alpha"
        elif (m := LORA_KEY.match(key)) and m.group("kind") in ("lora_down", "lora_up"):
            base, slot = m.group("module"), "lora_A" if m.group("kind") == "lora_down" else "lora_B"
        elif m := ADAPTER_KEY.match(key):
            base, slot = m.group("module"), m.group("slot")
        else:
            unmatched[key] = f"not a {kind} tensor name"
            continue
        module = kohya.get(base) if fmt == "kohya" else base[len(prefix):] if base.startswith(prefix) else None
        if module is None or module not in shapes:
            unmatched[key] = "no such module in the base model"
            continue
        groups.setdefault(module, {})[slot] = (key, value)
    for module, slots in groups.items():
        scale = slots.pop("dora_scale", None)
        slots.pop("alpha", None)
        if scale is not None:  # ComfyUI's DoRA magnitude
            if scale[1].shape[0] != shapes[module][0]:
                unmatched[scale[0]] = f"dora_scale has {scale[1].shape[0]} rows, the layer {shapes[module][0]}"
            slots.setdefault("lora_magnitude_vector", scale)
        why = check_shapes({module: {s: v for s, (_, v) in slots.items()}}, kind, shapes).get(module)
        if why is None and (missing := _missing(kind, slots)):
            why = f"lacks {missing}"
        if why:
            unmatched.update({k: why for k, _ in slots.values()})
    bad = {m for m, slots in groups.items() if any(k in unmatched for k, _ in slots.values())}
    return {"tensors": len(state), "matched_modules": len(set(groups) - bad), "unmatched_modules": len(bad),
            "unmatched_keys": len(unmatched), "unmatched": dict(list(unmatched.items())[:50])}
