"""LoRA with peft, in DiffSynth's conventions (spec §4.7, §6): adapter name ``default``, alpha = rank unless
given, suffix-matched target lists, a single target treated as a regex full-match, ``""`` auto-detection."""
from __future__ import annotations

import re

import torch
from peft import LoraConfig, inject_adapter_in_model


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


def add_lora(model: torch.nn.Module, targets: list[str] | str, rank: int, alpha: float | None = None,
             dtype: torch.dtype | None = None, exclude: list[str] | None = None) -> torch.nn.Module:
    """Inject adapter ``default``; ``exclude`` lists full module names that must not get LoRA."""
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, target_modules=targets,
                        exclude_modules=exclude or None)
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


_LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.[A-Za-z0-9_]+)?\.weight$")
_FOREIGN_PREFIXES = ("diffusion_model.", "transformer.", "base_model.model.")


def split_lora_state(state: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Group a LoRA file's tensors by target module: ``{module: {"A", "B", "alpha"}}``.

    Reads DiffSynth (``.lora_A.default.weight``), PEFT/diffusers (``transformer.`` prefix, no adapter name),
    ComfyUI (``diffusion_model.``) and ``lora_down/lora_up`` + ``.alpha`` names, as DiffSynth's loader does.
    """
    modules: dict[str, dict] = {}
    for key, value in state.items():
        if key.endswith(".alpha"):
            modules.setdefault(_strip_prefix(key[: -len(".alpha")]), {})["alpha"] = float(value.float().item())
            continue
        m = _LORA_KEY.match(key)
        if not m:
            raise ValueError(f"{key!r} is not a LoRA tensor name (expected <module>.lora_A[.default].weight)")
        slot = "A" if m.group("kind") in ("lora_A", "lora_down") else "B"
        modules.setdefault(_strip_prefix(m.group("module")), {})[slot] = value
    broken = [name for name, parts in modules.items() if "A" not in parts or "B" not in parts]
    if broken:
        raise ValueError(f"LoRA modules without both A and B matrices: {broken[:5]}")
    return modules


def _strip_prefix(name: str) -> str:
    for prefix in _FOREIGN_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _linear(model: torch.nn.Module, name: str, source: str) -> torch.nn.Linear:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"{source}: LoRA targets {name!r}, which {type(model).__name__} does not have") from None
    base = getattr(module, "base_layer", module)  # a layer that already carries a peft adapter
    if not isinstance(base, torch.nn.Linear):
        raise ValueError(f"{source}: LoRA target {name!r} is a {type(base).__name__}, not a Linear layer")
    return base


@torch.no_grad()
def fuse_lora(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "preset LoRA",
              scale: float = 1.0) -> int:
    """Merge a LoRA file into the base weights: ``W += scale · (alpha/rank) · B @ A`` (alpha/rank = 1 when
    the file has no alpha, as in DiffSynth's differential training). Returns the number of modules fused."""
    modules = split_lora_state(state)
    for name, parts in modules.items():
        linear = _linear(model, name, source)
        a, b = parts["A"].float(), parts["B"].float()
        if a.shape[1] != linear.in_features or b.shape[0] != linear.out_features:
            raise ValueError(f"{source}: LoRA for {name!r} has shapes A{tuple(a.shape)} B{tuple(b.shape)}, but the "
                             f"layer is {linear.in_features}->{linear.out_features}")
        factor = scale * (parts["alpha"] / a.shape[0] if "alpha" in parts else 1.0)
        delta = (b @ a) * factor
        linear.weight.data = (linear.weight.data.float() + delta.to(linear.weight.device)).to(linear.weight.dtype)
    return len(modules)


@torch.no_grad()
def load_lora_checkpoint(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "lora_checkpoint") -> int:
    """Initialise the injected adapter ``default`` from a LoRA file (``--lora_checkpoint``); returns modules loaded."""
    modules = split_lora_state(state)
    params = dict(model.named_parameters())
    for name, parts in modules.items():
        for slot, tensor in (("A", parts["A"]), ("B", parts["B"])):
            key = f"{name}.lora_{slot}.default.weight"
            if key not in params:
                raise ValueError(f"{source}: {name!r} has no LoRA adapter here; lora.lora_target_modules must cover "
                                 "the modules the checkpoint was trained on")
            if params[key].shape != tensor.shape:
                raise ValueError(f"{source}: {key} has shape {tuple(tensor.shape)} in the file but "
                                 f"{tuple(params[key].shape)} here; lora.lora_rank must match the checkpoint")
            if slot == "A":
                # keep the file's effective update (alpha_file/r)·B·A under this adapter's own scaling
                file_scale = parts["alpha"] / tensor.shape[0] if "alpha" in parts else 1.0
                layer_scale = getattr(model.get_submodule(name), "scaling", {}).get("default", 1.0)
                tensor = tensor * (file_scale / layer_scale)
            params[key].data.copy_(tensor.to(params[key].dtype))
    return len(modules)
