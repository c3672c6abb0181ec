"""FLUX.1-dev: what the DiT sees, DiffSynth's LoRA names, the kohya checkpoint format, the presets, and a short
training run of the tiny twin preset."""
from __future__ import annotations

import math
import re
import shlex
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from diffsynth.config import SECTIONS, config_from_dict
from diffsynth.errors import ConfigError
from diffsynth.presets import load_preset as load_params, preset_params
from diffsynth.families.flux import pipeline as flux
from diffsynth.families import get_spec
from diffsynth.models.lora_names import opensource_converter
from diffsynth.families.flux.convert import diffusers_to_bfl_dit
from diffsynth.models.real_configs import REAL_MODELS
from diffsynth.training.loop import run_training

REPO = Path(__file__).resolve().parents[1]
PRESETS = {name: REPO / "presets" / f"{name}.yaml" for name in
           ("flux.1-dev-lora", "flux.1-dev-full", "tiny/flux.1-dev-lora", "tiny/flux.1-dev-full")}
# DiffSynth's examples/flux/model_training/lora/FLUX.1-dev.sh
FLUX_LORA_SH = (
    '--dataset_base_path data/example_image_dataset --dataset_metadata_path data/example_image_dataset/metadata.csv '
    '--max_pixels 1048576 --dataset_repeat 50 --model_id_with_origin_paths '
    '"black-forest-labs/FLUX.1-dev:flux1-dev.safetensors,black-forest-labs/FLUX.1-dev:text_encoder/model.safetensors,'
    'black-forest-labs/FLUX.1-dev:text_encoder_2/*.safetensors,black-forest-labs/FLUX.1-dev:ae.safetensors" '
    '--learning_rate 1e-4 --num_epochs 5 --remove_prefix_in_ckpt pipe.dit. '
    '--output_path ./models/train/FLUX.1-dev_LoRA --lora_base_model dit --lora_target_modules '
    '"a_to_qkv,b_to_qkv,ff_a.0,ff_a.2,ff_b.0,ff_b.2,a_to_out,b_to_out,proj_out,norm.linear,norm1_a.linear,'
    'norm1_b.linear,to_qkv_mlp" --lora_rank 32 --align_to_opensource_format --use_gradient_checkpointing')
# kohya module name inside a block -> BFL parameter name
KOHYA_TO_BFL = {"img_attn_qkv": "img_attn.qkv", "txt_attn_qkv": "txt_attn.qkv", "img_attn_proj": "img_attn.proj",
                "txt_attn_proj": "txt_attn.proj", "img_mlp_0": "img_mlp.0", "img_mlp_2": "img_mlp.2",
                "txt_mlp_0": "txt_mlp.0", "txt_mlp_2": "txt_mlp.2", "img_mod_lin": "img_mod.lin",
                "txt_mod_lin": "txt_mod.lin", "linear1": "linear1", "linear2": "linear2",
                "modulation_lin": "modulation.lin"}


@pytest.fixture(scope="module")
def flux_base(tmp_path_factory) -> Path:
    from diffsynth.models.tiny import write_tiny_model

    base = tmp_path_factory.mktemp("flux_models")
    write_tiny_model("flux.1-dev", base / "diffsynth-tiny" / "FLUX.1-dev")
    return base


@pytest.fixture()
def flux_env(flux_base, monkeypatch):
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(flux_base))
    monkeypatch.setenv("DIFFSYNTH_SKIP_DOWNLOAD", "true")


@pytest.fixture(scope="module")
def pipe(flux_base):
    import os
    old = os.environ.get("DIFFSYNTH_MODEL_BASE_PATH")
    os.environ["DIFFSYNTH_MODEL_BASE_PATH"] = str(flux_base)
    try:
        return flux.Flux.load_pipeline(load_params(PRESETS["tiny/flux.1-dev-lora"]), torch.float32)
    finally:
        if old is None:
            del os.environ["DIFFSYNTH_MODEL_BASE_PATH"]
        else:
            os.environ["DIFFSYNTH_MODEL_BASE_PATH"] = old


