"""DiffSynth's flow-matching training schedules (reference spec §4.5).

Each family trains on a fixed grid of 1000 sigmas. A training step draws a grid index uniformly, casts
the timestep to bf16 (as DiffSynth does), looks the sigma and the bell-curve loss weight up at the grid
point nearest that rounded timestep, and regresses the velocity ``noise - x0``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NUM_TRAIN_TIMESTEPS = 1000


def _qwen_image_sigmas(n: int) -> torch.Tensor:
    # linspace(1, 0, n+1)[:-1], exponential time shift with fixed mu=0.8, then shift-terminal to 0.02.
    s = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)[:-1]
    mu = 0.8
    s = math.exp(mu) / (math.exp(mu) + (1.0 / s - 1.0))
    s = 1.0 - (1.0 - s) / ((1.0 - s[-1]) / (1.0 - 0.02))
    return s


def _shifted_sigmas(start: float, end: float, n: int, shift: float, drop_last: bool) -> torch.Tensor:
    if drop_last:
        s = torch.linspace(start, end, n + 1, dtype=torch.float64)[:-1]
    else:
        s = torch.linspace(start, end, n, dtype=torch.float64)
    return shift * s / (1.0 + (shift - 1.0) * s)


def _flux_sigmas(n: int) -> torch.Tensor:
    return _shifted_sigmas(1.0, 0.003 / 1.002, n, shift=3.0, drop_last=False)


def _wan_sigmas(n: int) -> torch.Tensor:
    return _shifted_sigmas(1.0, 0.0, n, shift=5.0, drop_last=True)


_SIGMA_GRIDS = {
    "qwen_image": _qwen_image_sigmas,
    "flux": _flux_sigmas,
    "wan": _wan_sigmas,
}
_ALIASES = {
    "qwen-image": "qwen_image", "qwen_image_edit": "qwen_image", "qwen-image-edit": "qwen_image",
    "flux1": "flux", "flux.1": "flux", "flux-dev": "flux", "wanvideo": "wan", "wan2.1": "wan", "wan2.2": "wan",
}


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
        key = _ALIASES.get(name.lower(), name.lower())
        if key not in _SIGMA_GRIDS:
            raise ValueError(f"No flow-matching schedule for family {name!r}; known: {sorted(_SIGMA_GRIDS)}")
        sigmas = _SIGMA_GRIDS[key](NUM_TRAIN_TIMESTEPS).to(torch.float32)
        return cls(key, sigmas, sigmas * NUM_TRAIN_TIMESTEPS, bell_curve_weights(sigmas).to(torch.float32))

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
