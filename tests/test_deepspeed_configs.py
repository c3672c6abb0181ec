"""The shipped DeepSpeed configs, checked by DeepSpeed's own config validation (optional extra `deepspeed`).

DeepSpeed cannot train here (accelerate has no CPU path for it; see docs/distributed.md), so this checks what can be checked
on a CPU: the DeepSpeed JSON that accelerate builds from each config file is accepted by DeepSpeed."""
import pytest
import yaml
from accelerate.utils import DeepSpeedPlugin

from helpers import REPO

CONFIGS = sorted((REPO / "configs" / "accelerate").glob("deepspeed_*.yaml"))


def _deepspeed_config(path):
    """The JSON accelerate hands DeepSpeed for this file, its "auto" values filled as accelerate fills them
    (batch size 1 per process, as DiffSynth; one process, so the batch arithmetic checks at any scale)."""
    cfg = yaml.safe_load(path.read_text())
    plugin = DeepSpeedPlugin(**cfg["deepspeed_config"])  # an unknown key in the file fails here
    plugin.set_mixed_precision(cfg["mixed_precision"])
    gas = plugin.deepspeed_config["gradient_accumulation_steps"]
    plugin.deepspeed_config_process(must_match=True, train_micro_batch_size_per_gpu=1, train_batch_size=gas,
                                    gradient_clipping=1.0)
    return cfg, plugin.deepspeed_config


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_deepspeed_config_passes_deepspeed_validation(path):
    pytest.importorskip("deepspeed", reason="optional extra: pip install -e '.[deepspeed]'")
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg, ds = _deepspeed_config(path)
    assert "auto" not in str(ds), ds
    checked = DeepSpeedConfig(ds)
    wanted = cfg["deepspeed_config"]
    assert checked.zero_optimization_stage == wanted["zero_stage"]
    assert checked.bfloat16_config.enabled == (cfg["mixed_precision"] == "bf16")
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
