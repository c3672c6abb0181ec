"""Optimizer and learning-rate schedule."""
from __future__ import annotations

import importlib

import torch

from ..config import Config, ConfigError


def build_optimizer(config: Config, params) -> torch.optim.Optimizer:
    """AdamW (torch defaults for betas/eps, as DiffSynth), or ``train.customized_optimizer``.

    AdamW runs its fused kernel where torch has one (CPU and CUDA): the same update up to float rounding, ~4x
    faster per step (benchmarks/optimizer_step.py), which matters for full fine-tuning.
    """
    params = list(params)
    if not config.train.customized_optimizer:
        fused = config.train.fused_optimizer and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                                     for p in params)
        return torch.optim.AdamW(params, lr=config.train.learning_rate, weight_decay=config.train.weight_decay,
                                 fused=fused or None)
    module_name, _, class_name = config.train.customized_optimizer.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"train.customized_optimizer {config.train.customized_optimizer!r} cannot be "
                          f"imported ({e}); give a dotted class path like bitsandbytes.optim.Adam8bit") from None
    return cls(params, lr=config.train.learning_rate, weight_decay=config.train.weight_decay)


class Schedule:
    """The learning-rate schedule, advanced once per optimizer step (not per micro-step or per process).

    ``diffsynth`` reproduces DiffSynth's ``ConstantLR(optimizer)``: torch defaults factor 1/3 for the first
    5 scheduler steps, and accelerate steps it once per process per optimizer step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, name: str, warmup_steps: int, num_processes: int):
        self.name = name
        self.steps_per_update = num_processes if name == "diffsynth" else 1
        if name == "diffsynth":
            self.scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer)
        elif name == "constant_with_warmup" and warmup_steps > 0:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup_steps))
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)

    def step(self) -> None:
        for _ in range(self.steps_per_update):
            self.scheduler.step()

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)
