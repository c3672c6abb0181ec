"""model.fp8_models in training: frozen base weights stored in fp8, LoRA still trains."""
import math

import pytest
import torch

from diffsynth.errors import ConfigError
from diffsynth.training.loop import Trainer
from helpers import tiny_config

from conftest import TINY_QWEN_MODELS



@pytest.mark.slow
def test_fp8_dit_trains_lora(tmp_path, shapes_dataset, tiny_env):
    dit_entry = TINY_QWEN_MODELS.split(",")[0]
    config = tiny_config(tmp_path, shapes_dataset, model__fp8_models=dit_entry, train__max_steps=4,
                         validation__num_samples=1, sample__prompts=[])
    trainer = Trainer(config)
    to_q = trainer.pipe.dit.transformer_blocks[0].attn.to_q
    assert to_q.base_layer.weight.dtype == torch.float8_e4m3fn
    assert to_q.lora_A["default"].weight.dtype == torch.float32 and to_q.lora_A["default"].weight.requires_grad
    assert trainer.pipe.vae.encoder.conv_in.weight.dtype == torch.float32  # only the listed entry
    before = to_q.lora_B["default"].weight.detach().clone()
    result = trainer.run()
    assert all(math.isfinite(v) for _, v in result.loss_history)
    assert not torch.equal(before, to_q.lora_B["default"].weight)


def test_fp8_entry_must_be_a_model_entry(tmp_path, shapes_dataset, tiny_env):
    config = tiny_config(tmp_path, shapes_dataset, model__fp8_models="Qwen/Qwen-Image:transformer/*.safetensors")
    with pytest.raises(ConfigError, match="not model entries"):
        Trainer(config)
