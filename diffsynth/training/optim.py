"""Optimizer and learning-rate schedule."""
from __future__ import annotations

import importlib
import math

import torch

from ..config import Config
from ..errors import ConfigError


# train.optimizer -> (module, class, pyproject extra that installs it); adamw is torch's own
OPTIMIZERS = {
    "adamw8bit": ("bitsandbytes.optim", "AdamW8bit", "bitsandbytes"),
    "prodigy": ("prodigyopt", "Prodigy", "prodigy"),
    "adafactor": ("transformers.optimization", "Adafactor", None),  # transformers is a core dependency
}


def _named(params) -> list[tuple[str, torch.nn.Parameter]]:
    """``params``: parameters, or (name, parameter) pairs (names are needed for LoRA+)."""
    return [item if isinstance(item, tuple) else ("", item) for item in params]


def param_groups(config: Config, named: list[tuple[str, torch.nn.Parameter]]) -> list:
    """A plain parameter list (one group, as DiffSynth), or with ``train.loraplus_lr_ratio`` two groups: LoRA B
    matrices at ``learning_rate * ratio`` (LoRA+, Hayou et al. 2024, as kohya's ``loraplus_lr_ratio``), the rest at
    ``learning_rate``."""
    ratio = config.train.loraplus_lr_ratio
    if ratio is None:
        return [p for _, p in named]
    b = [p for n, p in named if ".lora_B." in n]
    if not b:
        raise ConfigError("train.loraplus_lr_ratio scales the LoRA B matrices' learning rate, but nothing trained is "
                          "a LoRA B matrix: set lora.lora_base_model, or leave loraplus_lr_ratio empty")
    lr = config.train.learning_rate
    return [{"params": [p for n, p in named if ".lora_B." not in n], "lr": lr},
            {"params": b, "lr": lr * ratio}]


def optimizer_class(name: str):
    """The class behind ``train.optimizer`` (a missing optional package is a one-line error naming the extra)."""
    module_name, class_name, extra = OPTIMIZERS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        how = f"pip install 'diffsynth-pipeline[{extra}]'" if extra else f"pip install {module_name.split('.')[0]}"
        raise ConfigError(f"train.optimizer {name} needs the {module_name.split('.')[0]} package, which cannot be "
                          f"imported ({e}): {how}") from None
    return getattr(module, class_name)


def build_optimizer(config: Config, params) -> torch.optim.Optimizer:
    """``train.optimizer``: AdamW (torch defaults for betas/eps, as DiffSynth), AdamW 8-bit (bitsandbytes),
    Prodigy (prodigyopt) or Adafactor (transformers); or ``train.customized_optimizer`` (DiffSynth's flag), a
    dotted class called as ``cls(params, lr=, weight_decay=)``.

    AdamW runs its fused kernel where torch has one (CPU and CUDA): the same update up to float rounding, ~4x
    faster per step (benchmarks/optimizer_step.py), which matters for full fine-tuning.
    """
    named = _named(params)
    groups = param_groups(config, named)
    lr, wd, name = config.train.learning_rate, config.train.weight_decay, config.train.optimizer
    if config.train.customized_optimizer:
        if name != "adamw":
            raise ConfigError(f"train.customized_optimizer ({config.train.customized_optimizer}) and train.optimizer "
                              f"({name}) both choose the optimizer: set one (optimizer: adamw with a customized one)")
        module_name, _, class_name = config.train.customized_optimizer.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError) as e:
            raise ConfigError(f"train.customized_optimizer {config.train.customized_optimizer!r} cannot be "
                              f"imported ({e}); give a dotted class path like bitsandbytes.optim.Adam8bit") from None
        return cls(groups, lr=lr, weight_decay=wd)
    if name == "adamw":
        fused = config.train.fused_optimizer and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                                     for _, p in named)
        return torch.optim.AdamW(groups, lr=lr, weight_decay=wd, fused=fused or None)
    cls = optimizer_class(name)
    if name == "adafactor":  # a fixed lr (kohya's recommended settings), not Adafactor's relative step
        return cls(groups, lr=lr, weight_decay=wd, scale_parameter=False, relative_step=False, warmup_init=False)
    return cls(groups, lr=lr, weight_decay=wd)


DECAYING = ("cosine", "linear")
WARMING = ("constant_with_warmup", "cosine", "linear")


