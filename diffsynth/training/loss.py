"""DiffSynth's flow-matching SFT loss (spec §4.5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..families.base import Pipeline
from .schedule import FlowMatchSchedule


def noised(latents: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return (1 - sigma) * latents + sigma * noise


def flow_match_loss(pipe: Pipeline, schedule: FlowMatchSchedule, inputs: dict, generator: torch.Generator,
                    min_boundary: float = 0.0, max_boundary: float = 1.0) -> torch.Tensor:
    """Weighted MSE between the predicted and the true velocity ``noise - x0`` at a uniformly drawn grid point."""
    t, sigma, weight = schedule.sample(generator, min_boundary, max_boundary)
    latents = inputs["latents"]
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    sigma = sigma.to(latents.device)
    pred = pipe.predict(noised(latents, noise, sigma), t.to(latents.device), inputs)
    target = noise - latents
    return F.mse_loss(pred.float(), target.float()) * weight.to(latents.device)
