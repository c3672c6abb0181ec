"""Z-Image-Turbo Fun-ControlNet (diffsynth/families/z_image/controlnet.py): variant selection, the ControlNet file
recognised with its architecture, the controlled forward (with silent hints it is the plain DiT path; the control
image changes it), the control context through the VAE, the size check naming a bad row, LoRA targets and gradients
as the recipes train them, and (slow) the tiny twins train, sample and export."""
from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffsynth.config import config_from_dict
from diffsynth.errors import ConfigError
from diffsynth.families import get_spec, select_variant
from diffsynth.families.z_image import ZImage, ZImageControlNet
from diffsynth.families.z_image.controlnet import controlled_forward
from diffsynth.models.components import plan_shapes
from diffsynth.models.real_configs import REAL_MODELS
from diffsynth.presets import load_preset as load_params, preset_params
from diffsynth.training.loop import run_training

REPO = Path(__file__).resolve().parents[1]
TWIN_REPO = "Z-Image-Turbo-Fun-Controlnet-Union-2.1"
NAMES = ("union-2.1", "union-2.1-8steps", "tile-2.1-8steps")
PRESETS = {f"{kind}-{n}": REPO / "presets" / f"z-image-turbo-fun-controlnet-{n}-{kind}.yaml"
           for n in NAMES for kind in ("lora", "full")}


@pytest.fixture(scope="module")
def zc_base(tmp_path_factory) -> Path:
    from diffsynth.models.tiny import write_tiny_model
    base = tmp_path_factory.mktemp("zc_models")
    write_tiny_model("z-image-turbo-fun-controlnet", base / "diffsynth-tiny" / TWIN_REPO)
    return base


@pytest.fixture(scope="module")
def control_data(tmp_path_factory) -> Path:
    from diffsynth.data.sample_dataset import build_builtin
    return build_builtin("shapes_control", tmp_path_factory.mktemp("zc_data") / "data", "image,controlnet_image")


def _tiny_config(zc_base, control_data, name="lora-union-2.1", **overrides):
    path = PRESETS[name].parent / "tiny" / PRESETS[name].name
    data = preset_params(path)
    data["dataset"].update(dataset_base_path=str(control_data.parent), dataset_metadata_path=str(control_data))
    for section, values in overrides.items():
        data[section].update(values)
    return config_from_dict(data)


def _load(zc_base, control_data, role="full", **overrides):
    old = os.environ.get("DIFFSYNTH_MODEL_BASE_PATH")
    os.environ["DIFFSYNTH_MODEL_BASE_PATH"] = str(zc_base)
    try:
        config = _tiny_config(zc_base, control_data, **overrides)
        return type_of(config).load_pipeline(config, torch.float32, role=role)
    finally:
        if old is None:
            del os.environ["DIFFSYNTH_MODEL_BASE_PATH"]
        else:
            os.environ["DIFFSYNTH_MODEL_BASE_PATH"] = old


def type_of(config):
    from diffsynth.families import spec_for
    return spec_for(config)


@pytest.fixture(scope="module")
def pipe(zc_base, control_data):
    return _load(zc_base, control_data)


def _row(control_data, name="red_circle_on_white", size=64):
    folder = control_data.parent
    image = Image.open(folder / f"{name}.png").convert("RGB").resize((size, size))
    control = Image.open(folder / f"{name}_edges.png").convert("RGB").resize((size, size))
    return {"image": image, "controlnet_image": control, "prompt": "a red circle on a white background"}


# ------------------------------------------------------------------------------------- selection and files

def test_controlnet_image_selects_the_variant_and_every_preset_names_it():
    assert select_variant("z_image", "controlnet_image") is ZImageControlNet
    assert select_variant("z_image", "") is ZImage
    assert get_spec("z_image_controlnet") is ZImageControlNet
    assert get_spec("z-image-turbo-fun-controlnet") is ZImageControlNet  # its tiny twin's name
    for path in PRESETS.values():
        config = load_params(path)
        assert type_of(config) is ZImageControlNet, path.name
        assert config.dataset.data_file_keys == "image,controlnet_image"
    assert load_params(PRESETS["full-tile-2.1-8steps"]).train.trainable_models == "controlnet"
    assert load_params(PRESETS["full-union-2.1"]).output.remove_prefix_in_ckpt == "pipe.controlnet."
    assert load_params(PRESETS["lora-union-2.1-8steps"]).lora.lora_base_model == "dit"


