"""DiffSynth's flow-matching training schedules (DiffSynth-Studio's ``diffsynth/diffusion/flow_match.py``).

Each family trains on a fixed grid of 1000 sigmas (its spec's ``train_sigmas``; formulas in ``diffsynth/sigmas.py``). A training step draws a grid index uniformly, casts
the timestep to bf16 (as DiffSynth does), looks the sigma and the bell-curve loss weight up at the grid
point nearest that rounded timestep, and regresses the velocity ``noise - x0``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..families import get_spec

NUM_TRAIN_TIMESTEPS = 1000


def bell_curve_weights(sigmas: torch.Tensor) -> torch.Tensor:
    """DiffSynth's ``set_training_weight``: Gaussian in t centred at 500, min 0, scaled to sum 1000 (mean 1 on its
    1000-point training grid). A grid of another length (trajectory_imitation's 8 student steps) then gets its
    "empirical formula": scaled by len/1000 (sum len) and shifted up by its own second weight."""
    x = sigmas * NUM_TRAIN_TIMESTEPS
    y = torch.exp(-2.0 * ((x - NUM_TRAIN_TIMESTEPS / 2) / NUM_TRAIN_TIMESTEPS) ** 2)
    y = y - y.min()
    w = y * (NUM_TRAIN_TIMESTEPS / y.sum())
    if len(sigmas) != NUM_TRAIN_TIMESTEPS:
        w = w * len(sigmas) / NUM_TRAIN_TIMESTEPS
        w = w + w[1]
    return w


SAMPLINGS = ("diffsynth", "uniform", "logit_normal", "sigmoid", "shifted")


@dataclass(frozen=True)
class TimestepSampling:
    """How a training step draws its noise level (``train.timestep_sampling``).

    ``diffsynth`` (default): DiffSynth's uniform grid index, bf16-rounded timestep, bell-curve loss weight.
    The others draw a continuous sigma in (0, 1) as SD3 / kohya sd-scripts / musubi-tuner define them, with loss
    weight 1 (their default ``weighting_scheme: none``), timestep = 1000 * sigma:

    - ``uniform``: sigma ~ U(0, 1);
    - ``logit_normal``: sigma = sigmoid(mean + std * z), z ~ N(0, 1) (SD3; diffusers' ``logit_normal``);
    - ``sigmoid``: sigma = sigmoid(scale * z) (kohya/musubi ``sigmoid`` with ``sigmoid_scale``);
    - ``shifted``: s = sigmoid(scale * z), sigma = shift * s / (1 + (shift - 1) * s) (kohya/musubi ``shift`` with
      ``discrete_flow_shift``).

    Each draw takes one uniform number from the run's seeded generator and maps it through the inverse CDF, so the
    timestep boundaries truncate the distribution exactly and a resumed run draws what the straight run draws.
    """

    name: str = "diffsynth"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    sigmoid_scale: float = 1.0
    shift: float = 3.0

    @classmethod
    def from_config(cls, train) -> "TimestepSampling":
        return cls(train.timestep_sampling, train.timestep_logit_mean, train.timestep_logit_std,
                   train.timestep_sigmoid_scale, train.timestep_shift)

    def describe(self) -> str:
        """One line for the training log: which distribution and which loss weighting apply."""
        if self.name == "diffsynth":
            return "timestep_sampling diffsynth: uniform grid index, DiffSynth's bell-curve loss weights"
        params = {"uniform": "", "logit_normal": f"(mean={self.logit_mean}, std={self.logit_std})",
                  "sigmoid": f"(scale={self.sigmoid_scale})",
                  "shifted": f"(shift={self.shift}, scale={self.sigmoid_scale})"}[self.name]
        return (f"timestep_sampling {self.name}{params}: continuous sigma, loss weight 1 (a change from DiffSynth, "
                "whose grid index is uniform with bell-curve loss weights)")

    def _z(self, sigma: torch.Tensor) -> torch.Tensor:
        """The standard-normal quantile whose transform is ``sigma`` (the inverse of :meth:`_sigma`)."""
        if self.name == "shifted":  # undo the shift: s = sigma / (shift - (shift - 1) * sigma)
            sigma = sigma / (self.shift - (self.shift - 1) * sigma)
        logit = torch.logit(sigma.double())
        if self.name == "logit_normal":
            return (logit - self.logit_mean) / self.logit_std
        return logit / self.sigmoid_scale

    def _sigma(self, z: torch.Tensor) -> torch.Tensor:
        if self.name == "logit_normal":
            return torch.sigmoid(self.logit_mean + self.logit_std * z)
        s = torch.sigmoid(self.sigmoid_scale * z)
        if self.name == "shifted":
            s = self.shift * s / (1 + (self.shift - 1) * s)
        return s

    def cdf(self, sigma: torch.Tensor) -> torch.Tensor:
        """P(drawn sigma <= ``sigma``) of the untruncated distribution."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if self.name == "uniform":
            return sigma.clamp(0, 1)
        return torch.special.ndtr(self._z(sigma.clamp(0, 1)))

    def draw_sigma(self, generator: torch.Generator | None, low: float, high: float) -> torch.Tensor:
        """One sigma in ``[low, high]`` (the boundaries' range), shape (1,), float32."""
        u = torch.rand((1,), generator=generator, dtype=torch.float64)
        if self.name == "uniform":
            return (low + (high - low) * u).float()
        lo, hi = self.cdf(torch.tensor(low)), self.cdf(torch.tensor(high))
        p = (lo + (hi - lo) * u).clamp(1e-12, 1 - 1e-12)
        return self._sigma(torch.special.ndtri(p)).clamp(low, high).float()


DIFFSYNTH_SAMPLING = TimestepSampling()


@dataclass(frozen=True)
class FlowMatchSchedule:
    """The 1000-step training grid of one family: ``sigmas`` (1 → small), ``timesteps`` (= 1000·σ), ``weights``."""

    family: str
    sigmas: torch.Tensor
    timesteps: torch.Tensor
    weights: torch.Tensor
    sampling: TimestepSampling = field(default=DIFFSYNTH_SAMPLING)

    def with_sampling(self, sampling: TimestepSampling) -> "FlowMatchSchedule":
        """The same grid drawing its training timesteps as ``sampling`` says (validation still uses the grid)."""
        return replace(self, sampling=sampling)

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
        """One training draw: (t, sigma, weight), each of shape (1,).

        ``diffsynth``: uniform grid index in the boundary range, then :meth:`lookup`. Otherwise a continuous sigma
        from the chosen distribution truncated to the sigmas the boundaries span (grid point ``lo`` down to grid
        point ``hi``, or 0 when ``hi`` is the grid's end), weight 1."""
        lo, hi = self.index_range(min_boundary, max_boundary)
        if self.sampling.name == "diffsynth":
            idx = torch.randint(lo, hi, (1,), generator=generator)
            return self.lookup(self.timesteps[idx])
        high = float(self.sigmas[lo])
        low = float(self.sigmas[hi]) if hi < len(self.sigmas) else 0.0
        sigma = self.sampling.draw_sigma(generator, low, high)
        return sigma * NUM_TRAIN_TIMESTEPS, sigma, torch.ones_like(sigma)

    def sigma_for(self, sigma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t, sigma, weight) at the grid point nearest a requested sigma (used for fixed-sigma validation)."""
        idx = torch.argmin((self.sigmas - sigma).abs()).reshape(1)
        return self.lookup(self.timesteps[idx])