def total_optimizer_steps(batches_per_epoch: int, num_epochs: int, accumulation: int,
                          max_steps: int | None = None) -> int:
    """Optimizer steps a run makes: micro-steps (batches per rank x epochs, cut at ``train.max_steps``) over
    the accumulation. Micro-steps left over at the end make no optimizer step, as in the loop."""
    micro = batches_per_epoch * num_epochs
    if max_steps:
        micro = min(micro, max_steps)
    return micro // accumulation


class Schedule:
    """The learning-rate schedule, advanced once per optimizer step (not per micro-step or per process).

    ``diffsynth`` reproduces DiffSynth's ``ConstantLR(optimizer)``: torch defaults factor 1/3 for the first
    5 scheduler steps, and accelerate steps it once per process per optimizer step.

    The warm-ups and decays follow diffusers' ``get_constant_schedule_with_warmup`` /
    ``get_cosine_schedule_with_warmup`` / ``get_linear_schedule_with_warmup`` (the convention most trainers
    share): optimizer step ``s`` (0-based) runs at ``lr * s / warmup`` while ``s < warmup`` -- the first
    update at lr 0 -- then ``progress = (s - warmup) / (total - warmup)`` falls to ``min_ratio`` at ``total``:
    cosine ``min_ratio + (1 - min_ratio) * (1 + cos(pi * progress)) / 2`` (transformers'
    ``get_cosine_with_min_lr_schedule_with_warmup``), linear ``min_ratio + (1 - min_ratio) * (1 - progress)``
    (diffusers' ``f_min``). Past ``total`` (left-over micro-steps) the lr stays at the floor.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, name: str, warmup_steps: int, num_processes: int,
                 total_steps: int | None = None, min_ratio: float = 0.0):
        self.name = name
        self.steps_per_update = num_processes if name == "diffsynth" else 1
        # the plan is saved with the state: a resumed run must continue on the same curve
        self.plan = {"name": name, "warmup_steps": warmup_steps if name in WARMING else 0,
                     "total_steps": total_steps if name in DECAYING else None,
                     "min_ratio": min_ratio if name in DECAYING else 0.0}
        if name in DECAYING:
            if not total_steps or total_steps <= warmup_steps:
                raise ConfigError(f"train.lr_scheduler {name}: the run makes {total_steps} optimizer steps, not more "
                                  f"than train.lr_warmup_steps ({warmup_steps}), so there is nothing to decay; "
                                  "lower lr_warmup_steps or train longer (train.num_epochs / train.max_steps)")
        if name == "diffsynth":
            self.scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer)
        else:  # a plain lambda, which torch leaves out of the state dict (the plan is saved instead)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: self.factor(s))

    def factor(self, step: int) -> float:
        """lr multiplier of optimizer step ``step`` (0-based), for every schedule but ``diffsynth``."""
        name, warmup = self.plan["name"], self.plan["warmup_steps"]
        if step < warmup:
            return step / warmup
        if name not in DECAYING:
            return 1.0
        total, floor = self.plan["total_steps"], self.plan["min_ratio"]
        progress = min(1.0, (step - warmup) / (total - warmup))
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if name == "cosine" else 1.0 - progress
        return floor + (1.0 - floor) * shape

    def step(self) -> None:
        for _ in range(self.steps_per_update):
            self.scheduler.step()

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict:
        return {"scheduler": self.scheduler.state_dict(), "plan": dict(self.plan)}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("plan")
        if saved is not None and saved != self.plan:
            changed = {k: (saved.get(k), v) for k, v in self.plan.items() if saved.get(k) != v}
            raise ConfigError(
                f"Cannot resume: the learning-rate schedule differs from the interrupted run's ({changed}, as "
                "(saved, now)); total_steps follows train.num_epochs, train.max_steps, the dataset and "
                "gradient_accumulation_steps. Restore them, or set train.resume: never to start over.")
        self.scheduler.load_state_dict(state["scheduler"] if saved is not None else state)
        # torch's schedulers restore their counters but not the optimizer's lr, which ConstantLR reads back
        for group, lr in zip(self.scheduler.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr


def run_schedule(optimizer, config, batches_per_epoch: int, world_size: int) -> Schedule:
    """The learning-rate schedule ``config.train`` asks for, over the optimizer steps of the whole run."""
    t = config.train
    total = total_optimizer_steps(batches_per_epoch, t.num_epochs, config.gradient.gradient_accumulation_steps,
                                  t.max_steps)
    return Schedule(optimizer, t.lr_scheduler, t.lr_warmup_steps, world_size, total, t.lr_min_ratio)