def test_the_real_controlnet_file_is_recognised_with_its_architecture():
    from accelerate import init_empty_weights
    from diffusers import ZImageControlNetModel
    real = REAL_MODELS["z-image-turbo-fun-controlnet-2.1"]["config"]
    with init_empty_weights():
        module = ZImageControlNetModel.from_config(real)
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    detected, _, mismatch = plan_shapes(shapes, "z_image")
    assert detected.kind.name == "z_image_controlnet" and detected.component == "controlnet"
    assert detected.variant == "z-image-turbo-fun-controlnet-2.1" and mismatch == ([], [], [])
    assert detected.config["control_layers_places"] == list(range(0, 30, 2))  # DiffSynth's control_layers_mapping
    # the 1.0 layout (no control refiner with before_proj) is refused by name
    old = {k: v for k, v in shapes.items() if not k.startswith("control_noise_refiner.")}
    with pytest.raises(ConfigError, match="Fun-ControlNet 1.0 layout"):
        plan_shapes(old, "z_image")


def test_the_plain_family_with_a_controlnet_file_asks_for_controlnet_image(zc_base, control_data, monkeypatch):
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(zc_base))
    config = _tiny_config(zc_base, control_data, model={"extra_inputs": ""})
    assert type_of(config) is ZImage
    with pytest.raises(ConfigError, match="is a Z-Image ControlNet.*extra_inputs controlnet_image"):
        ZImage.load_pipeline(config, torch.float32)


def test_the_encode_step_builds_the_controlnet_on_meta(zc_base, control_data):
    encoder = _load(zc_base, control_data, role="encode")
    assert all(p.is_meta for p in encoder.controlnet.parameters())
    assert all(p.is_meta for p in encoder.dit.parameters())
    inputs = encoder.encode(_row(control_data))
    assert inputs["control_context"].shape[1] == 33


# ------------------------------------------------------------------------------------- what the DiT sees

def test_control_context_is_latents_zero_mask_and_the_zero_image_latents(pipe, control_data):
    row = _row(control_data)
    inputs = pipe.encode(row)
    c = inputs["control_context"]
    assert c.shape == (1, 33, *inputs["latents"].shape[-2:])
    assert torch.equal(c[:, :16], pipe.encode_image(row["controlnet_image"]))
    assert torch.equal(c[:, 16:17], torch.zeros_like(c[:, 16:17]))
    grey = pipe.encode_pixels(torch.zeros(1, 3, 64, 64))
    assert torch.equal(c[:, 17:], grey)


