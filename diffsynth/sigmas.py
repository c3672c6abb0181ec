"""Flow-matching sigma grids: the formulas, written once.

Training (``training/schedule.py``, 1000 points) and sampling (each family's inference grid) both build their
grids from these two functions; a family spec only says which function and which constants it uses.
"""
from __future__ import annotations

import math

import torch


def shifted_grid(n: int, shift: float, start: float = 1.0, end: float = 0.0, drop_last: bool = True) -> torch.Tensor:
    """``shift·s / (1 + (shift-1)·s)`` over ``linspace(start, end, n+1)[:-1]`` (``drop_last``) or ``linspace(start,
    end, n)`` (FLUX.1, Wan): DiffSynth's static time shift. float64, 1 → small."""
    s = torch.linspace(start, end, n + 1, dtype=torch.float64)[:-1] if drop_last else \
        torch.linspace(start, end, n, dtype=torch.float64)
    return shift * s / (1.0 + (shift - 1.0) * s)


def exponential_shift_grid(n: int, mu: float, shift_terminal: float) -> torch.Tensor:
    """Qwen-Image: exponential time shift with ``mu`` on ``linspace(1, 0, n+1)[:-1]``, then stretched so the last
    sigma is ``shift_terminal``. float64, 1 → ``shift_terminal``."""
    s = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)[:-1]
    s = math.exp(mu) / (math.exp(mu) + (1.0 / s - 1.0))
    return 1.0 - (1.0 - s) / ((1.0 - s[-1]) / (1.0 - shift_terminal))


def dynamic_mu(image_seq_len: int, base_len: int = 256, max_len: int = 8192, base_shift: float = 0.5,
               max_shift: float = 0.9) -> float:
    """Resolution-dependent ``mu`` of Qwen-Image sampling: linear in the image token count."""
    return base_shift + (max_shift - base_shift) * (image_seq_len - base_len) / (max_len - base_len)


def sampling_grid(grid: torch.Tensor) -> torch.Tensor:
    """An inference grid: the sigmas followed by the final 0 an Euler sampler steps to, as float32."""
    return torch.cat([grid, torch.zeros(1, dtype=grid.dtype)]).float()
