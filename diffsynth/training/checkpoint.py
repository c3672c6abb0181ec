"""Checkpoint files in DiffSynth's format (``ModelLogger``): trainable tensors only, prefix removed, safetensors,
``epoch-K.safetensors`` (0-based) or ``step-N.safetensors``. Written to a temp name, then renamed."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import Config
from ..errors import ConfigError
from ..files import atomic_path
from ..models.adapters import adapter_scale, checkpoint_state
from ..models.lora_names import opensource_converter, to_diffsynth_checkpoint


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


def checkpoint_converter(spec, config: Config):
    """``output.align_to_opensource_format``: the family's saved-LoRA converter (checked before training)."""
    if not config.output.align_to_opensource_format:
        return None
    converter = opensource_converter(spec)
    if converter is None:
        raise ConfigError(f"output.align_to_opensource_format: the {spec.name} family has no open-source "
                          "LoRA format; turn the flag off")
    return converter



class Checkpointer:
    """DiffSynth's checkpoint at a save point: the trainable tensors, ``remove_prefix_in_ckpt`` removed, a LoRA in
    the open-source format when asked, else the DiT's LoRA in DiffSynth-Studio's own DiT names."""

    def __init__(self, output: Path, trainable: set[str], config: Config, family, tracker, ema=None):
        self.output, self.trainable, self.config, self.family, self.tracker = output, trainable, config, family, tracker
        self.convert = checkpoint_converter(family, config)  # checked before training starts
        self.ema = ema  # train.ema_decay: its weights are written beside each checkpoint

    def save(self, state: dict, at: int, epoch: int | None) -> Path:
        """Write ``state``'s trainable tensors as ``epoch-K`` (``epoch`` given) or ``step-N``; log it to MLflow.
        With an EMA, its weights go beside it in the same format as ``epoch-K.ema.safetensors`` (not exported)."""
        path = self.output / checkpoint_name(epoch=epoch, step=None if epoch is not None else at)
        self._write(state, path)
        if self.ema is not None:
            self._write(self.ema.weights(), path.with_suffix(".ema.safetensors"))
        return path

    def _write(self, state: dict, path: Path) -> None:
        prefix, lora = self.config.output.remove_prefix_in_ckpt, self.config.lora
        ckpt = {(k[len(prefix):] if prefix and k.startswith(prefix) else k): v.detach().to("cpu").contiguous()
                for k, v in state.items() if k in self.trainable}
        if lora.adapter != "lora":  # DoRA/LoHa/LoKr: peft's names, scale folded (DiffSynth loads none of them)
            ckpt = checkpoint_state(ckpt, lora.adapter, adapter_scale(self.config))
        elif self.convert:
            ckpt = self.convert(ckpt, alpha=lora.lora_alpha)
        elif lora.lora_base_model == "dit":  # the DiT's LoRA in DiffSynth's own DiT names
            dit = "pipe.dit."
            dit = dit[len(prefix):] if prefix and dit.startswith(prefix) else dit
            ckpt = to_diffsynth_checkpoint(ckpt, self.family, dit, alpha=lora.lora_alpha)
        save_checkpoint(ckpt, path)
        self.tracker.log_artifact(path, "checkpoints")
