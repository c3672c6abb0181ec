"""Export one training checkpoint in every requested format, checking each against the base model."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from ..files import atomic_path
from ..models.safetensors_io import read_tensors
from .check import (check_adapter, check_lora, diffsynth_weight_shapes, diffusers_weight_shapes,
                    original_weight_shapes, weight_shapes)
from .full import load_full_weights, merge_lora, save_model_folder
from ..models.adapters import adapter_modules, check_shapes, is_adapter_key, kind_of, merged_weight, write_adapter
from ..models.lora_names import FORMATS, from_original_names, layouts_of, lora_modules
from .lora_formats import ExportError, family_spec, loaded_names_without_model, write_format

# diffusers' own file name, so `pipe.load_lora_weights(out_dir)` finds it without weight_name=
FILE_NAMES = {"diffusers": "pytorch_lora_weights.safetensors", "diffsynth": "lora_diffsynth.safetensors",
              "comfyui": "lora_comfyui.safetensors", "kohya": "lora_kohya.safetensors"}
MODEL_FOLDER = "model"
# the names each export format promises, as {module: (out, in)} of the base model (checked key by key)
NAMINGS = {"original": original_weight_shapes, "diffsynth": diffsynth_weight_shapes,
           "diffusers": diffusers_weight_shapes}


@dataclass
class ExportResult:
    files: dict = field(default_factory=dict)    # format (or "model") -> written path
    compat: dict = field(default_factory=dict)   # the lora_compat.json record

    @property
    def ok(self) -> bool:
        return self.compat.get("unmatched_keys", 0) == 0


def base_model(configs: list, family, component: str, dtype: torch.dtype = torch.float32):
    """(the trained component on meta, a function loading it with its weights) among fetched model entries."""
    from ..models.components import detect, empty_component, load_component
    spec = family_spec(family)
    family, component = spec.model_family, spec.component_of(component)  # the entry holding the trained model
    meta = empty_component(configs, family, component)

    def load() -> torch.nn.Module:  # reads only the trained component, and only when an export needs weights
        entry = next(c for c in configs if detect(c.weight_files(), family).component == component)
        return load_component(entry, family, dtype)[1]
    return meta, load


def check_formats(formats: list[str]) -> list[str]:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"export.formats has {unknown}; choose among {list(FORMATS)}")
    return list(dict.fromkeys(formats))


def _save(state: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, formats: list[str], family,
                      base: torch.nn.Module, lora_alpha: float | None = None, merge: bool = False,
                      load_base: Callable[[], torch.nn.Module] | None = None,
                      max_shard_size: str = "5GB") -> ExportResult:
    """``base`` is the trained model's architecture (meta device is enough for the checks); ``load_base``
    returns it with real weights, needed only for a full fine-tune or ``merge``."""
    formats = check_formats(formats)
    spec = family_spec(family)
    out_dir = Path(out_dir)
    state = read_tensors(checkpoint, "the training checkpoint")
    if not state:
        raise ExportError(f"{checkpoint} holds no tensors")
    lora_state = {k: v for k, v in state.items() if is_adapter_key(k)}
    full_state = {k: v for k, v in state.items() if not is_adapter_key(k)}
    result = ExportResult(compat={"checkpoint": str(checkpoint), "family": spec.name, "formats": {}})
    shapes = {"native": weight_shapes(base)}
    kind = kind_of(lora_state)
    if lora_state and kind != "lora":
        modules = _export_adapter(result, lora_state, kind, formats, spec, base, load_base, out_dir, shapes)
    elif lora_state:
        # a checkpoint saved with align_to_opensource_format (kohya names) comes back to the trained names first
        # checkpoints in DiffSynth's DiT names or kohya names (align_to_opensource_format) come back to the loaded names
        modules = from_original_names(lora_modules(lora_state, lora_alpha), base, layouts_of(spec))
        native = check_lora(write_format(modules, "diffusers", None), "diffusers", shapes["native"])
        result.compat.update(matched_modules=native["matched_modules"], lora_rank=max(a.shape[0] for a, _ in modules.values()))
        for fmt in formats:
            naming = {"comfyui": "original", "kohya": "original", "diffsynth": "diffsynth",
                      "diffusers": "diffusers"}.get(fmt, "native")
            if naming not in shapes:
                shapes[naming] = NAMINGS[naming](base, spec)
            exported = write_format(modules, fmt, spec, shapes["native"])
            record = check_lora(exported, fmt, shapes[naming])
            path = out_dir / FILE_NAMES[fmt]
            _save(exported, path)
            result.files[fmt] = path
            result.compat["formats"][fmt] = {"file": str(path), **record}
    if full_state or merge:
        if load_base is None:
            raise ExportError("a full fine-tune or export.merge_lora needs the base model's weights (load_base)")
        model = load_base()
        record = {}
        if full_state:
            full_state = to_loaded_names(full_state, model, layouts_of(spec))
            record["full_tensors"] = load_full_weights(model, full_state, str(checkpoint))
        if merge and lora_state and kind != "lora":
            with torch.no_grad():
                for name, slots in modules.items():
                    layer = model.get_submodule(name)
                    layer.weight.data = merged_weight(kind, slots, layer.weight.data)
            record["merged_lora_modules"] = len(modules)
        elif merge and lora_state:
            record["merged_lora_modules"] = merge_lora(model, modules)
        folder = save_model_folder(model, out_dir / MODEL_FOLDER, max_shard_size)
        result.files["model"] = folder
        result.compat["model"] = {"folder": str(folder), **record}
    per_format = result.compat["formats"].values()
    result.compat["unmatched_modules"] = sum(r["unmatched_modules"] for r in per_format)
    result.compat["unmatched_keys"] = sum(r["unmatched_keys"] for r in per_format)
    result.compat.setdefault("matched_modules", 0)
    result.compat["tensors"] = len(state)
    return result


def _export_adapter(result: ExportResult, state: dict, kind: str, formats: list[str], spec, base: torch.nn.Module,
                    load_base, out_dir: Path, shapes: dict) -> dict:
    """The DoRA/LoHa/LoKr side of :func:`export_checkpoint` (checkpoints hold the loaded names, scale folded)."""
    modules = adapter_modules(state, kind)
    bad = check_shapes(modules, kind, shapes["native"])
    if bad:
        name, why = next(iter(bad.items()))
        raise ExportError(f"The {kind} checkpoint does not fit the base model: {name!r}: {why}")
    result.compat.update(adapter=kind, matched_modules=len(modules))
    weights = None
    if kind == "dora" and {"comfyui", "kohya"} & set(formats):
        if load_base is None:
            raise ExportError("A DoRA in comfyui/kohya names needs the base model's weights (load_base): ComfyUI "
                              "normalises by the base weight's norm; export diffusers without them")
        model = load_base()
        weights = {n: model.get_submodule(n).weight.detach() for n in modules}
    for fmt in formats:
        naming = {"comfyui": "original", "kohya": "original"}.get(fmt, "native")
        if naming not in shapes:
            shapes[naming] = original_weight_shapes(base, spec)
        exported = write_adapter(modules, kind, fmt, spec, shapes["native"], weights)
        record = check_adapter(exported, fmt, shapes[naming], kind)
        path = out_dir / FILE_NAMES[fmt]
        _save(exported, path)
        result.files[fmt] = path
        result.compat["formats"][fmt] = {"file": str(path), **record}
    return modules


def to_loaded_names(state: dict, model: torch.nn.Module, layouts) -> dict:
    """A full fine-tune's tensors in an original / DiffSynth layout (Wan VACE: ``vace_blocks.N.self_attn.q``) back
    to ``model``'s names, by the family's pure renames; tensors already in the loaded names pass unchanged."""
    own = model.state_dict()
    if all(k in own for k in state):
        return state
    names = {}
    for layout in layouts:
        try:
            names.update({str(orig): loaded for orig, loaded in layout({k: k for k in own}).items()
                          if isinstance(loaded, str)})
        except (TypeError, AttributeError, ValueError, RuntimeError):  # a converter that reshapes tensors
            continue
    return {names.get(k, k) if k not in own else k: v for k, v in state.items()}


def export_lora(checkpoint: str | Path, out_file: str | Path, fmt: str = "diffusers", family=None,
                lora_alpha: float | None = None, shapes: dict | None = None) -> dict[str, torch.Tensor]:
    """One LoRA file in ``fmt`` (no base-model check: ``diffsynth export`` without the model at hand)."""
    check_formats([fmt])
    state = read_tensors(checkpoint, "--checkpoint")
    if not state:
        raise ExportError(f"{checkpoint} holds no tensors")
    kind = kind_of(state)
    if kind != "lora":  # DoRA/LoHa/LoKr checkpoints are in the loaded names already, scale folded
        if fmt != "diffusers" and shapes is None:
            raise ExportError(f"A {kind} in {fmt} names needs the base model (its layer shapes, and a DoRA its "
                              "weights): run the export stage, or export --format diffusers")
        exported = write_adapter(adapter_modules(state, kind), kind, fmt, family_spec(family), shapes)
        _save(exported, Path(out_file))
        return exported
    modules = loaded_names_without_model(lora_modules(state, lora_alpha), family)
    exported = write_format(modules, fmt, family_spec(family), shapes)
    _save(exported, Path(out_file))
    return exported
