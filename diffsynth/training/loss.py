"""DiffSynth's flow-matching SFT loss (spec §4.5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..families.base import Pipeline
from .schedule import FlowMatchSchedule


def noised(latents: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return (1 - sigma) * latents + sigma * noise


def velocity_mse(pipe: Pipeline, inputs: dict, noise: torch.Tensor, t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Unweighted MSE between the predicted and the true velocity ``noise - x0`` at noise level ``sigma``.

    With ``first_frame_latents`` (Wan2.2 TI2V) latent frame 0 is the clean conditioning frame: it is put
    into the noisy input and left out of the loss.
    """
    latents = inputs["latents"]
    noisy = noised(latents, noise, sigma.to(latents.device))
    target = noise - latents
    first = inputs.get("first_frame_latents")
    if first is not None:
        noisy[:, :, 0:1] = first
    pred = pipe.predict(noisy, t.to(latents.device), inputs)
    if first is not None:
        pred, target = pred[:, :, 1:], target[:, :, 1:]
    return F.mse_loss(pred.float(), target.float())


def flow_match_loss(pipe: Pipeline, schedule: FlowMatchSchedule, inputs: dict, generator: torch.Generator,
                    min_boundary: float = 0.0, max_boundary: float = 1.0) -> torch.Tensor:
    """Weighted velocity MSE at a grid point drawn uniformly within the timestep boundaries."""
    t, sigma, weight = schedule.sample(generator, min_boundary, max_boundary)
    latents = inputs["latents"]
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    return velocity_mse(pipe, inputs, noise, t, sigma) * weight.to(latents.device)
