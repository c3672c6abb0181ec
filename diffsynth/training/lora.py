"""LoRA with peft, in DiffSynth's conventions (``add_lora_to_model``): adapter name ``default``, alpha = rank unless
given, suffix-matched target lists, a single target treated as a regex full-match, ``""`` auto-detection."""
from __future__ import annotations

import torch
from peft import LoHaConfig, LoKrConfig, LoraConfig, inject_adapter_in_model

from ..models.adapters import FOLD, adapter_modules
from ..models.lora_names import from_original_names, layouts_of, lora_modules


def parse_target_modules(text: str | None, model: torch.nn.Module) -> list[str] | str:
    """DiffSynth semantics: comma list of suffixes; one entry -> a peft regex; empty -> auto-detect."""
    if text is None or text.strip() == "":
        return auto_detect_targets(model)
    targets = [t.strip() for t in text.split(",") if t.strip()]
    return targets[0] if len(targets) == 1 else targets


def auto_detect_targets(model: torch.nn.Module, min_features: int = 512) -> list[str]:
    """The first ModuleList with more than one child is the block list; every Linear in it with
    ``min(in, out) >= min_features`` is a target (full dotted names)."""
    def find_blocks(module, prefix=""):
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if isinstance(child, torch.nn.ModuleList) and len(child) > 1:
                return path, child
            found = find_blocks(child, path + ".")
            if found:
                return found
        return None

    found = find_blocks(model)
    if not found:
        raise ValueError("lora_target_modules is empty (auto-detect), but the model has no block list; "
                         "list the target module names instead")
    path, blocks = found
    names = [f"{path}.{n}" for n, m in blocks.named_modules()
             if isinstance(m, torch.nn.Linear) and min(m.in_features, m.out_features) >= min_features]
    if not names:
        raise ValueError(f"Auto-detected block list {path!r} has no Linear layer with both sides >= "
                         f"{min_features}; list lora_target_modules explicitly")
    return names


def adapter_config(kind: str, rank: int, alpha: float | None, targets, exclude: list[str] | None,
                   lokr_factor: int = -1):
    """The peft config of ``lora.adapter``: LoRA (DiffSynth's), DoRA (LoRA with ``use_dora``), LoHa or LoKr, each
    with ``rank`` and ``alpha`` (= rank unless given) and the same targets."""
    alpha = alpha if alpha is not None else rank
    common = dict(r=rank, target_modules=targets, exclude_modules=exclude or None)
    if kind in ("lora", "dora"):
        return LoraConfig(lora_alpha=alpha, use_dora=kind == "dora", **common)
    if kind == "loha":
        return LoHaConfig(alpha=alpha, **common)
    if kind == "lokr":
        return LoKrConfig(alpha=alpha, decompose_factor=lokr_factor, **common)
    raise ValueError(f"lora.adapter = {kind!r} is not one of lora, dora, loha, lokr")


