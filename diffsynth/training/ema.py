"""EMA of the trainable parameters (``train.ema_decay``): after every optimizer step
``ema = decay * ema + (1 - decay) * weights``, starting from the weights training starts with. Kept in float32, in
the resumable state (``ema.safetensors``), and written beside each checkpoint as ``<name>.ema.safetensors``."""
from __future__ import annotations

import torch

from ..config import Config
from ..errors import ConfigError


class EMA:
    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().float().clone() for n, p in self.params.items()}

    @classmethod
    def from_config(cls, config: Config, module: torch.nn.Module, sharded: bool) -> "EMA | None":
        """None when ``train.ema_decay`` is 0 (off). ``module``: the unwrapped training module."""
        if not config.train.ema_decay:
            return None
        if sharded:
            raise ConfigError("train.ema_decay: EMA is not supported with sharded weights (FSDP / DeepSpeed ZeRO-3, "
                              "each rank holds a shard); use a DDP or ZeRO-2 accelerate config, or set ema_decay 0")
        return cls(module, config.train.ema_decay)

    @torch.no_grad()
    def update(self) -> None:
        """After an optimizer step."""
        for name, param in self.params.items():
            self.shadow[name].mul_(self.decay).add_(param.detach().float(), alpha=1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().to("cpu").contiguous() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.keys() != self.shadow.keys():
            raise ConfigError("Cannot resume: the saved EMA holds other parameters than the ones trained now")
        for name, tensor in state.items():
            self.shadow[name].copy_(tensor)

    def weights(self) -> dict[str, torch.Tensor]:
        """The EMA in the parameters' dtypes, keyed like the module's state dict (for the checkpoint writer)."""
        return {n: self.shadow[n].to(p.dtype).cpu() for n, p in self.params.items()}
