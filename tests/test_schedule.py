"""The training sigma grids and loss weights against numbers computed by hand from DiffSynth's flow_match.py."""
import math

import pytest
import torch

from diffsynth.training import FlowMatchSchedule


def qwen_sigma(i: int) -> float:
    """Spec: s = linspace(1,0,1001)[:-1]; mu = 0.8 exponential shift; shift-terminal to 0.02."""
    def shifted(k):
        s = 1 - k / 1000
        return math.exp(0.8) / (math.exp(0.8) + (1 / s - 1))
    last = shifted(999)
    return 1 - (1 - shifted(i)) / ((1 - last) / (1 - 0.02))


def test_qwen_image_sigmas_by_hand():
    sched = FlowMatchSchedule.for_family("qwen_image")
    assert len(sched.sigmas) == 1000
    for i in (0, 1, 250, 500, 998, 999):
        assert sched.sigmas[i].item() == pytest.approx(qwen_sigma(i), abs=1e-6)
    # hand-evaluated: index 500 -> e^.8/(e^.8+1) = 0.689974 -> terminal stretch -> 0.695490
    assert sched.sigmas[500].item() == pytest.approx(0.695490, abs=1e-5)
    assert sched.sigmas[-1].item() == pytest.approx(0.02, abs=1e-6)
    assert torch.allclose(sched.timesteps, sched.sigmas * 1000)


def test_flux_and_wan_sigmas_by_hand():
    flux = FlowMatchSchedule.for_family("flux")
    s_end = 0.003 / 1.002
    assert flux.sigmas[0].item() == pytest.approx(1.0)
    assert flux.sigmas[-1].item() == pytest.approx(3 * s_end / (1 + 2 * s_end), rel=1e-5)  # 0.0089286
    assert flux.sigmas[-1].item() == pytest.approx(0.0089286, abs=1e-6)
    s = 1 - (1 - s_end) * 500 / 999  # linspace(1, s_end, 1000)[500]
    assert flux.sigmas[500].item() == pytest.approx(3 * s / (1 + 2 * s), abs=1e-6)

    wan = FlowMatchSchedule.for_family("wan")
    assert wan.sigmas[-1].item() == pytest.approx(5 * 0.001 / (1 + 4 * 0.001), abs=1e-7)  # 0.0049801
    assert wan.sigmas[300].item() == pytest.approx(5 * 0.7 / (1 + 4 * 0.7), abs=1e-6)


@pytest.mark.parametrize("family,peak", [("qwen_image", 1.68), ("flux", 1.79), ("wan", 2.08)])
def test_bell_curve_weights_by_hand(family, peak):
    sched = FlowMatchSchedule.for_family(family)
    sig = [v.item() for v in sched.sigmas.double()]
    y = [math.exp(-2 * ((1000 * s - 500) / 1000) ** 2) for s in sig]
    lo = min(y)
    total = sum(v - lo for v in y)
    expected = [(v - lo) * 1000 / total for v in y]
    for i in (0, 100, 500, 999):
        assert sched.weights[i].item() == pytest.approx(expected[i], abs=1e-4)
    assert sched.weights.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert sched.weights[0].item() == pytest.approx(0.0, abs=1e-6)  # zero at sigma = 1, farthest from t = 500
    assert sched.weights.max().item() == pytest.approx(peak, abs=0.01)  # spec: peaks ~1.68 / 1.79 / 2.08


def test_timestep_is_rounded_to_bf16_before_lookup():
    sched = FlowMatchSchedule.for_family("qwen_image")
    t_exact = sched.timesteps[123]
    t_rounded, sigma, weight = sched.lookup(t_exact.reshape(1))
    assert t_rounded.item() == t_exact.to(torch.bfloat16).float().item()
    nearest = torch.argmin((sched.timesteps - t_rounded).abs())
    assert sigma.item() == sched.sigmas[nearest].item()
    assert weight.item() == sched.weights[nearest].item()


def test_boundaries_restrict_the_grid():
    sched = FlowMatchSchedule.for_family("wan")
    assert sched.index_range(0.0, 0.417) == (0, 417)
    assert sched.index_range(0.417, 1.0) == (417, 1000)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        t, _, _ = sched.sample(g, 0.0, 0.417)
        assert t.item() >= sched.timesteps[417].item() - 4  # high-noise expert: t in [~875, 1000]
    with pytest.raises(ValueError, match="Empty timestep range"):
        sched.index_range(0.5, 0.5)


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match="known"):
        FlowMatchSchedule.for_family("sdxl")
