"""The shipped DeepSpeed configs, checked by DeepSpeed's own config validation (optional extra `deepspeed`).

DeepSpeed cannot train here (accelerate has no CPU path for it; see docs/distributed.md), so this checks what can be checked
on a CPU: the DeepSpeed JSON that accelerate builds from each config file is accepted by DeepSpeed."""
import json

import pytest
import yaml
from accelerate.utils import DeepSpeedPlugin

from helpers import REPO

CONFIGS = sorted((REPO / "configs" / "accelerate").glob("deepspeed_*.yaml"))


def _deepspeed_config(path):
    """The JSON accelerate hands DeepSpeed for this file, its "auto" values filled as accelerate fills them
    (batch size 1 per process, as DiffSynth; one process, so the batch arithmetic checks at any scale)."""
    cfg = yaml.safe_load(path.read_text())
    kwargs = dict(cfg["deepspeed_config"])
    if "deepspeed_config_file" in kwargs:  # a DeepSpeed JSON beside it (accelerate passes it as hf_ds_config)
        kwargs["hf_ds_config"] = str(REPO / kwargs.pop("deepspeed_config_file"))
    plugin = DeepSpeedPlugin(**kwargs)  # an unknown key in the file fails here
    plugin.set_mixed_precision(cfg.get("mixed_precision", "no"))
    gas = plugin.deepspeed_config["gradient_accumulation_steps"]
    gas = 1 if gas == "auto" else gas  # a JSON's "auto": accelerate fills in the run's value (DiffSynth: 1)
    plugin.deepspeed_config_process(must_match=True, train_micro_batch_size_per_gpu=1, train_batch_size=gas,
                                    gradient_clipping=1.0, gradient_accumulation_steps=gas)
    return cfg, plugin.deepspeed_config


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_deepspeed_config_passes_deepspeed_validation(path):
    pytest.importorskip("deepspeed", reason="optional extra: pip install -e '.[deepspeed]'")
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg, ds = _deepspeed_config(path)
    assert "auto" not in str(ds), ds
    checked = DeepSpeedConfig(ds)
    wanted = cfg["deepspeed_config"]
    if "deepspeed_config_file" in wanted:  # the JSON's own values, as the accelerate keys would say them
        raw = json.loads((REPO / wanted["deepspeed_config_file"]).read_text())["zero_optimization"]
        wanted = {"zero_stage": raw["stage"], "offload_optimizer_device": raw["offload_optimizer"]["device"],
                  "offload_param_device": raw["offload_param"]["device"],
                  "zero3_save_16bit_model": raw["stage3_gather_16bit_weights_on_model_save"]}
    assert checked.zero_optimization_stage == wanted["zero_stage"]
    assert checked.bfloat16_config.enabled == (cfg.get("mixed_precision", "no") == "bf16")
    offload = checked.zero_config.offload_optimizer
    assert (offload.device if offload else "none") == wanted["offload_optimizer_device"]
    offload = checked.zero_config.offload_param
    assert (offload.device if offload else "none") == wanted["offload_param_device"]
    assert checked.zero_config.gather_16bit_weights_on_model_save == wanted.get("zero3_save_16bit_model", False)


def test_deepspeed_validation_rejects_a_bad_config():
    """The check above can fail: DeepSpeed refuses an offload device it does not know."""
    pytest.importorskip("deepspeed", reason="optional extra: pip install -e '.[deepspeed]'")
    from deepspeed.runtime.config import DeepSpeedConfig

    _, ds = _deepspeed_config(CONFIGS[0])
    ds["zero_optimization"]["offload_optimizer"]["device"] = "gpu"
    with pytest.raises(Exception, match="offload_optimizer"):
        DeepSpeedConfig(ds)


def test_low_vram_zero3_offload_config_is_diffsynths():
    """DiffSynth's Qwen-Image low_vram_training config: ZeRO-3, parameters and optimizer on pinned CPU memory,
    its bucket and prefetch sizes, 16-bit weights gathered on save, one process."""
    pytest.importorskip("deepspeed", reason="optional extra: pip install -e '.[deepspeed]'")
    cfg, ds = _deepspeed_config(REPO / "configs" / "accelerate" / "deepspeed_zero3_offload.yaml")
    assert cfg["num_processes"] == 1 and cfg["deepspeed_config"]["zero3_init_flag"] is True
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert (zero["stage3_max_live_parameters"], zero["stage3_prefetch_bucket_size"], zero["reduce_bucket_size"]) \
        == (1e8, 5e7, 5e7)
