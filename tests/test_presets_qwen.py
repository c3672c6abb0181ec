"""Qwen presets: the real recipes equal what `diffsynth params --from-args` makes of DiffSynth's scripts, and
their tiny twins train here and save what the real-size Qwen-Image DiT can load."""
from __future__ import annotations

import math
import shlex

import pytest
import torch
import yaml
from accelerate import init_empty_weights
from safetensors.torch import load_file

from diffsynth.cli import main as cli_main
from diffsynth.config import config_from_dict
from diffsynth.families import spec_for
from diffsynth.data.sample_dataset import build_builtin
from diffsynth.models.real_configs import REAL_MODELS, build_class
from diffsynth.training.loop import run_training
from diffsynth.presets import preset_params
from helpers import DEFAULT_PARAMS, REPO

PRESETS = REPO / "presets"
QWEN = ("qwen-image-lora", "qwen-image-full", "qwen-image-edit-lora", "qwen-image-edit-2509-lora",
        "qwen-image-edit-2511-lora")
TARGETS = "to_q,to_k,to_v,add_q_proj,add_k_proj,add_v_proj,to_out.0,to_add_out,img_mlp.net.2,img_mod.1,txt_mlp.net.2,txt_mod.1"
MODELS = ("{dit}:transformer/diffusion_pytorch_model*.safetensors,Qwen/Qwen-Image:text_encoder/model*.safetensors,"
          "Qwen/Qwen-Image:vae/diffusion_pytorch_model.safetensors")

# DiffSynth-Studio's examples/qwen_image/model_training/{lora,full}/*.sh
COMMON = "--max_pixels 1048576 --remove_prefix_in_ckpt pipe.dit. --use_gradient_checkpointing --find_unused_parameters"
LORA = f'--lora_base_model dit --lora_target_modules "{TARGETS}" --lora_rank 32 --learning_rate 1e-4 --num_epochs 5'
SCRIPTS = {
    "qwen-image-lora": (
        "--dataset_base_path data/example_image_dataset --dataset_metadata_path data/example_image_dataset/metadata.csv "
        f'--dataset_repeat 50 --model_id_with_origin_paths "{MODELS.format(dit="Qwen/Qwen-Image")}" '
        f"--output_path ./models/train/Qwen-Image_lora --dataset_num_workers 8 {LORA} {COMMON}"),
    "qwen-image-full": (
        "--dataset_base_path data/example_image_dataset --dataset_metadata_path data/example_image_dataset/metadata.csv "
        f'--dataset_repeat 50 --model_id_with_origin_paths "{MODELS.format(dit="Qwen/Qwen-Image")}" '
        f"--learning_rate 1e-5 --num_epochs 2 --output_path ./models/train/Qwen-Image_full --trainable_models dit {COMMON}"),
    "qwen-image-edit-lora": (
        "--dataset_base_path data/example_image_dataset --dataset_metadata_path data/example_image_dataset/metadata_edit.csv "
        '--data_file_keys "image,edit_image" --extra_inputs "edit_image" --dataset_repeat 50 '
        f'--model_id_with_origin_paths "{MODELS.format(dit="Qwen/Qwen-Image-Edit")}" '
        f"--output_path ./models/train/Qwen-Image-Edit_lora --dataset_num_workers 8 {LORA} {COMMON}"),
    "qwen-image-edit-2509-lora": (
        "--dataset_base_path data/example_image_dataset --dataset_metadata_path data/example_image_dataset/metadata_edit.csv "
        '--data_file_keys "image,edit_image" --extra_inputs "edit_image" --dataset_repeat 50 '
        f'--model_id_with_origin_paths "{MODELS.format(dit="Qwen/Qwen-Image-Edit-2509")}" '
        f"--output_path ./models/train/Qwen-Image-Edit-2509_lora --dataset_num_workers 8 {LORA} {COMMON}"),
    "qwen-image-edit-2511-lora": (
        "--dataset_base_path data/example_image_dataset "
        "--dataset_metadata_path data/example_image_dataset/metadata_qwen_imgae_edit_multi.json "
        '--data_file_keys "image,edit_image" --extra_inputs "edit_image" --dataset_repeat 50 '
        f'--model_id_with_origin_paths "{MODELS.format(dit="Qwen/Qwen-Image-Edit-2511")}" '
        f"--output_path ./models/train/Qwen-Image-Edit-2511_lora --dataset_num_workers 8 {LORA} {COMMON} --zero_cond_t"),
}
TRAINING_SECTIONS = ("dataset", "resolution", "model", "train", "lora", "gradient", "output")


def load(name: str, tiny: bool = False) -> dict:
    """The full params of a preset, merged from its overlays as `diffsynth preset` writes them."""
    return preset_params(PRESETS / ("tiny" if tiny else "") / f"{name}.yaml")


