"""FLUX.1-Kontext: the DiT receives the reference tokens and ids as DiffSynth builds them (one and two reference
images), the tiny twin trains and saves FLUX's kohya LoRA, and DiffSynth's Kontext command lines give the presets."""
from __future__ import annotations

import math
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from diffsynth.cli import main as cli_main
from diffsynth.config import config_from_dict
from diffsynth.errors import ConfigError
from diffsynth.data.sample_dataset import build_builtin
from diffsynth.families import get_spec, spec_for
from diffsynth.families.flux import pipeline as flux
from diffsynth.families.flux.kontext import FluxKontext
from diffsynth.presets import load_preset, preset_params
from diffsynth.training.loop import run_training

REPO = Path(__file__).resolve().parents[1]
TINY_ID = "diffsynth-tiny/FLUX.1-Kontext-dev"
TARGETS = ("a_to_qkv,b_to_qkv,ff_a.0,ff_a.2,ff_b.0,ff_b.2,a_to_out,b_to_out,proj_out,norm.linear,norm1_a.linear,"
           "norm1_b.linear,to_qkv_mlp")
MODELS = ("black-forest-labs/FLUX.1-Kontext-dev:flux1-kontext-dev.safetensors,black-forest-labs/FLUX.1-dev:text_encoder/"
          "model.safetensors,black-forest-labs/FLUX.1-dev:text_encoder_2/*.safetensors,black-forest-labs/FLUX.1-dev:ae.safetensors")
# DiffSynth's examples/flux/model_training/{lora,full}/FLUX.1-Kontext-dev.sh
COMMON = ('--dataset_base_path data/example_image_dataset --dataset_metadata_path '
          'data/example_image_dataset/metadata_kontext.csv --data_file_keys "image,kontext_images" --max_pixels 1048576 '
          f'--dataset_repeat 400 --model_id_with_origin_paths "{MODELS}" --remove_prefix_in_ckpt "pipe.dit." '
          '--extra_inputs "kontext_images" --use_gradient_checkpointing')
SCRIPTS = {
    "flux.1-kontext-dev-lora": (f'{COMMON} --learning_rate 1e-4 --num_epochs 5 --output_path '
                                f'"./models/train/FLUX.1-Kontext-dev_lora" --lora_base_model "dit" --lora_target_modules '
                                f'"{TARGETS}" --lora_rank 32 --align_to_opensource_format'),
    "flux.1-kontext-dev-full": (f'{COMMON} --learning_rate 1e-5 --num_epochs 1 --output_path '
                                '"./models/train/FLUX.1-Kontext-dev_full" --trainable_models "dit"'),
}
TRAINING_SECTIONS = ("dataset", "resolution", "model", "train", "lora", "gradient", "output")


@pytest.fixture(scope="module")
def kontext_base(tmp_path_factory) -> Path:
    from diffsynth.models.tiny import write_tiny_model

    base = tmp_path_factory.mktemp("kontext_models")
    write_tiny_model("flux.1-kontext-dev", base / TINY_ID)
    return base


@pytest.fixture()
def kontext_env(kontext_base, monkeypatch):
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(kontext_base))
    monkeypatch.setenv("DIFFSYNTH_SKIP_DOWNLOAD", "true")


@pytest.fixture(scope="module")
def pipe(kontext_base):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(kontext_base))
        config = load_preset(REPO / "presets" / "tiny" / "flux.1-kontext-dev-lora.yaml")
        return spec_for(config).load_pipeline(config, torch.float32)


# ------------------------------------------------------------------------------------- the variant

def test_kontext_images_select_the_kontext_variant_of_flux():
    config = config_from_dict({"model": {"family": "flux", "extra_inputs": "kontext_images"},
                               "dataset": {"data_file_keys": "image,kontext_images"}, "lora": {"lora_base_model": "dit"}})
    spec = spec_for(config)
    assert spec.name == "flux_kontext" and spec.variant_of == "flux" and get_spec("flux.1-kontext-dev") is spec
    base = get_spec("flux")
    # the DiT is FLUX.1's: the same LoRA targets, name mapping, original-name converters and schedule
    for field in ("lora_targets", "map_lora_targets", "lora_to_original", "original_state_dict",
                  "opensource_lora_format", "train_sigmas", "data"):
        ours, theirs = getattr(spec, field), getattr(base, field)
        assert getattr(ours, "__func__", ours) is getattr(theirs, "__func__", theirs), field  # inherited, not redefined
    assert spec_for(config_from_dict({"model": {"family": "flux"}, "lora": {"lora_base_model": "dit"}})) is base
    with pytest.raises(ConfigError, match="needs model.extra_inputs to include kontext_images"):
        config_from_dict({"model": {"family": "flux_kontext"}, "lora": {"lora_base_model": "dit"}})


