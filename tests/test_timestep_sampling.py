"""train.timestep_sampling: each choice draws the distribution SD3 / kohya / musubi define, the default draws exactly
what DiffSynth's uniform grid index draws, and a tiny twin trains with a continuous choice at loss weight 1."""
import math

import pytest
import torch

from diffsynth.config import config_from_dict
from diffsynth.training import loss as loss_module
from diffsynth.training.loop import run_training
from diffsynth.training.schedule import FlowMatchSchedule, TimestepSampling
from helpers import tiny_config

N = 8000
# Kolmogorov-Smirnov critical value at alpha = 0.001: a correct sampler fails one seed in a thousand
KS_BOUND = 1.95 / math.sqrt(N)


def phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def logit(x: float) -> float:
    return math.log(x / (1 - x))


# each distribution's CDF written from its definition (sigma = f(z), z ~ N(0,1)), independently of the sampler
CDFS = {
    "uniform": (TimestepSampling("uniform"), lambda x: x),
    "logit_normal": (TimestepSampling("logit_normal", logit_mean=0.3, logit_std=1.2),
                     lambda x: phi((logit(x) - 0.3) / 1.2)),
    "sigmoid": (TimestepSampling("sigmoid", sigmoid_scale=0.8), lambda x: phi(logit(x) / 0.8)),
    # s = sigmoid(scale z); sigma = shift s / (1 + (shift-1) s)  <=>  s = sigma / (shift - (shift-1) sigma)
    "shifted": (TimestepSampling("shifted", sigmoid_scale=1.0, shift=3.0),
                lambda x: phi(logit(x / (3.0 - 2.0 * x)) / 1.0)),
}


def ks_statistic(draws: torch.Tensor, cdf, lo: float = 0.0, hi: float = 1.0) -> float:
    """sup |F_empirical - F| of ``draws`` against ``cdf`` truncated to [lo, hi]."""
    x = sorted(draws.tolist())
    f_lo = cdf(lo) if lo > 0 else 0.0
    f_hi = cdf(hi) if hi < 1 else 1.0
    worst = 0.0
    for i, v in enumerate(x):
        f = (cdf(min(max(v, 1e-12), 1 - 1e-12)) - f_lo) / (f_hi - f_lo)
        worst = max(worst, abs(f - i / len(x)), abs(f - (i + 1) / len(x)))
    return worst


def draws(schedule, n=N, seed=0, boundaries=(0.0, 1.0)):
    g = torch.Generator().manual_seed(seed)
    out = [schedule.sample(g, *boundaries) for _ in range(n)]
    return tuple(torch.cat(parts) for parts in zip(*out))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CDFS))
def test_drawn_sigmas_follow_the_chosen_distribution(name):
    sampling, cdf = CDFS[name]
    schedule = FlowMatchSchedule.for_family("qwen_image").with_sampling(sampling)
    t, sigma, weight = draws(schedule)
    stat = ks_statistic(sigma, cdf)
    print(f"\n{name}: KS = {stat:.4f} (bound {KS_BOUND:.4f}), mean sigma {sigma.mean():.3f}")
    assert stat < KS_BOUND
    assert torch.equal(weight, torch.ones(N)), "continuous choices train at loss weight 1"
    assert torch.allclose(t, sigma * 1000)
    # a wrong distribution is caught: the uniform CDF does not fit the non-uniform choices
    if name != "uniform":
        assert ks_statistic(sigma, lambda x: x) > 2 * KS_BOUND


def test_boundaries_truncate_the_distribution_to_the_grid_range():
    sampling, cdf = CDFS["logit_normal"]
    schedule = FlowMatchSchedule.for_family("qwen_image").with_sampling(sampling)
    lo_idx, hi_idx = schedule.index_range(0.2, 0.6)
    high, low = schedule.sigmas[lo_idx].item(), schedule.sigmas[hi_idx].item()
    _, sigma, _ = draws(schedule, boundaries=(0.2, 0.6))
    assert low <= sigma.min() and sigma.max() <= high
    assert ks_statistic(sigma, cdf, low, high) < KS_BOUND


def test_default_draws_exactly_as_the_diffsynth_grid_index():
    """The default sampler against DiffSynth's code path written out here: uniform grid index, bf16 timestep,
    nearest grid point's sigma and bell-curve weight; same values, same generator consumption."""
    schedule = FlowMatchSchedule.for_family("qwen_image")
    assert schedule.sampling.name == "diffsynth"
    assert schedule.with_sampling(TimestepSampling.from_config(config_from_dict({}, check=False).train)
                                  ).sampling == schedule.sampling
    for boundaries in ((0.0, 1.0), (0.0, 0.358)):
        g_new, g_ref = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        lo, hi = int(boundaries[0] * 1000), int(boundaries[1] * 1000)
        for _ in range(500):
            t, sigma, weight = schedule.sample(g_new, *boundaries)
            idx = torch.randint(lo, hi, (1,), generator=g_ref)
            t_ref = schedule.timesteps[idx].to(torch.bfloat16).float()
            near = torch.argmin((schedule.timesteps - t_ref).abs())
            assert torch.equal(t, t_ref)
            assert torch.equal(sigma, schedule.sigmas[near].reshape(1))
            assert torch.equal(weight, schedule.weights[near].reshape(1))
        assert torch.equal(g_new.get_state(), g_ref.get_state())


@pytest.mark.slow
def test_tiny_twin_trains_with_logit_normal(tmp_path, shapes_dataset, tiny_env, monkeypatch, capsys):
    seen = []
    original = loss_module.draw

    def recording(*args):
        t, sigma, weight, noise = original(*args)
        seen.append((t, sigma, weight))
        return t, sigma, weight, noise

    monkeypatch.setattr(loss_module, "draw", recording)  # the training draws only (validation uses fixed sigmas)
    config = tiny_config(tmp_path, shapes_dataset, train__max_steps=3, train__num_epochs=1,
                         train__timestep_sampling="logit_normal", validation__num_samples=1, sample__prompts=[])
    result = run_training(config)
    assert "timestep_sampling logit_normal(mean=0.0, std=1.0)" in capsys.readouterr().out
    assert result.steps == 3 and all(math.isfinite(v) for _, v in result.loss_history)
    grid = FlowMatchSchedule.for_family("qwen_image").sigmas
    assert len(seen) == 3
    for t, sigma, weight in seen:
        assert torch.allclose(t, sigma * 1000) and torch.equal(weight, torch.ones(1))
        assert (grid - sigma).abs().min() > 0  # off the grid: drawn continuously
