"""DiffSynth's flow-matching SFT loss (``FlowMatchSFTLoss``), for a batch of one or more samples of one shape."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..families.base import Family
from .schedule import FlowMatchSchedule


def noised(latents: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``sigma`` holds one noise level per sample (shape (B,)) or a single one."""
    sigma = sigma.reshape(-1, *([1] * (latents.dim() - 1)))
    return (1 - sigma) * latents + sigma * noise


def per_sample_mse(pipe: Family, inputs: dict, noise: torch.Tensor, t: torch.Tensor,
                   sigma: torch.Tensor) -> torch.Tensor:
    """Unweighted MSE per sample, shape (B,), between the predicted and the true velocity ``noise - x0``.

    With ``first_frame_latents`` (Wan2.2 TI2V) latent frame 0 is the clean conditioning frame: it is put
    into the noisy input and left out of the loss.

    With ``loss_mask`` (masked loss: (B, 1, [1,] H, W) on the latent grid, 0..1) each squared error is weighted
    by the mask before the mean over all elements (kohya's masked loss: not renormalised by the mask's area), so
    a masked-out latent cell gives no gradient.
    """
    latents = inputs["latents"]
    noisy = noised(latents, noise, sigma.to(latents.device))
    target = noise - latents
    first = inputs.get("first_frame_latents")
    if first is not None:
        noisy[:, :, 0:1] = first
    pred = pipe.predict(noisy, t.to(latents.device), inputs)
    mask = inputs.get("loss_mask")
    if mask is not None:
        mask = mask.to(pred.device, torch.float32).expand(pred.shape)
    if first is not None:
        pred, target = pred[:, :, 1:], target[:, :, 1:]
        mask = mask[:, :, 1:] if mask is not None else None
    if mask is not None:
        return torch.stack([(F.mse_loss(p.float(), q.float(), reduction="none") * m).mean()
                            for p, q, m in zip(pred, target, mask)])
    # one mse_loss per sample: with one sample this is DiffSynth's F.mse_loss, bit for bit
    return torch.stack([F.mse_loss(p.float(), q.float()) for p, q in zip(pred, target)])


def velocity_mse(pipe: Family, inputs: dict, noise: torch.Tensor, t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Unweighted velocity MSE, averaged over the batch."""
    return per_sample_mse(pipe, inputs, noise, t, sigma).mean()


def draw(schedule: FlowMatchSchedule, generator: torch.Generator, shape: torch.Size, min_boundary: float,
         max_boundary: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t, sigma, weight, noise), each with one entry per sample. Drawn sample by sample, timestep then noise,
    so sample ``i`` of a batch gets what the ``i``-th of as many single-sample steps would get."""
    draws = []
    for _ in range(shape[0]):
        t, sigma, weight = schedule.sample(generator, min_boundary, max_boundary)
        draws.append((t, sigma, weight, torch.randn((1, *shape[1:]), generator=generator)))
    return tuple(torch.cat(parts) for parts in zip(*draws))


def flow_match_loss(pipe: Family, schedule: FlowMatchSchedule, inputs: dict, generator: torch.Generator,
                    min_boundary: float = 0.0, max_boundary: float = 1.0, extra=None) -> torch.Tensor:
    """Mean over the batch of each sample's weighted velocity MSE, each at its own grid point drawn uniformly
    within the timestep boundaries and with its own noise. ``loss_weight`` (B,) in ``inputs`` (a dataset's
    ``weight``) multiplies each sample's loss. ``extra(noisy, t)`` (differential output preservation) adds a term
    computed on the same noisy latents and timesteps."""
    latents = inputs["latents"]
    t, sigma, weight, noise = draw(schedule, generator, latents.shape, min_boundary, max_boundary)
    noise = noise.to(latents.device, latents.dtype)
    loss = per_sample_mse(pipe, inputs, noise, t, sigma) * weight.to(latents.device)
    if "loss_weight" in inputs:
        loss = loss * inputs["loss_weight"].to(loss.device, loss.dtype)
    if extra is None:
        return loss.mean()
    noisy = noised(latents, noise, sigma.to(latents.device))
    if inputs.get("first_frame_latents") is not None:
        noisy[:, :, 0:1] = inputs["first_frame_latents"]
    return loss.mean() + extra(noisy, t.to(latents.device))
