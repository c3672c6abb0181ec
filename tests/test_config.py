"""params.yaml <-> DiffSynth flags."""
import shlex
import subprocess
import sys

import pytest
import yaml

from diffsynth.command_line import config_from_args
from diffsynth.config import config_from_dict, flatten, load_params
from diffsynth.errors import ConfigError
from helpers import DEFAULT_PARAMS, DEFAULT_PARAMS_TEXT, REPO

# The seed document's Qwen-Image full-training command, verbatim after the script name.
SEED_QWEN_FULL = """--dataset_base_path data/example_image_dataset \
--dataset_metadata_path data/example_image_dataset/metadata.csv \
--max_pixels 1048576 \
--dataset_repeat 50 \
--model_id_with_origin_paths "Qwen/Qwen-Image:transformer/diffusion_pytorch_model*.safetensors,Qwen/Qwen-Image:text_encoder/model*.safetensors,Qwen/Qwen-Image:vae/diffusion_pytorch_model.safetensors" \
--learning_rate 1e-5 \
--num_epochs 2 \
--remove_prefix_in_ckpt "pipe.dit." \
--output_path "./models/train/Qwen-Image_full" \
--trainable_models "dit" \
--use_gradient_checkpointing \
--find_unused_parameters"""


def test_default_params_load_and_every_key_is_known(tmp_path):
    """The shipped params.yaml as committed (not the workspace's, which `dvc exp run -S` edits)."""
    (tmp_path / "params.yaml").write_text(DEFAULT_PARAMS_TEXT)
    config = load_params(tmp_path / "params.yaml")
    assert config.model.tiny_preset == "qwen-image"
    full = config.to_dict()
    assert set(DEFAULT_PARAMS) == set(full)
    for section, values in full.items():  # a key added to the config needs a value here too
        lacking = set(values) - set(DEFAULT_PARAMS[section])
        assert not lacking, (f"the committed params.yaml lacks {section}.{sorted(lacking)}: add the key to "
                             "params.yaml and commit it (the tests read `git show HEAD:./params.yaml`)")


def test_seed_document_command_gives_the_same_run():
    config = config_from_args(shlex.split(SEED_QWEN_FULL))
    assert config.dataset.dataset_base_path == "data/example_image_dataset"
    assert config.dataset.dataset_metadata_path == "data/example_image_dataset/metadata.csv"
    assert config.dataset.dataset_repeat == 50
    assert config.resolution.max_pixels == 1048576
    assert config.resolution.height is None and config.resolution.width is None
    assert config.model.model_id_with_origin_paths.count("Qwen/Qwen-Image:") == 3
    assert config.train.learning_rate == 1e-5
    assert config.train.num_epochs == 2
    assert config.train.trainable_models == "dit"
    assert config.train.find_unused_parameters is True
    assert config.gradient.use_gradient_checkpointing is True
    assert config.output.output_path == "./models/train/Qwen-Image_full"
    assert config.output.remove_prefix_in_ckpt == "pipe.dit."
    # flags not given keep DiffSynth's defaults
    assert config.train.weight_decay == 0.01
    assert config.lora.lora_rank == 32
    assert config.lora.lora_target_modules == "q,k,v,o,ffn.0,ffn.2"
    assert config.output.save_steps is None
    assert config.model.torch_dtype == "bfloat16"


def test_params_from_args_cli_prints_loadable_params(tmp_path):
    out = subprocess.run([sys.executable, "-m", "diffsynth.cli", "params", "--from-args", *shlex.split(SEED_QWEN_FULL)],
                         capture_output=True, text=True, check=True).stdout
    data = yaml.safe_load(out)
    assert data["train"]["learning_rate"] == 1e-5
    assert data["gradient"]["use_gradient_checkpointing"] is True
    assert config_from_dict(data).train.trainable_models == "dit"


def test_unknown_key_names_the_key_and_suggests():
    data = {"train": {"learnign_rate": 1.0}, "lora": {"lora_base_model": "dit"}}
    with pytest.raises(ConfigError, match=r"train\.learnign_rate.*learning_rate"):
        config_from_dict(data)


def test_bad_value_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.num_epochs = 'two'"):
        config_from_dict({"train": {"num_epochs": "two"}, "lora": {"lora_base_model": "dit"}})
    with pytest.raises(ConfigError, match="dataset.on_invalid"):
        config_from_dict({"dataset": {"on_invalid": "ignore"}, "lora": {"lora_base_model": "dit"}})


def test_unsupported_flag_is_an_error_not_ignored():
    from diffsynth.command_line import UNSUPPORTED_FLAGS
    flag, default = next(iter(UNSUPPORTED_FLAGS.items()))
    with pytest.raises(ConfigError, match=f"--{flag}"):
        config_from_args(["--lora_base_model", "dit", f"--{flag}", *([] if isinstance(default, bool) else ["x"])])


def test_nothing_to_train_is_refused():
    with pytest.raises(ConfigError, match="Nothing to train"):
        config_from_args(["--dataset_base_path", "x"])


def test_flatten_for_mlflow():
    flat = flatten({"train": {"learning_rate": 1e-4}, "sample": {"seeds": [0, 1]}})
    assert flat == {"train.learning_rate": 1e-4, "sample.seeds": "[0, 1]"}


def test_shipped_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file
    expected = {"single": ("NO", None), "ddp": ("MULTI_GPU", None), "deepspeed_zero2": ("DEEPSPEED", 2),
                "deepspeed_zero2_offload": ("DEEPSPEED", 2), "deepspeed_zero3": ("DEEPSPEED", 3), "fsdp": ("FSDP", None),
                "deepspeed_zero3_offload": ("DEEPSPEED", None)}
    for name, (kind, stage) in expected.items():
        config = load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
        assert config.distributed_type.value == kind, name
        if stage:
            assert config.deepspeed_config["zero_stage"] == stage
    offload = load_config_from_file(str(REPO / "configs/accelerate/deepspeed_zero2_offload.yaml")).deepspeed_config
    assert offload["offload_optimizer_device"] == "cpu" and offload["offload_param_device"] == "cpu"
    assert load_config_from_file(str(REPO / "configs/accelerate/deepspeed_zero3.yaml")).deepspeed_config["zero3_init_flag"]


def test_unsupported_task_says_what_is_missing():
    with pytest.raises(ConfigError, match="direct_distill:data_process / direct_distill:train"):
        config_from_args(["--lora_base_model", "dit", "--task", "direct_distill:data_process"])
    assert config_from_args(["--lora_base_model", "dit", "--task", "sft:data_process"]).train.task == "sft:data_process"