@pytest.mark.parametrize("name", QWEN)
@pytest.mark.parametrize("tiny", [False, True])
def test_presets_merge_to_full_params_files(name, tiny):
    data = load(name, tiny)
    config = config_from_dict(data)  # unknown keys and bad values fail here
    for section, values in DEFAULT_PARAMS.items():
        missing = set(values) - set(data.get(section) or {})
        assert not missing, f"{name}: {section} lacks {sorted(missing)} (every params.yaml key needs a value)"
    assert (REPO / "configs" / "accelerate" / f"{data['accelerate']['config']}.yaml").exists()
    assert config.lora.lora_target_modules == TARGETS


@pytest.mark.parametrize("name", QWEN)
def test_from_args_on_diffsynth_script_gives_the_preset(name, capsys):
    assert cli_main(["params", "--from-args", *shlex.split(SCRIPTS[name])]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    preset = config_from_dict(load(name)).to_dict()
    if name == "qwen-image-full":  # no LoRA flags in the full script: DiffSynth's (Wan) default, unused
        preset["lora"]["lora_target_modules"] = printed["lora"]["lora_target_modules"]
    for section in TRAINING_SECTIONS:
        assert printed[section] == preset[section], section
    # params.yaml names the family folder; the Edit variant is selected by --extra_inputs edit_image
    assert printed["model"]["family"] == "qwen_image"
    assert spec_for(config_from_dict(printed)).name == ("qwen_image_edit" if "edit" in name else "qwen_image")


@pytest.mark.parametrize("name", QWEN)
def test_tiny_twin_keeps_the_recipe(name):
    real, tiny = config_from_dict(load(name)), config_from_dict(load(name, tiny=True))
    assert tiny.model.tiny_preset and all(e.startswith("diffsynth-tiny/") for e in
                                          tiny.model.model_id_with_origin_paths.split(","))
    assert tiny.dataset.source == "builtin" and tiny.model.torch_dtype == "float32"
    for key in ("model.family", "model.extra_inputs", "model.zero_cond_t", "dataset.data_file_keys", "train.trainable_models",
                "train.find_unused_parameters", "lora.lora_base_model", "lora.lora_target_modules",
                "gradient.use_gradient_checkpointing", "output.remove_prefix_in_ckpt"):
        section, field = key.split(".")
        assert getattr(getattr(tiny, section), field) == getattr(getattr(real, section), field), key


# ------------------------------------------------------------------------------------------ tiny twins train

@pytest.fixture(scope="module")
def real_dit():
    spec = REAL_MODELS["qwen-image-dit"]
    with init_empty_weights():
        return build_class(spec["cls"])(**spec["config"])



def twin_config(name: str, tmp_path, monkeypatch, model_base):
    data = load(name, tiny=True)
    metadata = build_builtin(data["dataset"]["builtin_name"], tmp_path / "data")
    data["dataset"].update(dataset_base_path=str(metadata.parent), dataset_metadata_path=str(metadata))
    data["output"]["output_path"] = str(tmp_path / "out")
    data["sample"]["out_dir"] = str(tmp_path / "samples")  # not the workspace's outputs/train/samples
    data["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data["train"]["max_steps"] = 3
    data["validation"]["num_samples"] = 2
    data["sample"].update(num_inference_steps=2, out_dir=str(tmp_path / "samples"))
    data["cache"]["enabled"] = False  # encode online (tests/test_cache.py covers the cached mode)
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(model_base))
    return config_from_dict(data)


@pytest.mark.slow
@pytest.mark.parametrize("name", QWEN)
def test_tiny_twin_trains_and_saves_keys_of_the_real_dit(name, tmp_path, monkeypatch, edit_model_base, real_dit):
    config = twin_config(name, tmp_path, monkeypatch, edit_model_base)
    result = run_training(config)
    assert result.steps == 3
    assert all(math.isfinite(m["val_loss"]) for _, m in result.val_history) and len(result.val_history) == 2
    state = load_file(result.checkpoints[-1])
    real_params = dict(real_dit.named_parameters())
    if config.lora.lora_base_model:
        hit = set()
        for key in state:
            module, _, suffix = key.rpartition(".lora_")
            assert suffix in ("A.default.weight", "B.default.weight"), key
            assert isinstance(real_dit.get_submodule(module), torch.nn.Linear), key
            hit |= {t for t in TARGETS.split(",") if module.endswith("." + t)}
        assert hit == set(TARGETS.split(","))  # every DiffSynth target got LoRA
    else:  # full fine-tune: every DiT parameter under the real model's names (the tiny DiT has 2 blocks)
        assert set(state) <= set(real_params)
        assert all(state[k].dim() == real_params[k].dim() for k in state)
        two_blocks = {k for k in real_params if not k.startswith("transformer_blocks.")
                      or k.split(".")[1] in ("0", "1")}
        assert set(state) == two_blocks