def add_lora(model: torch.nn.Module, targets: list[str] | str, rank: int, alpha: float | None = None,
             dtype: torch.dtype | None = None, exclude: list[str] | None = None, adapter: str = "lora",
             lokr_factor: int = -1) -> torch.nn.Module:
    """Inject adapter ``default`` (``adapter``: lora, dora, loha or lokr); ``exclude`` lists full module names that
    must not get one."""
    config = adapter_config(adapter, rank, alpha, targets, exclude, lokr_factor)
    try:
        inject_adapter_in_model(config, model)
    except ValueError as e:
        raise ValueError(f"LoRA targets {targets!r} match no module of {type(model).__name__} ({e}). "
                         "Set lora.lora_target_modules to names of its Linear layers "
                         "(e.g. to_q,to_k,to_v for Qwen-Image), or to an empty string to auto-detect.") from None
    if dtype is not None:
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(dtype)
    return model


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """LoRA tensors of ``model`` with DiffSynth's key names (``...lora_A.default.weight``)."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def read_lora(state: dict[str, torch.Tensor], spec, model: torch.nn.Module) -> dict[str, tuple]:
    """``{module of model: (A, B)}`` with the file's scale folded into B, so the update is ``B @ A``.

    Reads every naming DiffSynth's loader reads (``.lora_A.default.``, PEFT/diffusers ``transformer.``, ComfyUI
    ``diffusion_model.``, ``lora_down/lora_up`` with ``.alpha``) plus the family's original and kohya names
    (ComfyUI/civitai FLUX and Wan LoRAs) and DiffSynth-Studio's own DiT names (its trainer's checkpoints, ours too),
    mapped onto the loaded modules through the spec's converters.
    """
    return from_original_names(lora_modules(state), model, layouts_of(spec))


def _linear(model: torch.nn.Module, name: str, source: str) -> torch.nn.Module:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"{source}: LoRA targets {name!r}, which {type(model).__name__} does not have") from None
    if not isinstance(getattr(module, "base_layer", module), torch.nn.Linear):
        raise ValueError(f"{source}: LoRA target {name!r} is a {type(module).__name__}, not a Linear layer")
    return module


@torch.no_grad()
def fuse_lora(model: torch.nn.Module, state: dict[str, torch.Tensor], spec, source: str = "preset LoRA",
              scale: float = 1.0) -> int:
    """Merge a LoRA file into the base weights, ``W += scale · B @ A`` (DiffSynth's differential training;
    the file's alpha/rank is in B). Returns the number of modules fused."""
    modules = read_lora(state, spec, model)
    for name, (a, b) in modules.items():
        linear = _linear(model, name, source)
        linear = getattr(linear, "base_layer", linear)
        if a.shape[1] != linear.in_features or b.shape[0] != linear.out_features:
            raise ValueError(f"{source}: LoRA for {name!r} has shapes A{tuple(a.shape)} B{tuple(b.shape)}, but the "
                             f"layer is {linear.in_features}->{linear.out_features}")
        delta = (b.float() @ a.float()) * scale
        linear.weight.data = (linear.weight.data.float() + delta.to(linear.weight.device)).to(linear.weight.dtype)
    return len(modules)


@torch.no_grad()
def load_adapter_checkpoint(model: torch.nn.Module, state: dict[str, torch.Tensor], kind: str, scale: float,
                            source: str = "lora_checkpoint") -> int:
    """``--lora_checkpoint`` for a DoRA/LoHa/LoKr: a checkpoint of this trainer (or its diffusers export) in the
    loaded module names, its folded scale taken out again. Returns the number of modules loaded."""
    modules = adapter_modules(state, kind)
    params = dict(model.named_parameters())
    for name, slots in modules.items():
        fold = next(s for s in FOLD[kind] if s in slots)
        for slot, tensor in slots.items():
            key = f"{name}.{slot}.default" + (".weight" if slot in ("lora_A", "lora_B", "lora_magnitude_vector")
                                              else "")
            if key not in params:
                raise ValueError(f"{source}: {name}.{slot} has no trained tensor here; lora.adapter, "
                                 "lora.lora_target_modules and lora.lokr_factor must match the checkpoint's run")
            value = tensor.float() / scale if slot == fold else tensor
            if params[key].shape != value.shape:
                raise ValueError(f"{source}: {name}.{slot} has shape {tuple(value.shape)} in the file but "
                                 f"{tuple(params[key].shape)} here; lora.lora_rank must match the checkpoint")
            params[key].data.copy_(value.to(params[key].dtype))
    return len(modules)


@torch.no_grad()
def load_lora_checkpoint(model: torch.nn.Module, state: dict[str, torch.Tensor], spec,
                         source: str = "lora_checkpoint") -> int:
    """Initialise the injected adapter ``default`` from a LoRA file (``--lora_checkpoint``) so that it applies
    the file's update under this adapter's own scaling; returns the number of modules loaded."""
    modules = read_lora(state, spec, model)
    params = dict(model.named_parameters())
    for name, (a, b) in modules.items():
        keys = {slot: f"{name}.lora_{slot}.default.weight" for slot in "AB"}
        if keys["A"] not in params:
            raise ValueError(f"{source}: {name!r} has no LoRA adapter here; lora.lora_target_modules must cover "
                             "the modules the checkpoint was trained on")
        layer_scale = getattr(_linear(model, name, source), "scaling", {}).get("default", 1.0)
        for slot, tensor in (("A", a), ("B", b / layer_scale)):
            target = params[keys[slot]]
            if target.shape != tensor.shape:
                raise ValueError(f"{source}: {keys[slot]} has shape {tuple(tensor.shape)} in the file but "
                                 f"{tuple(target.shape)} here; lora.lora_rank must match the checkpoint")
            target.data.copy_(tensor.to(target.dtype))
    return len(modules)
