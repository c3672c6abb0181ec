"""Whole-model exports: a full fine-tune, or base + LoRA merged, written as a diffusers model folder
(``config.json`` + sharded ``diffusion_pytorch_model-0000K-of-0000N.safetensors`` + index) that
``<ModelClass>.from_pretrained(folder)`` loads."""
from __future__ import annotations

from pathlib import Path

import torch

from ..models.lora_names import Modules
from .lora_formats import ExportError


@torch.no_grad()
def merge_lora(model: torch.nn.Module, modules: Modules) -> int:
    """``W += B @ A`` for every module (the LoRA scale is already folded into B); returns modules merged."""
    layers = dict(model.named_modules())
    for name, (a, b) in modules.items():
        layer = layers.get(name)
        if not isinstance(layer, torch.nn.Linear):
            raise ExportError(f"merge: LoRA module {name!r} is not a Linear layer of {type(model).__name__}")
        if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features:
            raise ExportError(f"merge: LoRA {name!r} is {a.shape[1]}->{b.shape[0]}, the layer "
                              f"{layer.in_features}->{layer.out_features}")
        delta = b.float().to(layer.weight.device) @ a.float().to(layer.weight.device)
        layer.weight.data = (layer.weight.data.float() + delta).to(layer.weight.dtype)
    return len(modules)


@torch.no_grad()
def load_full_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> int:
    """Put a full fine-tune's tensors into ``model``; every key must be a parameter of it with its shape."""
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ExportError(f"{source}: {len(unknown)} keys are not parameters of {type(model).__name__} "
                          f"(e.g. {unknown[:3]}); output.remove_prefix_in_ckpt must strip the pipeline prefix")
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ExportError(f"{source}: shapes differ from the base model for {wrong[:3]}")
    model.load_state_dict(state, strict=False)
    return len(state)


def save_model_folder(model: torch.nn.Module, folder: str | Path, max_shard_size: str = "5GB") -> Path:
    """diffusers ``save_pretrained`` layout; a model over ``max_shard_size`` is sharded with an index. A plain
    module without ``save_pretrained`` (Wan's speed-control motion controller) is written as ``model.safetensors``
    in its own key names, the layout its released file has."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not hasattr(model, "save_pretrained"):
        from safetensors.torch import save_file
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                  str(folder / "model.safetensors"))
        return folder
    model.save_pretrained(str(folder), safe_serialization=True, max_shard_size=max_shard_size)
    return folder
