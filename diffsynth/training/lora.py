"""LoRA with peft, in DiffSynth's conventions (spec §4.7, §6): adapter name ``default``, alpha = rank unless
given, suffix-matched target lists, a single target treated as a regex full-match, ``""`` auto-detection."""
from __future__ import annotations

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
             dtype: torch.dtype | None = None) -> torch.nn.Module:
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, target_modules=targets)
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