@pytest.fixture(scope="module")
def real_dit():
    """The real-size FLUX.1-dev DiT (12B parameters) on the meta device: names and shapes, no memory."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    with init_empty_weights():
        return FluxTransformer2DModel.from_config(REAL_MODELS["flux.1-dev-dit"]["config"])


def _bfl_module(kohya: str) -> str:
    m = re.fullmatch(r"lora_unet_(double|single)_blocks_(\d+)_(.+)", kohya)
    assert m, kohya
    return f"{m.group(1)}_blocks.{m.group(2)}.{KOHYA_TO_BFL[m.group(3)]}"


# ------------------------------------------------------------------------------------- (b) model inputs

def test_dit_sees_the_inputs_diffsynth_gives_it(pipe):
    seen = {}
    hooks = [pipe.dit.register_forward_pre_hook(lambda m, a, kw: seen.update(dit=kw), with_kwargs=True),
             pipe.text_encoder.register_forward_pre_hook(lambda m, a, kw: seen.update(clip=kw), with_kwargs=True),
             pipe.text_encoder_2.register_forward_pre_hook(lambda m, a, kw: seen.update(t5=kw), with_kwargs=True)]
    try:
        image = Image.new("RGB", (64, 64), (200, 30, 30))
        inputs = pipe.encode({"image": image, "prompt": "a red circle on a white background"})
        noisy = torch.randn(inputs["latents"].shape, generator=torch.Generator().manual_seed(0))
        pipe.predict(noisy, torch.tensor([500.0]), inputs)
    finally:
        for h in hooks:
            h.remove()
    # CLIP over 77 tokens (pooled), T5 padded to 512 tokens (DiffSynth's training t5_sequence_length)
    assert seen["clip"]["input_ids"].shape == (1, 77)
    assert seen["t5"]["input_ids"].shape == (1, flux.T5_SEQUENCE_LENGTH) == (1, 512)
    kw = seen["dit"]
    # tiny VAE: 16 latent channels, /2 -> 32x32 latents -> 16x16 tokens of 2x2x16 = 64 features
    assert inputs["latents"].shape == (1, 16, 32, 32)
    assert kw["hidden_states"].shape == (1, 256, 64)
    assert torch.equal(kw["hidden_states"], flux.pack_latents(noisy))
    assert kw["encoder_hidden_states"].shape == (1, 512, 32)   # T5 d_model of the tiny preset
    assert kw["pooled_projections"].shape == (1, 32)           # CLIP hidden size of the tiny preset
    assert kw["img_ids"].shape == (256, 3) and kw["txt_ids"].shape == (512, 3)
    assert torch.equal(kw["txt_ids"], torch.zeros(512, 3))
    assert kw["img_ids"][:, 0].abs().sum() == 0
    assert kw["img_ids"][17].tolist() == [0, 1, 1] and kw["img_ids"][-1].tolist() == [0, 15, 15]
    assert kw["guidance"].tolist() == [1.0]                    # embedded guidance 1 in training (DiffSynth)
    assert kw["timestep"].tolist() == [0.5]                    # t/1000, as diffusers' FLUX pipeline passes it
    # latents are the deterministic VAE mode, shifted and scaled as the FLUX pipeline does
    with torch.no_grad():
        mode = pipe.vae.encode(flux.image_to_tensor(image)).latent_dist.mode()
    c = pipe.vae.config
    assert torch.allclose(inputs["latents"], (mode - c.shift_factor) * c.scaling_factor)


def test_every_dit_parameter_gets_a_gradient(pipe):
    """Why modules_without_gradient is empty for FLUX (unlike Qwen-Image's last text branch)."""
    pipe.dit.requires_grad_(True)
    try:
        inputs = pipe.encode({"image": Image.new("RGB", (32, 32), (0, 90, 200)), "prompt": "a blue square"})
        pipe.predict(torch.randn_like(inputs["latents"]), torch.tensor([300.0]), inputs).pow(2).mean().backward()
        without = [n for n, p in pipe.dit.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    finally:
        pipe.dit.requires_grad_(False)
        pipe.dit.zero_grad(set_to_none=True)
    assert without == [] and type(pipe).modules_without_gradient("dit", pipe.dit) == []


def test_sample_is_an_image(pipe):
    image = pipe.sample("a red circle", seed=0, height=64, width=48, num_inference_steps=2)
    assert isinstance(image, Image.Image) and image.size == (48, 64)


# ------------------------------------------------------------------------------------- LoRA names

def test_diffsynth_lora_targets_map_to_real_dit_linears(real_dit):
    names = flux.map_lora_targets(real_dit, flux.LORA_TARGETS.split(","))
    modules = dict(real_dit.named_modules())
    assert all(isinstance(modules[n], torch.nn.Linear) for n in names)
    # 19 double blocks x (q,k,v, add_q,k,v, to_out, to_add_out, ff x2, ff_context x2, norm1, norm1_context)
    # + 38 single blocks x (q,k,v, proj_mlp, proj_out, norm.linear); never the DiT's final proj_out
    assert len(names) == 19 * 14 + 38 * 6 and "proj_out" not in names
    assert "transformer_blocks.18.attn.add_v_proj" in names and "single_transformer_blocks.37.proj_mlp" in names
    assert not any(n.startswith("single_") and "add_" in n for n in names)
    # diffusers names pass through; one DiffSynth name becomes one regex (single targets stay peft regexes)
    assert flux.map_lora_targets(real_dit, ["to_q", "to_k"]) == ["to_q", "to_k"]
    (regex,) = flux.map_lora_targets(real_dit, ["a_to_qkv"])
    matched = [n for n in modules if re.fullmatch(regex, n)]
    assert len(matched) == 19 * 3 and all(n.startswith("transformer_blocks.") for n in matched)


def _lora(rank: int, d_in: int, d_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rank, d_in, generator=g), torch.randn(d_out, rank, generator=g)


def test_opensource_format_fuses_qkv_exactly():
    hidden, r = 8, 2
    state, parts = {}, {}
    for i, name in enumerate(("attn.to_q", "attn.to_k", "attn.to_v")):
        parts[name] = _lora(r, hidden, hidden, i)
    for i, name in enumerate(("attn.to_q", "attn.to_k", "attn.to_v")):  # single block: no LoRA on proj_mlp
        parts["s." + name] = _lora(r, hidden, hidden, 10 + i)
    for name, (a, b) in parts.items():
        block = "single_transformer_blocks.1." if name.startswith("s.") else "transformer_blocks.0."
        state[f"{block}{name.removeprefix('s.')}.lora_A.default.weight"] = a
        state[f"{block}{name.removeprefix('s.')}.lora_B.default.weight"] = b
    state["transformer_blocks.0.ff.net.2.lora_A.default.weight"], state["transformer_blocks.0.ff.net.2.lora_B.default.weight"] = _lora(r, 4 * hidden, hidden, 20)
    state["proj_out.lora_A.default.weight"], state["proj_out.lora_B.default.weight"] = _lora(r, hidden, 4, 30)

    to_opensource_lora = opensource_converter(flux.Flux)
    out = to_opensource_lora(state)
    assert sorted(out) == sorted(f"lora_unet_{m}.{s}" for m in ("double_blocks_0_img_attn_qkv", "double_blocks_0_img_mlp_2",
                                                               "single_blocks_1_linear1", "final_layer_linear")
                                 for s in ("lora_down.weight", "lora_up.weight", "alpha"))  # final proj_out kept

    def delta(name):
        down, up, alpha = out[f"{name}.lora_down.weight"], out[f"{name}.lora_up.weight"], out[f"{name}.alpha"]
        return up @ down * (alpha / down.shape[0])

    # the fused layer's update is the separate q/k/v updates stacked on its output rows
    qkv = torch.cat([parts[n][1] @ parts[n][0] for n in ("attn.to_q", "attn.to_k", "attn.to_v")])
    assert out["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape == (3 * r, hidden)
    assert out["lora_unet_double_blocks_0_img_attn_qkv.alpha"].item() == 3 * r
    assert torch.allclose(delta("lora_unet_double_blocks_0_img_attn_qkv"), qkv, atol=1e-5)
    # linear1 = q, k, v, mlp-in (4 x hidden rows); proj_mlp had no LoRA: its rows get no update
    linear1 = torch.cat([parts[f"s.{n}"][1] @ parts[f"s.{n}"][0] for n in ("attn.to_q", "attn.to_k", "attn.to_v")]
                        + [torch.zeros(4 * hidden, hidden)])
    assert delta("lora_unet_single_blocks_1_linear1").shape == (7 * hidden, hidden)
    assert torch.allclose(delta("lora_unet_single_blocks_1_linear1"), linear1, atol=1e-5)
    a, b = (state[f"transformer_blocks.0.ff.net.2.lora_{x}.default.weight"] for x in "AB")
    assert torch.equal(delta("lora_unet_double_blocks_0_img_mlp_2"), b @ a)
    with pytest.raises(ValueError, match="not a LoRA tensor"):
        to_opensource_lora({"transformer_blocks.0.attn.to_q.weight": torch.zeros(2, 2)})


def test_align_flag_needs_a_family_with_that_format(tmp_path):
    from diffsynth.training.checkpoint import checkpoint_converter as _checkpoint_converter

    config = config_from_dict({"lora": {"lora_base_model": "dit"}, "output": {"align_to_opensource_format": True}})
    with pytest.raises(ConfigError, match="align_to_opensource_format"):
        _checkpoint_converter(get_spec("qwen_image"), config)
    assert _checkpoint_converter(get_spec("qwen_image"), config_from_dict({"lora": {"lora_base_model": "dit"}})) is None
    with pytest.raises(ConfigError, match="align_to_opensource_format"):
        config_from_dict({"train": {"trainable_models": "dit"}, "output": {"align_to_opensource_format": True}})


# ------------------------------------------------------------------------------------- presets

def test_presets_load_with_the_recipes_values():
    lora, full = load_params(PRESETS["flux.1-dev-lora"]), load_params(PRESETS["flux.1-dev-full"])
    assert (lora.model.family, lora.train.learning_rate, lora.train.num_epochs, lora.dataset.dataset_repeat) == ("flux", 1e-4, 5, 50)
    assert lora.lora.lora_rank == 32 and lora.output.align_to_opensource_format
    assert lora.gradient.use_gradient_checkpointing and lora.lora.lora_target_modules == flux.LORA_TARGETS
    assert (full.train.learning_rate, full.train.num_epochs, full.dataset.dataset_repeat) == (1e-5, 1, 400)
    assert full.train.trainable_models == "dit" and full.lora.lora_base_model is None
    assert full.extra["accelerate"]["config"] == "deepspeed_zero2"
    for name in ("tiny/flux.1-dev-lora", "tiny/flux.1-dev-full"):
        tiny = load_params(PRESETS[name])
        assert tiny.model.tiny_preset == "flux.1-dev" and tiny.model.torch_dtype == "float32"
        assert tiny.model.model_id_with_origin_paths.startswith("diffsynth-tiny/FLUX.1-dev:")
        assert tiny.resolution.max_pixels == 4096 and tiny.dataset.source == "builtin"


def test_params_from_diffsynth_flags_equal_the_lora_preset(capsys):
    from diffsynth.cli import main

    assert main(["params", "--from-args", *shlex.split(FLUX_LORA_SH)]) == 0  # no --family: read from the ids
    printed = yaml.safe_load(capsys.readouterr().out)
    preset = preset_params(PRESETS["flux.1-dev-lora"])
    assert printed["model"]["family"] == preset["model"]["family"] == "flux"
    for section in ("dataset", "resolution", "model", "train", "lora", "gradient", "output"):
        for f in fields(SECTIONS[section]):
            if not f.metadata.get("ours"):  # DiffSynth's flags; ours (source, seed, ...) are the preset's choice
                assert printed[section][f.name] == preset[section][f.name], f"{section}.{f.name}"


# ------------------------------------------------------------------------------------- (a) training

def twin_params(name, tmp_path, metadata, max_steps):
    """A tiny twin's params on the shapes dataset, writing into tmp_path, for ``max_steps`` steps."""
    data = preset_params(PRESETS[name])
    data["dataset"].update(dataset_base_path=str(metadata.parent), dataset_metadata_path=str(metadata))
    data["output"]["output_path"] = str(tmp_path / "out")
    data["sample"]["out_dir"] = str(tmp_path / "samples")  # not the workspace's outputs/train/samples
    data["tracking"].update(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", enable_csv_log=False)
    data["train"].update(max_steps=max_steps, num_epochs=1)
    data["cache"]["enabled"] = False  # encode online (tests/test_cache.py covers the cached mode)
    data["sample"]["out_dir"] = str(tmp_path / "samples")
    return data


def test_tiny_twin_trains_and_saves_kohya_lora_for_the_real_dit(tmp_path, shapes_dataset, flux_base, flux_env,
                                                                real_dit):
    data = twin_params("tiny/flux.1-dev-lora", tmp_path, shapes_dataset, max_steps=4)
    data["validation"]["num_samples"] = 2
    data["sample"]["num_inference_steps"] = 2
    result = run_training(config_from_dict(data))

    assert result.steps == 4
    (_, before), (_, after) = result.val_history
    assert math.isfinite(before["val_loss"]) and math.isfinite(after["val_loss"])
    assert after["val_loss"] < before["val_loss"], "fixed-noise validation loss should fall (seeded run)"
    state = load_file(str(tmp_path / "out" / "epoch-0.safetensors"))
    rank = data["lora"]["lora_rank"]
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k[: -len(".alpha")] for k in state}
    # tiny DiT: 1 double block x 10 kohya modules + 2 single blocks x 3
    assert len(modules) == 16 and len(state) == 3 * 16
    real_bfl = diffusers_to_bfl_dit(real_dit.state_dict())
    tiny_bfl = load_file(str(flux_base / "diffsynth-tiny/FLUX.1-dev/flux1-dev.safetensors"))
    for module in modules:
        weight = _bfl_module(module) + ".weight"
        assert weight in real_bfl, f"{module} targets no layer of the real FLUX.1-dev DiT"
        down, up = state[f"{module}.lora_down.weight"], state[f"{module}.lora_up.weight"]
        assert (up.shape[0], down.shape[1]) == tuple(tiny_bfl[weight].shape)
        fused = {"img_attn_qkv": 3, "txt_attn_qkv": 3, "linear1": 4}.get(module.split("_", 5)[-1], 1)
        assert down.shape[0] == fused * rank and state[f"{module}.alpha"].item() == fused * rank
        assert up.abs().sum() > 0, f"{module}: LoRA B still zero after training"
    # the native (DiffSynth/peft) names trained are modules of the real-size diffusers DiT
    trainable = load_file(str(tmp_path / "out" / "state" / "trainable.safetensors"))
    real_modules = dict(real_dit.named_modules())
    for key in trainable:
        name = re.sub(r"\.lora_[AB]\.default\.weight$", "", key.removeprefix("pipe.dit."))
        assert isinstance(real_modules.get(name), torch.nn.Linear), key



@pytest.mark.slow
def test_tiny_full_twin_trains_and_saves_real_dit_keys(tmp_path, shapes_dataset, flux_base, flux_env, real_dit):
    data = twin_params("tiny/flux.1-dev-full", tmp_path, shapes_dataset, max_steps=2)
    data["validation"]["num_samples"] = 1
    data["sample"]["prompts"] = []
    result = run_training(config_from_dict(data))
    assert all(math.isfinite(m["val_loss"]) for _, m in result.val_history)
    state = load_file(str(tmp_path / "out" / "epoch-0.safetensors"))
    real = real_dit.state_dict()
    # a full fine-tune saves the whole DiT under the real model's own parameter names
    assert state and set(state) <= set(real)
    assert {k for k in real if not k.startswith(("transformer_blocks.", "single_transformer_blocks."))} <= set(state)
