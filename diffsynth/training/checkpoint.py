"""Checkpoint files in DiffSynth's format (``ModelLogger``): trainable tensors only, prefix removed, safetensors,
``epoch-K.safetensors`` (0-based) or ``step-N.safetensors``. Written to a temp name, then renamed."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ..files import atomic_path


def trainable_state_dict(module: torch.nn.Module, remove_prefix: str | None) -> dict[str, torch.Tensor]:
    state = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if remove_prefix and name.startswith(remove_prefix):
            name = name[len(remove_prefix):]
        state[name] = param.detach().to("cpu").contiguous().clone()
    return state


def checkpoint_name(epoch: int | None = None, step: int | None = None) -> str:
    return f"epoch-{epoch}.safetensors" if epoch is not None else f"step-{step}.safetensors"


def save_checkpoint(state: dict[str, torch.Tensor], path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    return path
