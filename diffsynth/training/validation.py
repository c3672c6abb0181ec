"""Fixed-noise validation loss: the same rows, noise and sigmas at every evaluation, so the numbers are
comparable across steps and runs (the training loss itself jumps with the random timestep)."""
from __future__ import annotations

import torch

from ..families.base import Family
from ..progress import progress
from . import distill
from .distill import DistillValidator
from .loss import velocity_mse
from .schedule import FlowMatchSchedule


class FixedNoiseValidator:
    def __init__(self, items: list[dict], sigmas: list[float], seed: int, encode=None):
        if not items:
            raise ValueError("validation needs at least one dataset row")
        self.items = items
        self.encode = encode  # item -> model inputs (default: the pipeline's encode)
        self.sigmas = [float(s) for s in sigmas]
        self.seed = seed

    @classmethod
    def for_config(cls, items: list[dict], config, encode=None) -> "FixedNoiseValidator":
        """The validator ``config.validation`` describes, over ``items`` (the first dataset rows)."""
        return cls(items, config.validation.sigmas, config.validation.seed, encode=encode)

    @torch.no_grad()
    def evaluate(self, pipe: Family, schedule: FlowMatchSchedule) -> dict[str, float]:
        """Unweighted MSE per fixed sigma (averaged over the rows) and their mean, as ``val_loss``."""
        generator = torch.Generator().manual_seed(self.seed)
        per_sigma = {s: 0.0 for s in self.sigmas}
        for item in progress(self.items, desc="validation", unit="row"):
            inputs = (self.encode or pipe.encode)(item)
            latents = inputs["latents"]
            noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
            for s in self.sigmas:
                t, sigma, _ = schedule.sigma_for(s)
                per_sigma[s] += velocity_mse(pipe, inputs, noise, t, sigma).item() / len(self.items)
        metrics = {f"val_loss/sigma_{s:g}": v for s, v in per_sigma.items()}
        metrics["val_loss"] = sum(per_sigma.values()) / len(per_sigma)
        return metrics


def validator_for(items: list[dict], config, encode):
    """The run's validation loss: the distillation loss for direct_distill, else the fixed-noise velocity MSE."""
    validator = DistillValidator if config.train.task == distill.TASK else FixedNoiseValidator
    return validator.for_config(items, config, encode)
