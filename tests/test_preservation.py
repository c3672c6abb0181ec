"""Prior preservation (a regularisation dataset whose loss is weighted: dataset.datasets[k].weight) and differential
output preservation (train.dop_weight / dop_class, ai-toolkit's DOP)."""
import pytest
import torch

from diffsynth.config import ConfigError
from diffsynth.training.loss import flow_match_loss
from helpers import tiny_config


class _Scale:
    """A denoiser predicting ``scale * noisy``."""

    def __init__(self):
        self.scale = torch.tensor(2.0, requires_grad=True)

    def predict(self, noisy, t, inputs):
        return noisy * self.scale


class _Fixed:
    def sample(self, generator, lo, hi):
        return torch.tensor([500.0]), torch.tensor([0.5]), torch.tensor([1.0])


def test_prior_preservation_weight_scales_only_the_regularisation_samples():
    """A batch of one training and one regularisation sample (dataset weight 0.3): the loss is the mean of
    ``1 * l_train`` and ``0.3 * l_reg``, each sample's own loss as it would be alone."""
    latents = torch.randn(2, 4, 4, 4)
    pipe = _Scale()

    def loss(inputs, seed=0):
        return flow_match_loss(pipe, _Fixed(), inputs, torch.Generator().manual_seed(seed))

    alone = []
    gen = torch.Generator().manual_seed(0)
    for i in range(2):  # the draws of sample i of the batch are the i-th single-sample draws of the same generator
        alone.append(flow_match_loss(pipe, _Fixed(), {"latents": latents[i:i + 1]}, gen))
    mixed = loss({"latents": latents, "loss_weight": torch.tensor([1.0, 0.3])})
    torch.testing.assert_close(mixed, (alone[0] + 0.3 * alone[1]) / 2)
    zero = loss({"latents": latents, "loss_weight": torch.tensor([1.0, 0.0])})
    torch.testing.assert_close(zero, alone[0] / 2)


def test_dop_keys_are_refused_where_they_cannot_work(tmp_path, shapes_dataset):
    base = dict(train__dop_weight=1.0, dataset__trigger_word="sks")
    with pytest.raises(ConfigError, match="dop_class"):
        tiny_config(tmp_path, shapes_dataset, **base)
    with pytest.raises(ConfigError, match="trigger_word"):
        tiny_config(tmp_path, shapes_dataset, train__dop_weight=1.0, train__dop_class="shape")
    with pytest.raises(ConfigError, match="encoder cache"):
        tiny_config(tmp_path, shapes_dataset, **base, train__dop_class="shape", cache__enabled=True)
    config = tiny_config(tmp_path, shapes_dataset, **base, train__dop_class="shape")
    assert config.train.dop_weight == 1.0  # the default 0 is off


@pytest.mark.slow
def test_dop_is_zero_at_init_positive_after_the_lora_moves_and_trains_only_the_adapter(
        tmp_path, shapes_dataset, tiny_env):
    from diffsynth.training.loop import Trainer
    config = tiny_config(tmp_path, shapes_dataset, train__dop_weight=1.0, train__dop_class="shape",
                         dataset__trigger_word="sks", train__max_steps=1, train__num_epochs=1,
                         validation__num_samples=1, sample__prompts=[])
    trainer = Trainer(config)
    module = trainer.accelerator.unwrap_model(trainer.model)
    item = {**trainer.dataset[0], "prompt": "a sks red circle"}
    assert module.preservation.class_item(item)["prompt"] == "a shape red circle"
    batch = module.pipe.collate([module.encode(item)])
    term = module._preservation([item], batch)
    noisy = torch.randn(batch["latents"].shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500.0])
    assert term(noisy, t).item() == 0.0  # LoRA B = 0: with and without the adapter predict the same
    with torch.no_grad():
        for name, p in module.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.05)
    value = term(noisy, t)
    assert value.item() > 0
    value.backward()
    grads = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    assert grads and all(".lora_" in n for n in grads), [n for n in grads if ".lora_" not in n][:3]
    assert any(g.abs().sum() > 0 for n, g in grads.items() if ".lora_A." in n)
    module.zero_grad()
    result = trainer.run()  # the whole step with the DOP term
    assert result.steps == 1 and all(torch.isfinite(torch.tensor(v)) for _, v in result.loss_history)
