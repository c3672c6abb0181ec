"""train.optimizer (AdamW 8-bit, Prodigy, Adafactor as optional extras) and LoRA+ (train.loraplus_lr_ratio)."""
import math
import sys

import pytest
import torch

from diffsynth.errors import ConfigError
from diffsynth.training.loop import Trainer
from diffsynth.training.optim import build_optimizer
from helpers import tiny_config

SHORT = dict(train__max_steps=2, train__num_epochs=1, validation__num_samples=1, sample__prompts=[])


def named_lora():
    torch.manual_seed(0)
    return [("pipe.dit.a.lora_A.default.weight", torch.nn.Parameter(torch.randn(4, 8))),
            ("pipe.dit.a.lora_B.default.weight", torch.nn.Parameter(torch.randn(8, 4))),
            ("pipe.dit.norm.weight", torch.nn.Parameter(torch.randn(8)))]


def test_loraplus_puts_the_b_matrices_in_a_group_at_ratio_times_the_rate(tmp_path, shapes_dataset):
    named = named_lora()
    opt = build_optimizer(tiny_config(tmp_path, shapes_dataset, train__loraplus_lr_ratio=16.0), named)
    base, b = opt.param_groups
    assert [id(p) for p in b["params"]] == [id(named[1][1])]
    assert {id(p) for p in base["params"]} == {id(named[0][1]), id(named[2][1])}
    assert b["lr"] == 16 * base["lr"] == 16 * 0.002
    # off by default: one group of all parameters, as before
    plain = build_optimizer(tiny_config(tmp_path, shapes_dataset), named)
    assert len(plain.param_groups) == 1 and len(plain.param_groups[0]["params"]) == 3
    with pytest.raises(ConfigError, match="loraplus_lr_ratio"):
        build_optimizer(tiny_config(tmp_path, shapes_dataset, train__loraplus_lr_ratio=4.0), [named[2]])


def test_missing_package_names_the_extra(tmp_path, shapes_dataset, monkeypatch):
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # import prodigyopt -> ImportError
    with pytest.raises(ConfigError, match=r"train.optimizer prodigy needs the prodigyopt package.*\[prodigy\]"):
        build_optimizer(tiny_config(tmp_path, shapes_dataset, train__optimizer="prodigy"), named_lora())
    with pytest.raises(ConfigError, match="both choose the optimizer"):
        build_optimizer(tiny_config(tmp_path, shapes_dataset, train__optimizer="adafactor",
                                    train__customized_optimizer="torch.optim.SGD"), named_lora())


def test_adamw8bit_state_is_8bit(tmp_path, shapes_dataset):
    named = [("w", torch.nn.Parameter(torch.randn(64, 128)))]  # >= bnb's min_8bit_size (4096 elements)
    opt = build_optimizer(tiny_config(tmp_path, shapes_dataset, train__optimizer="adamw8bit"), named)
    named[0][1].grad = torch.randn(64, 128)
    opt.step()
    state = opt.state[named[0][1]]
    assert state["state1"].dtype == torch.uint8 and state["state2"].dtype == torch.uint8
    assert state["state1"].shape == (64, 128)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adamw8bit", "prodigy", "adafactor"])
def test_each_optimizer_trains_the_tiny_twin(name, tmp_path, shapes_dataset, tiny_env):
    """Two steps with finite loss; the weights move; LoRA+ (ratio 16) keeps B's group at 16x through the schedule;
    with 8-bit AdamW the state of every LoRA matrix bnb quantises (>= 4096 elements: rank 64 x 64) is uint8."""
    ratio = None if name == "prodigy" else 16.0  # Prodigy refuses per-group lrs (refused by name in the config)
    config = tiny_config(tmp_path, shapes_dataset, train__optimizer=name, train__loraplus_lr_ratio=ratio,
                         lora__lora_rank=64, **SHORT)
    trainer = Trainer(config)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    result = trainer.run()
    assert result.steps == 2 and all(math.isfinite(v) for _, v in result.loss_history)
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before if ".lora_B." in n)
    optimizer = trainer.optimizer.optimizer
    if ratio is None:
        with pytest.raises(ConfigError, match="prodigy"):
            tiny_config(tmp_path, shapes_dataset, train__optimizer=name, train__loraplus_lr_ratio=16.0)
        return
    base, b = optimizer.param_groups
    assert b["lr"] == pytest.approx(16 * base["lr"])
    b_names = {n for n in before if ".lora_B." in n}
    assert {id(after[n]) for n in b_names} == {id(p) for p in b["params"]}
    if name == "adamw8bit":
        big = [p for p in after.values() if p.requires_grad and p.numel() >= 4096]
        assert big and all(optimizer.state[p]["state1"].dtype == torch.uint8
                           and optimizer.state[p]["state2"].dtype == torch.uint8 for p in big)
