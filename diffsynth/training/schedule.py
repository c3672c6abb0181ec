"""DiffSynth's flow-matching training schedules (DiffSynth-Studio's ``diffsynth/diffusion/flow_match.py``).

Each family trains on a fixed grid of 1000 sigmas (its spec's ``train_sigmas``; formulas in ``diffsynth/sigmas.py``). A training step draws a grid index uniformly, casts
the timestep to bf16 (as DiffSynth does), looks the sigma and the bell-curve loss weight up at the grid
point nearest that rounded timestep, and regresses the velocity ``noise - x0``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..families import get_spec

NUM_TRAIN_TIMESTEPS = 1000


def bell_curve_weights(sigmas: torch.Tensor) -> torch.Tensor:
    """DiffSynth's ``set_training_weight`` for a 1000-point grid: Gaussian in t centred at 500, min 0, mean 1."""
    x = sigmas * NUM_TRAIN_TIMESTEPS
    y = torch.exp(-2.0 * ((x - NUM_TRAIN_TIMESTEPS / 2) / NUM_TRAIN_TIMESTEPS) ** 2)
    y = y - y.min()
    w = y * (len(sigmas) / y.sum())
    if len(sigmas) != NUM_TRAIN_TIMESTEPS:
        w = w * len(sigmas) / NUM_TRAIN_TIMESTEPS
        w = w + w[1]
    return w


@dataclass(frozen=True)
class FlowMatchSchedule:
    """The 1000-step training grid of one family: ``sigmas`` (1 → small), ``timesteps`` (= 1000·σ), ``weights``."""

    family: str
    sigmas: torch.Tensor
    timesteps: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def for_family(cls, name: str) -> "FlowMatchSchedule":
        """The grid of a family name or alias (or a spec's name)."""
        spec = get_spec(name)
        sigmas = spec.train_sigmas(NUM_TRAIN_TIMESTEPS).to(torch.float32)
        return cls(spec.name, sigmas, sigmas * NUM_TRAIN_TIMESTEPS, bell_curve_weights(sigmas).to(torch.float32))

    def index_range(self, min_boundary: float = 0.0, max_boundary: float = 1.0) -> tuple[int, int]:
        """Grid indices ``[lo, hi)`` DiffSynth samples from for ``--min/max_timestep_boundary``."""
        n = len(self.timesteps)
        lo, hi = int(min_boundary * n), int(max_boundary * n)
        if not 0 <= lo < hi <= n:
            raise ValueError(
                f"Empty timestep range: min_timestep_boundary={min_boundary} and max_timestep_boundary="
                f"{max_boundary} give grid indices [{lo}, {hi}); need 0 <= min < max <= 1"
            )
        return lo, hi

    def lookup(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Round ``timestep`` to bf16 as DiffSynth does; return (rounded t, sigma, weight) at the nearest grid point."""
        t = timestep.to(torch.bfloat16).to(torch.float32)
        idx = torch.argmin((self.timesteps[None, :] - t.reshape(-1, 1)).abs(), dim=1)
        return t.reshape(timestep.shape), self.sigmas[idx].reshape(timestep.shape), self.weights[idx].reshape(timestep.shape)

    def sample(self, generator: torch.Generator | None = None, min_boundary: float = 0.0,
               max_boundary: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One training draw: uniform grid index in the boundary range, then :meth:`lookup`."""
        lo, hi = self.index_range(min_boundary, max_boundary)
        idx = torch.randint(lo, hi, (1,), generator=generator)
        return self.lookup(self.timesteps[idx])

    def sigma_for(self, sigma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t, sigma, weight) at the grid point nearest a requested sigma (used for fixed-sigma validation)."""
        idx = torch.argmin((self.sigmas - sigma).abs()).reshape(1)
        return self.lookup(self.timesteps[idx])