def test_silent_hints_give_the_plain_dit_and_the_control_image_changes_the_prediction(pipe, control_data):
    inputs = pipe.collate([pipe.encode(_row(control_data)), pipe.encode(_row(control_data, "blue_cross_on_black"))])
    noisy = torch.randn(inputs["latents"].shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([700.0, 250.0])
    with torch.no_grad():
        controlled = pipe.predict(noisy, t, inputs)
        plain = ZImage.predict(pipe, noisy, t, inputs)
        assert controlled.shape == noisy.shape
        assert (controlled - plain).abs().max() > 1e-3  # the ControlNet acts
        other = {**inputs, "control_context": inputs["control_context"].flip(0)}
        assert (pipe.predict(noisy, t, other) - controlled).abs().max() > 1e-4
        saved = {n: p.clone() for n, p in pipe.controlnet.named_parameters()}
        try:
            for name, p in pipe.controlnet.named_parameters():
                if "after_proj" in name:
                    p.zero_()
            torch.testing.assert_close(pipe.predict(noisy, t, inputs), plain, rtol=1e-5, atol=1e-5)
        finally:
            for name, p in pipe.controlnet.named_parameters():
                p.copy_(saved[name])


def test_each_sample_of_a_batch_is_predicted_as_alone(pipe, control_data):
    a, b = pipe.encode(_row(control_data)), pipe.encode(_row(control_data, "green_square_on_black"))
    batch = pipe.collate([a, b])
    noisy = torch.randn(batch["latents"].shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([600.0, 600.0])
    with torch.no_grad():
        together = pipe.predict(noisy, t, batch)
        alone = pipe.predict(noisy[1:], t[1:], pipe.collate([b]))
    torch.testing.assert_close(together[1:], alone, rtol=1e-5, atol=1e-5)


def test_controlled_forward_checkpoints_when_asked_and_gives_the_same_result(pipe, control_data):
    inputs = pipe.encode(_row(control_data))
    x = torch.randn(inputs["latents"][0].unsqueeze(1).shape, generator=torch.Generator().manual_seed(2))
    args = (x, torch.tensor([0.4]), inputs["prompt_emb"][0], inputs["control_context"][0].unsqueeze(1))
    plain = controlled_forward(pipe.dit, pipe.controlnet, *args)
    pipe.controlnet.enable_gradient_checkpointing()
    try:
        checkpointed = controlled_forward(pipe.dit, pipe.controlnet, *args)
    finally:
        pipe.controlnet.disable_gradient_checkpointing()
    torch.testing.assert_close(checkpointed, plain)


# ------------------------------------------------------------------------------------- data

def test_a_control_image_of_another_size_is_named_by_the_data_check(tmp_path, control_data, capsys):
    from diffsynth.data.dataset import ImageRules
    from diffsynth.data.validate import validate_dataset
    rows = list(csv.reader(open(control_data)))
    Image.new("RGB", (96, 48), "white").save(tmp_path / "wide.png")
    for name in {r[0] for r in rows[1:4]} | {r[1] for r in rows[1:4]}:
        Image.open(control_data.parent / name).save(tmp_path / name)
    bad = [rows[0], rows[1], [rows[2][0], "wide.png", rows[2][2]], rows[3]]
    with open(tmp_path / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows(bad)
    rules = ZImageControlNet.data_rules()
    report = validate_dataset(tmp_path, tmp_path / "metadata.csv", "image,controlnet_image",
                              ImageRules(4096, None, None, rules.size_factor, rules.width_factor), "controlnet_image",
                              size_matched_keys=rules.size_matched_keys)
    assert report.valid_rows == 2
    (problem,) = report.problems
    assert problem["row"] == 1 and problem["column"] == "controlnet_image"
    assert re.search(r"trained at \d+x\d+ but image at 64x64.*token for token", problem["reason"])
    assert "size_matched_keys" in rules.as_kwargs()
    # `diffsynth data validate` with the recipe's flags: the variant's rules, the row named
    from diffsynth.cli import main as cli_main
    args = ["data", "validate", "--report", str(tmp_path / "report.json"), "--dataset_base_path", str(tmp_path),
            "--dataset_metadata_path", str(tmp_path / "metadata.csv"), "--data_file_keys", "image,controlnet_image",
            "--extra_inputs", "controlnet_image", "--max_pixels", "4096", "--model_id_with_origin_paths",
            "PAI/Z-Image-Turbo-Fun-Controlnet-Union-2.1:Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors,"
            "Tongyi-MAI/Z-Image-Turbo:transformer/*.safetensors"]
    assert cli_main(args) == 1
    out = capsys.readouterr().out
    assert re.search(r"row 1 \[controlnet_image\]: controlnet_image is trained at \d+x\d+ but image at 64x64", out), out


def test_a_row_without_or_with_a_mismatched_control_image_is_an_error(pipe, control_data):
    row = _row(control_data)
    with pytest.raises(ValueError, match="has no controlnet_image"):
        pipe.encode({**row, "controlnet_image": None})
    with pytest.raises(ValueError, match="controlnet_image comes out 64x32 but its image 64x64"):
        pipe.encode({**row, "controlnet_image": row["controlnet_image"].resize((64, 32))})


# ------------------------------------------------------------------------------------- training

def test_lora_recipe_targets_dit_linears_and_full_recipe_reaches_every_controlnet_weight(pipe, control_data):
    targets = ZImageControlNet.lora_targets_for("dit", pipe.dit, "to_q,to_k,to_v,to_out.0,w1,w2,w3".split(","))
    suffixes = tuple(f".{t}" for t in targets)
    hit = [n for n, m in pipe.dit.named_modules() if n.endswith(suffixes)]
    assert hit and all(isinstance(dict(pipe.dit.named_modules())[n], torch.nn.Linear) for n in hit)
    assert len(hit) == (2 + 1 + 1) * 7  # tiny: 2 layers, 1 noise- and 1 context-refiner block
    # --trainable_models controlnet: the loss reaches every ControlNet parameter
    inputs = pipe.encode(_row(control_data))
    pipe.controlnet.requires_grad_(True)
    try:
        out = pipe.predict(torch.randn(inputs["latents"].shape), torch.tensor([500.0]), inputs)
        out.square().mean().backward()
        missing = [n for n, p in pipe.controlnet.named_parameters() if p.grad is None or not p.grad.abs().sum()]
        assert not missing
    finally:
        pipe.controlnet.requires_grad_(False)
        pipe.controlnet.zero_grad(set_to_none=True)
        pipe.dit.zero_grad(set_to_none=True)


def test_samples_use_the_first_rows_control_image_at_the_sample_size(pipe, control_data):
    inputs = pipe.sample_inputs("a dog", 32, 48)
    assert inputs["control_context"].shape[-2:] == (32 // pipe.vae_factor, 48 // pipe.vae_factor)
    image = pipe.render(inputs, 0, 32, 48, 2)
    assert image.size == (48, 32)
    own = pipe.sample_inputs("a dog", 32, 48, images=Image.new("RGB", (10, 10), "black"))
    assert not torch.equal(own["control_context"], inputs["control_context"])


@pytest.mark.parametrize("preset,steps,cfg", [("z-image-turbo-lora", 8, 1.0), ("z-image-lora", 50, 4.0),
                                              ("z-image-full", 50, 4.0), ("z-image-omni-base-lora", 40, 4.0),
                                              ("z-image-omni-base-full", 40, 4.0),
                                              ("z-image-turbo-fun-controlnet-union-2.1-lora", 30, 1.0),
                                              ("z-image-turbo-fun-controlnet-tile-2.1-8steps-full", 8, 1.0)])
def test_z_image_samples_use_each_models_sampling_defaults(preset, steps, cfg):
    """DiffSynth's examples: Z-Image 50 steps and Omni-Base 40, both at cfg 4 with the (empty) negative prompt;
    Turbo 8 steps at cfg 1; the Fun-ControlNet Union 2.1 30 steps, its 8-step files 8."""
    s = load_params(REPO / "presets" / f"{preset}.yaml").sample
    assert (s.num_inference_steps, s.cfg_scale, s.negative_prompt) == (steps, cfg, "")


def test_a_guided_z_image_sample_predicts_with_the_negative_prompt(pipe):
    cond, negative = pipe.sample_inputs("a dog", 32, 32), pipe.sample_inputs("", 32, 32)
    plain = pipe.render(cond, 0, 32, 32, 2)
    guided = pipe.render(cond, 0, 32, 32, 2, cfg_scale=4.0, negative_inputs=negative)
    same = pipe.render(cond, 0, 32, 32, 2, cfg_scale=1.0, negative_inputs=negative)
    assert plain.tobytes() == same.tobytes() and plain.tobytes() != guided.tobytes()


def _train(zc_base, control_data, tmp_path, name, monkeypatch, steps=3):
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(zc_base))
    monkeypatch.setenv("DIFFSYNTH_SKIP_DOWNLOAD", "true")
    config = _tiny_config(zc_base, control_data, name,
                          output={"output_path": str(tmp_path / "out")},
                          sample={"out_dir": str(tmp_path / "samples"), "num_inference_steps": 2},
                          tracking={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "enable_csv_log": False},
                          train={"max_steps": steps, "num_epochs": 1}, validation={"num_samples": 2},
                          cache={"enabled": False})
    return config, run_training(config)


@pytest.mark.slow
def test_tiny_twins_train_sample_and_export(tmp_path, zc_base, control_data, monkeypatch):
    from diffsynth.export import export_checkpoint
    config, result = _train(zc_base, control_data, tmp_path / "lora", "lora-union-2.1", monkeypatch)
    assert result.steps == 3 and all(math.isfinite(v) for _, v in result.loss_history)
    state = load_file(str(tmp_path / "lora" / "out" / "epoch-0.safetensors"))
    names = {re.sub(r"\.lora_[AB]\.(default\.)?weight$", "", k) for k in state}
    assert len(names) == (2 + 1 + 1) * 7 and not any(n.startswith("control") for n in names)
    assert list((tmp_path / "lora" / "samples").rglob("*.png"))
    pipe = ZImageControlNet.load_pipeline(config, torch.float32)
    export = export_checkpoint(tmp_path / "lora" / "out" / "epoch-0.safetensors", tmp_path / "export",
                               ["diffusers", "comfyui", "diffsynth"], "z_image", pipe.dit)
    assert export.compat["unmatched_keys"] == 0 and export.compat["matched_modules"] == len(names)
    # the full recipe trains the ControlNet: its checkpoint is PAI's file layout (pipe.controlnet. removed)
    _, result = _train(zc_base, control_data, tmp_path / "full", "full-tile-2.1-8steps", monkeypatch, steps=2)
    assert result.steps == 2
    full = load_file(str(tmp_path / "full" / "out" / "epoch-0.safetensors"))
    released = load_file(str(zc_base / "diffsynth-tiny" / TWIN_REPO / "Z-Image-Turbo-Fun-Controlnet-Tile-2.1-8steps.safetensors"))
    assert set(full) == set(released)
    assert any(not torch.equal(full[k].float(), released[k].float()) for k in full)
