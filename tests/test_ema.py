"""train.ema_decay: the EMA follows ema = d * ema + (1 - d) * w after every optimizer step, is written beside each
checkpoint, and survives an interrupted run exactly (with the other training options of this module on)."""
import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from diffsynth.training.ema import EMA
from diffsynth.training.loop import Trainer, TrainingInterrupted, run_training
from diffsynth.training.module import TrainingModule
from helpers import tiny_config

SHORT = dict(train__num_epochs=1, validation__num_samples=1, sample__prompts=[])


@pytest.mark.slow
def test_ema_follows_the_decay_formula_and_is_saved_beside_the_checkpoint(tmp_path, shapes_dataset, tiny_env,
                                                                         monkeypatch):
    decay = 0.8
    raw = []  # the trained weights after each optimizer step, as the EMA update sees them
    original = EMA.update

    def recording(self):
        raw.append({n: p.detach().clone() for n, p in self.params.items()})
        original(self)

    monkeypatch.setattr(EMA, "update", recording)
    config = tiny_config(tmp_path, shapes_dataset, train__ema_decay=decay, train__max_steps=6,
                         gradient__gradient_accumulation_steps=2, **SHORT)
    trainer = Trainer(config)
    start = {n: p.detach().clone() for n, p in trainer.ema.params.items()}
    trainer.run()
    assert len(raw) == 3  # 6 micro-steps, accumulation 2: three optimizer steps, three updates
    expected = start
    for weights in raw:
        expected = {n: decay * expected[n] + (1 - decay) * weights[n] for n in expected}
    final = raw[-1]
    moved = 0
    for name, value in trainer.ema.shadow.items():
        assert torch.allclose(value, expected[name], rtol=1e-6, atol=1e-7), name
        moved += not torch.allclose(value, final[name])
    assert moved > 0, "the EMA lags the raw weights"
    # written beside the checkpoint, with the same keys, holding the EMA
    plain = load_file(str(tmp_path / "out/epoch-0.safetensors"))
    ema = load_file(str(tmp_path / "out/epoch-0.ema.safetensors"))
    assert ema.keys() == plain.keys()
    for name, value in expected.items():
        key = name.removeprefix("pipe.dit.")
        assert torch.allclose(ema[key], value, rtol=1e-6, atol=1e-7)
        assert torch.equal(plain[key], final[name])


@pytest.mark.slow
def test_resume_is_exact_with_ema_and_the_new_options(tmp_path, shapes_dataset, tiny_env, monkeypatch):
    """8 steps in one go == 3 steps, SIGTERM, resume: identical weights and EMA (logit-normal timesteps, LoRA+)."""
    overrides = dict(train__max_steps=8, train__ema_decay=0.9, train__timestep_sampling="logit_normal",
                     train__loraplus_lr_ratio=4.0, **SHORT)
    run_training(tiny_config(tmp_path / "straight", shapes_dataset, **overrides))

    calls = {"n": 0}
    original = TrainingModule.forward

    def forward_then_signal(self, item):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, item)

    monkeypatch.setattr(TrainingModule, "forward", forward_then_signal)
    with pytest.raises(TrainingInterrupted):
        run_training(tiny_config(tmp_path / "resumed", shapes_dataset, **overrides))
    state = tmp_path / "resumed/out/state"
    assert json.loads((state / "meta.json").read_text())["step"] == 3 and (state / "ema.safetensors").exists()
    monkeypatch.setattr(TrainingModule, "forward", original)
    result = run_training(tiny_config(tmp_path / "resumed", shapes_dataset, **overrides))
    assert result.resumed_from_step == 3 and result.steps == 8
    for name in ("epoch-0.safetensors", "epoch-0.ema.safetensors"):
        a = load_file(str(tmp_path / "straight/out" / name))
        b = load_file(str(tmp_path / "resumed/out" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a = load_file(str(tmp_path / "straight/out/epoch-0.safetensors"))
    e = load_file(str(tmp_path / "straight/out/epoch-0.ema.safetensors"))
    assert any(not torch.equal(a[k], e[k]) for k in a)
