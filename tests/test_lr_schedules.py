"""Learning-rate schedules: exact values (hand formulas and diffusers' own functions), decay length, resume."""
import math

import pytest
import torch
from diffusers.optimization import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                                    get_linear_schedule_with_warmup)
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from diffsynth.config import config_from_dict
from diffsynth.errors import ConfigError
from diffsynth.training import state as train_state
from diffsynth.training.optim import Schedule, total_optimizer_steps


def _optimizer(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def ours(name, steps, warmup=0, total=None, min_ratio=0.0, processes=1, lr=1.0):
    opt = _optimizer(lr)
    sched, out = Schedule(opt, name, warmup, processes, total, min_ratio), []
    for _ in range(steps):
        out.append(sched.lr())
        opt.step()
        sched.step()
    return out


def theirs(make, steps, lr=1.0):
    opt = _optimizer(lr)
    sched, out = make(opt), []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("warmup,total", [(0, 10), (3, 10), (4, 37), (1, 2)])
def test_schedules_equal_diffusers_and_transformers(warmup, total):
    n = total + 1  # up to and including the step where the decay reaches its end
    lr = 2e-4
    assert ours("cosine", n, warmup, total, lr=lr) == pytest.approx(
        theirs(lambda o: get_cosine_schedule_with_warmup(o, warmup, total), n, lr), abs=1e-15)
    assert ours("linear", n, warmup, total, lr=lr) == pytest.approx(
        theirs(lambda o: get_linear_schedule_with_warmup(o, warmup, total), n, lr), abs=1e-15)
    assert ours("linear", n, warmup, total, 0.2, lr=lr) == pytest.approx(
        theirs(lambda o: get_linear_schedule_with_warmup(o, warmup, total, f_min=0.2), n, lr), abs=1e-15)
    assert ours("cosine", n, warmup, total, 0.2, lr=lr) == pytest.approx(
        theirs(lambda o: get_cosine_with_min_lr_schedule_with_warmup(o, warmup, total, min_lr_rate=0.2), n, lr),
        abs=1e-15)
    assert ours("constant_with_warmup", n, warmup, lr=lr) == pytest.approx(
        theirs(lambda o: get_constant_schedule_with_warmup(o, warmup), n, lr), abs=1e-15)


def test_exact_values_at_chosen_steps():
    # warm-up 2, decay over steps 2..10: step s (0-based) runs at s/2 during warm-up
    cos = ours("cosine", 13, warmup=2, total=10)
    assert cos[:3] == [0.0, 0.5, 1.0]
    assert cos[4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 8)))
    assert cos[6] == pytest.approx(0.5)  # half way through the decay
    assert cos[10] == pytest.approx(0.0) and cos[12] == pytest.approx(0.0)  # stays at the floor past the end
    lin = ours("linear", 13, warmup=2, total=10, min_ratio=0.1)
    assert lin[:3] == [0.0, 0.5, 1.0]
    assert lin[6] == pytest.approx(0.1 + 0.9 * 0.5)
    assert lin[8] == pytest.approx(0.1 + 0.9 * 0.25)
    assert lin[10] == pytest.approx(0.1) and lin[12] == pytest.approx(0.1)
    assert ours("cosine", 11, warmup=2, total=10, min_ratio=0.1)[6] == pytest.approx(0.1 + 0.9 * 0.5)


def test_total_optimizer_steps():
    assert total_optimizer_steps(batches_per_epoch=10, num_epochs=3, accumulation=1) == 30
    assert total_optimizer_steps(10, 3, accumulation=4) == 7          # 30 micro-steps, 2 left over
    assert total_optimizer_steps(10, 3, accumulation=4, max_steps=12) == 3
    assert total_optimizer_steps(10, 3, accumulation=1, max_steps=100) == 30  # epochs end first


def test_decay_longer_than_the_run_is_refused():
    with pytest.raises(ConfigError, match="lr_warmup_steps"):
        Schedule(_optimizer(), "cosine", 10, 1, total_steps=10)
    with pytest.raises(ConfigError, match="nothing to decay"):
        Schedule(_optimizer(), "linear", 0, 1, total_steps=0)


@pytest.mark.parametrize("name,warmup,processes", [("cosine", 3, 1), ("linear", 2, 1),
                                                   ("constant_with_warmup", 4, 1), ("diffsynth", 0, 2)])
def test_resume_continues_the_same_lr_sequence(tmp_path, name, warmup, processes):
    straight = ours(name, 12, warmup, 12, processes=processes)
    opt = _optimizer()
    first, seen = Schedule(opt, name, warmup, processes, 12), []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])  # the lr the optimizer really uses
        opt.step()
        first.step()
    train_state.save_structure(first.state_dict(), tmp_path, "scheduler")  # the loop's on-disk round trip
    opt = _optimizer()
    second = Schedule(opt, name, warmup, processes, 12)
    second.load_state_dict(train_state.load_structure(tmp_path, "scheduler"))
    for _ in range(7):
        seen.append(opt.param_groups[0]["lr"])
        assert second.lr() == seen[-1]
        opt.step()
        second.step()
    assert seen == pytest.approx(straight, abs=0)


def test_resume_with_another_decay_length_is_refused():
    state = Schedule(_optimizer(), "cosine", 2, 1, total_steps=20).state_dict()
    with pytest.raises(ConfigError, match="total_steps"):
        Schedule(_optimizer(), "cosine", 2, 1, total_steps=30).load_state_dict(state)
    # constant schedules do not depend on the run's length
    Schedule(_optimizer(), "constant", 0, 1, total_steps=30).load_state_dict(
        Schedule(_optimizer(), "constant", 0, 1, total_steps=20).state_dict())


@pytest.mark.parametrize("train,match", [
    ({"lr_scheduler": "constant", "lr_warmup_steps": 5}, "no effect with lr_scheduler constant"),
    ({"lr_scheduler": "constant_with_warmup", "lr_min_ratio": 0.1}, "only applies to lr_scheduler cosine"),
    ({"lr_scheduler": "cosine", "lr_min_ratio": 1.5}, "between 0 and 1"),
    ({"lr_scheduler": "exponential"}, "lr_scheduler"),
])
def test_bad_schedule_params_are_refused(train, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"train": train})


@pytest.mark.slow
def test_a_run_decays_over_its_optimizer_steps(tmp_path, shapes_dataset, tiny_env):
    """8 micro-steps with accumulation 2 are 4 optimizer steps: the logged lr (the one each step used) follows
    linear decay over exactly those 4, so the decay length the trainer computes is the one it runs."""
    from helpers import tiny_config

    from diffsynth.training.loop import run_training
    run_training(tiny_config(tmp_path, shapes_dataset, train__max_steps=8, train__lr_scheduler="linear",
                             train__lr_warmup_steps=1, train__learning_rate=0.003,
                             gradient__gradient_accumulation_steps=2, tracking__enable_csv_log=True,
                             validation__num_samples=1, sample__prompts=[], sample__out_dir=str(tmp_path / "s")))
    rows = [line.split(",") for line in (tmp_path / "out/loss.csv").read_text().splitlines()[1:]]
    lrs = [float(v) for _, k, v in rows if k == "lr"]
    per_optimizer_step = [0.0, 1.0, 2 / 3, 1 / 3]  # warm-up step at 0, then (4 - s) / (4 - 1)
    assert lrs == pytest.approx([0.003 * f for f in per_optimizer_step for _ in range(2)])