def test_kontext_images_must_be_a_file_column(kontext_env):
    data = preset_params(REPO / "presets" / "tiny" / "flux.1-kontext-dev-lora.yaml")
    data["dataset"]["data_file_keys"] = "image"
    with pytest.raises(ConfigError, match="data_file_keys lacks kontext_images"):
        spec_for(config_from_dict(data)).load_pipeline(config_from_dict(data), torch.float32)


# ------------------------------------------------------------------------------------- what the DiT sees

@pytest.mark.parametrize("sizes", [[(48, 32)], [(48, 32), (32, 64)]], ids=["one", "two"])
def test_dit_receives_reference_tokens_after_the_image_tokens(pipe, sizes):
    assert isinstance(pipe, FluxKontext)
    seen = {}
    hook = pipe.dit.register_forward_hook(lambda m, a, kw, out: seen.update(kw=kw, out=out[0]), with_kwargs=True)
    try:
        references = [Image.new("RGB", size, (10 * i, 200, 30)) for i, size in enumerate(sizes)]
        item = {"image": Image.new("RGB", (64, 64), (200, 30, 30)), "prompt": "make the circle blue",
                "kontext_images": references if len(references) > 1 else references[0]}
        inputs = pipe.encode(item)
        noisy = torch.randn(inputs["latents"].shape, generator=torch.Generator().manual_seed(0))
        velocity = pipe.predict(noisy, torch.tensor([500.0]), inputs)
    finally:
        hook.remove()
    kw = seen["kw"]
    factor = pipe.vae_factor  # latent pixels per image pixel side (2 for the tiny VAE, 8 for the real one)
    grids = [(h // factor // 2, w // factor // 2) for w, h in sizes]  # (rows, cols) of each reference's tokens
    image_tokens = (64 // factor // 2) ** 2
    kontext_tokens = sum(r * c for r, c in grids)
    assert kw["hidden_states"].shape == (1, image_tokens + kontext_tokens, 64)
    assert kw["img_ids"].shape == (image_tokens + kontext_tokens, 3)
    # the image tokens come first and are the packed noisy latents; their ids keep 0 as first coordinate
    assert torch.equal(kw["hidden_states"][:, :image_tokens], flux.pack_latents(noisy))
    assert kw["img_ids"][:image_tokens, 0].abs().sum() == 0
    # each reference: the packed VAE latents (encoded like the input image), ids (1, row, col) over its own grid
    start = image_tokens
    for reference, latents, (rows, cols) in zip(references, inputs["kontext_latents"], grids):
        assert torch.allclose(latents, pipe.encode_image(reference))
        assert torch.equal(kw["hidden_states"][:, start:start + rows * cols], flux.pack_latents(latents))
        ids = kw["img_ids"][start:start + rows * cols]
        assert (ids[:, 0] == 1).all()
        assert ids[:, 1].tolist() == [r for r in range(rows) for _ in range(cols)]
        assert ids[:, 2].tolist() == [c for _ in range(rows) for c in range(cols)]
        start += rows * cols
    # the DiT output is sliced back to the image tokens: the loss is on the target image only
    assert seen["out"].shape[1] == image_tokens + kontext_tokens
    assert torch.equal(velocity, flux.unpack_latents(seen["out"][:, :image_tokens], 64 // factor, 64 // factor))


def test_a_row_without_kontext_images_is_an_error(pipe):
    with pytest.raises(ValueError, match="no kontext_images"):
        pipe.encode({"image": Image.new("RGB", (32, 32)), "prompt": "x"})
    with pytest.raises(ValueError, match="add kontext_images to dataset.data_file_keys"):
        pipe.encode({"image": Image.new("RGB", (32, 32)), "prompt": "x", "kontext_images": "a.png"})


# ------------------------------------------------------------------------------------- presets

@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_from_args_on_diffsynth_script_gives_the_preset(name, capsys):
    assert cli_main(["params", "--from-args", *shlex.split(SCRIPTS[name])]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    preset = load_preset(REPO / "presets" / f"{name}.yaml").to_dict()
    if name.endswith("full"):  # no LoRA flags in the full script: DiffSynth's default, unused
        preset["lora"]["lora_target_modules"] = printed["lora"]["lora_target_modules"]
    for section in TRAINING_SECTIONS:
        assert printed[section] == preset[section], section
    assert printed["model"]["family"] == "flux"  # the family folder; kontext_images selects the variant
    assert spec_for(config_from_dict(printed)).name == "flux_kontext"


def test_tiny_twins_keep_the_recipe():
    for kind in ("lora", "full"):
        real = load_preset(REPO / "presets" / f"flux.1-kontext-dev-{kind}.yaml")
        tiny = load_preset(REPO / "presets" / "tiny" / f"flux.1-kontext-dev-{kind}.yaml")
        assert tiny.model.tiny_preset == "flux.1-kontext-dev" and tiny.dataset.builtin_name == "shapes_edit"
        assert all(e.startswith(f"{TINY_ID}:") for e in tiny.model.model_id_with_origin_paths.split(","))
        for key in ("model.family", "model.extra_inputs", "dataset.data_file_keys", "train.trainable_models",
                    "lora.lora_base_model", "lora.lora_target_modules", "output.align_to_opensource_format"):
            section, field = key.split(".")
            assert getattr(getattr(tiny, section), field) == getattr(getattr(real, section), field), key


# ------------------------------------------------------------------------------------- training

def twin_config(kind: str, tmp_path: Path, max_steps: int):
    data = preset_params(REPO / "presets" / "tiny" / f"flux.1-kontext-dev-{kind}.yaml")
    metadata = build_builtin(data["dataset"]["builtin_name"], tmp_path / "data", data["dataset"]["data_file_keys"])
    data["dataset"].update(dataset_base_path=str(metadata.parent), dataset_metadata_path=str(metadata))
    data["output"]["output_path"] = str(tmp_path / "out")
    data["tracking"].update(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", enable_csv_log=False)
    data["train"]["max_steps"] = max_steps
    data["validation"]["num_samples"] = 2
    data["sample"].update(num_inference_steps=2, out_dir=str(tmp_path / "samples"))
    data["cache"]["enabled"] = False  # encode online (tests/test_cache.py covers the cached mode)
    return config_from_dict(data)


@pytest.mark.slow
def test_tiny_lora_twin_trains_and_saves_flux_kohya_lora(tmp_path, kontext_env):
    config = twin_config("lora", tmp_path, max_steps=4)
    assert spec_for(config).name == "flux_kontext"
    result = run_training(config)
    assert result.steps == 4
    (_, before), (_, after) = result.val_history
    assert math.isfinite(before["val_loss"]) and after["val_loss"] < before["val_loss"]
    state = load_file(str(tmp_path / "out" / "epoch-0.safetensors"))
    # the Kontext DiT is FLUX.1's: the same kohya modules as the FLUX.1-dev twin (1 double x 10 + 2 single x 3)
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k[: -len(".alpha")] for k in state}
    assert len(modules) == 16 and all(m.startswith("lora_unet_") for m in modules)


def test_samples_are_conditioned_on_the_first_rows_reference(pipe, tmp_path):
    from diffsynth.families.images import SampleReference, first_row_images

    config = twin_config("lora", tmp_path, max_steps=1)
    first = first_row_images(config, "kontext_images", 16, 16)
    assert isinstance(first, Image.Image)
    seen = []
    hook = pipe.dit.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["img_ids"]), with_kwargs=True)
    old = pipe.sample_reference
    try:
        pipe.sample_reference = SampleReference("kontext_images", lambda: first_row_images(config, "kontext_images", 16, 16))
        image = pipe.sample("make the circle blue", 0, 64, 64, 2)
    finally:
        hook.remove()
        pipe.sample_reference = old
    assert image.size == (64, 64) and len(seen) == 2
    w, h = first.size
    kontext_tokens = (h // pipe.vae_factor // 2) * (w // pipe.vae_factor // 2)
    assert all(ids.shape[0] == (64 // pipe.vae_factor // 2) ** 2 + kontext_tokens for ids in seen)
    assert all((ids[-kontext_tokens:, 0] == 1).all() for ids in seen)


@pytest.mark.slow
def test_tiny_full_twin_trains(tmp_path, kontext_env):
    result = run_training(twin_config("full", tmp_path, max_steps=2))
    assert result.steps == 2 and all(math.isfinite(m["val_loss"]) for _, m in result.val_history)
    assert load_file(str(tmp_path / "out" / "epoch-0.safetensors"))
