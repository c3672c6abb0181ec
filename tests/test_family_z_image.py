"""Z-Image (Turbo, base, Omni-Base): what the DiT sees, the sigmas, DiffSynth's LoRA names on the real DiT, the
original (ComfyUI) names checked against diffusers' own reader, exports key by key, a short training run whose
loss falls, differential LoRA, and DiffSynth's nf4 recipe pasted as written."""
from __future__ import annotations

import math
import os
import re
import shlex
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from diffsynth.config import SECTIONS, config_from_dict
from diffsynth.export import check_lora, export_checkpoint, lora_modules, original_weight_shapes, weight_shapes, \
    write_format
from diffsynth.families import get_spec
from diffsynth.families.z_image import convert, pipeline as zi
from diffsynth.models.components import plan_shapes
from diffsynth.models.real_configs import REAL_MODELS
from diffsynth.presets import load_preset as load_params, preset_params
from diffsynth.training.loop import run_training

REPO = Path(__file__).resolve().parents[1]
PRESETS = {n: REPO / "presets" / f"{n}.yaml" for n in
           ("z-image-turbo-lora", "z-image-full", "tiny/z-image-turbo-lora", "tiny/z-image-full",
            "tiny/z-image-omni-base-lora")}
# DiffSynth's examples/z_image/model_training/lora/Z-Image-Turbo.sh
TURBO_LORA_SH = (
    "--dataset_base_path data/diffsynth_example_dataset/z_image/Z-Image-Turbo --dataset_metadata_path "
    "data/diffsynth_example_dataset/z_image/Z-Image-Turbo/metadata.csv --max_pixels 1048576 --dataset_repeat 50 "
    "--model_id_with_origin_paths 'Tongyi-MAI/Z-Image-Turbo:transformer/*.safetensors,Tongyi-MAI/Z-Image-Turbo:"
    "text_encoder/*.safetensors,Tongyi-MAI/Z-Image-Turbo:vae/diffusion_pytorch_model.safetensors' --learning_rate "
    "1e-4 --num_epochs 5 --remove_prefix_in_ckpt pipe.dit. --output_path ./models/train/Z-Image-Turbo_lora "
    "--lora_base_model dit --lora_target_modules 'to_q,to_k,to_v,to_out.0,w1,w2,w3' --lora_rank 32 "
    "--use_gradient_checkpointing --dataset_num_workers 8")
# DiffSynth's examples/z_image/model_training/special/quant_training/Z-Image-Turbo-bitsandbytes_nf4.sh as written;
# only the dataset and output paths are placeholders (the model ids resolve to the tiny twin in the model base)
TURBO_NF4_SH = """
  --dataset_base_path {data} \\
  --dataset_metadata_path {metadata} \\
  --max_pixels 1048576 \\
  --dataset_repeat 50 \\
  --model_id_with_origin_paths "Tongyi-MAI/Z-Image-Turbo:transformer/*.safetensors,Tongyi-MAI/Z-Image-Turbo:text_encoder/*.safetensors,Tongyi-MAI/Z-Image-Turbo:vae/diffusion_pytorch_model.safetensors" \\
  --quant_options "Tongyi-MAI/Z-Image-Turbo:transformer/*.safetensors:bitsandbytes_nf4;Tongyi-MAI/Z-Image-Turbo:text_encoder/*.safetensors:bitsandbytes_nf4" \\
  --learning_rate 1e-4 \\
  --num_epochs 5 \\
  --remove_prefix_in_ckpt "pipe.dit." \\
  --output_path "{out}" \\
  --lora_base_model "dit" \\
  --lora_target_modules "to_q,to_k,to_v,to_out.0,w1,w2,w3" \\
  --lora_rank 32 \\
  --use_gradient_checkpointing \\
  --dataset_num_workers 8
"""
REPOS = {"z-image-turbo": "Z-Image-Turbo", "z-image-omni-base": "Z-Image-Omni-Base"}


@pytest.fixture(scope="module")
def zi_base(tmp_path_factory) -> Path:
    from diffsynth.models.tiny import write_tiny_model

    base = tmp_path_factory.mktemp("z_image_models")
    for twin, repo in REPOS.items():
        write_tiny_model(twin, base / "diffsynth-tiny" / repo)
    return base


@pytest.fixture()
def zi_env(zi_base, monkeypatch):
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(zi_base))
    monkeypatch.setenv("DIFFSYNTH_SKIP_DOWNLOAD", "true")


def _load(zi_base, preset):
    old = os.environ.get("DIFFSYNTH_MODEL_BASE_PATH")
    os.environ["DIFFSYNTH_MODEL_BASE_PATH"] = str(zi_base)
    try:
        return zi.ZImage.load_pipeline(load_params(PRESETS[preset]), torch.float32)
    finally:
        if old is None:
            del os.environ["DIFFSYNTH_MODEL_BASE_PATH"]
        else:
            os.environ["DIFFSYNTH_MODEL_BASE_PATH"] = old


@pytest.fixture(scope="module")
def pipe(zi_base):
    return _load(zi_base, "tiny/z-image-turbo-lora")


@pytest.fixture(scope="module")
def omni(zi_base):
    return _load(zi_base, "tiny/z-image-omni-base-lora")


@pytest.fixture(scope="module")
def real_dit():
    """The real-size Z-Image DiT (6B parameters) on the meta device: names and shapes, no memory."""
    from accelerate import init_empty_weights
    from diffusers import ZImageTransformer2DModel

    with init_empty_weights():
        return ZImageTransformer2DModel.from_config(REAL_MODELS["z-image-dit"]["config"])


# ------------------------------------------------------------------------------------- what the models see

def test_dit_and_text_encoder_see_what_diffsynth_gives_them(pipe):
    seen = {}
    hooks = [pipe.dit.register_forward_pre_hook(lambda m, a, kw: seen.update(dit=(a, kw)), with_kwargs=True),
             pipe.text_encoder.register_forward_pre_hook(lambda m, a, kw: seen.update(te=kw), with_kwargs=True)]
    try:
        image = Image.new("RGB", (64, 48), (200, 30, 30))
        inputs = pipe.encode({"image": image, "prompt": "a red circle"})
        noisy = torch.randn(inputs["latents"].shape, generator=torch.Generator().manual_seed(0))
        velocity = pipe.predict(noisy, torch.tensor([250.0]), inputs)
    finally:
        for h in hooks:
            h.remove()
    # the prompt: Qwen3's chat template, one user turn, generation prompt, no empty think block
    text = pipe.tokenizer.decode(seen["te"]["input_ids"][0])
    assert text == "<|im_start|>user\na red circle<|im_end|>\n<|im_start|>assistant\n"
    assert seen["te"]["output_hidden_states"] is True
    with torch.no_grad():
        hidden = pipe.text_encoder(**{k: seen["te"][k] for k in ("input_ids", "attention_mask")},
                                   output_hidden_states=True).hidden_states
    assert torch.equal(inputs["prompt_emb"], hidden[-2])  # the second-to-last layer, not the last
    assert inputs["prompt_emb"].shape == (1, seen["te"]["input_ids"].shape[1], 32)
    # latents: the VAE mode, (z - 0.1159) * 0.3611; tiny VAE halves: (1, 16, 24, 32)
    with torch.no_grad():
        mode = pipe.vae.encode(zi.image_to_tensor(image)).latent_dist.mode()
    assert inputs["latents"].shape == (1, 16, 24, 32)
    assert torch.allclose(inputs["latents"], (mode - 0.1159) * 0.3611)
    # the DiT: one (C, 1, H, W) image per sample, time (1000 - t) / 1000, the prompt's tokens; output negated
    (x, t, caps), kw = seen["dit"]
    assert len(x) == 1 and torch.equal(x[0], noisy[0].unsqueeze(1))
    assert t.tolist() == [0.75] and torch.equal(caps[0], inputs["prompt_emb"][0])
    with torch.no_grad():
        raw = pipe.dit(x, t, caps, return_dict=False)[0][0]
    assert torch.equal(velocity[0], -raw[:, 0])


def test_a_batch_pads_prompts_and_predicts_each_sample_as_alone(pipe, omni):
    for p in (pipe, omni):
        a = p.encode({"image": Image.new("RGB", (32, 32), (200, 30, 30)), "prompt": "red"})
        b = p.encode({"image": Image.new("RGB", (32, 32), (0, 90, 200)), "prompt": "a much longer blue prompt"})
        assert a["prompt_emb"].shape[1] < b["prompt_emb"].shape[1]
        batch = p.collate([a, b])
        noisy = torch.randn(batch["latents"].shape, generator=torch.Generator().manual_seed(1))
        together = p.predict(noisy, torch.tensor([300.0, 700.0]), batch)
        for i, (one, t) in enumerate(((a, 300.0), (b, 700.0))):
            alone = p.predict(noisy[i:i + 1], torch.tensor([t]), one)
            torch.testing.assert_close(together[i:i + 1], alone, rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_dit_parameter_but_omnis_siglip_branch(pipe, omni):
    for p, expected in ((pipe, []), (omni, ["siglip_embedder", "siglip_pad_token", "siglip_refiner"])):
        p.dit.requires_grad_(True)
        try:
            # 48x48: 144 image tokens, padded to 160 with x_pad_token (which a multiple of 32 would leave unused)
            inputs = p.encode({"image": Image.new("RGB", (48, 48), (0, 90, 200)), "prompt": "a blue square"})
            p.predict(torch.randn_like(inputs["latents"]), torch.tensor([300.0]), inputs).pow(2).mean().backward()
            without = {n.split(".")[0] for n, q in p.dit.named_parameters()
                       if q.grad is None or not q.grad.abs().sum() > 0}
        finally:
            p.dit.requires_grad_(False)
            p.dit.zero_grad(set_to_none=True)
        assert sorted(without) == expected
        skipped = type(p).modules_without_gradient("dit", p.dit)
        assert {n.split(".")[0] for n in skipped} == set(expected) - {"siglip_pad_token"}  # modules only


def test_sigmas_are_diffsynths_z_image_template():
    train = zi.train_sigmas(1000)
    s = torch.linspace(1, 0, 1001, dtype=torch.float64)[:-1]
    assert torch.allclose(train, 3 * s / (1 + 2 * s)) and train[0] == 1
    grid = zi.inference_sigmas(8)  # Turbo: 8 steps, then 0
    assert len(grid) == 9 and grid[-1] == 0 and abs(grid[4].item() - 0.75) < 1e-6  # s = 0.5 -> 0.75


def test_sample_is_an_image(pipe, omni):
    for p in (pipe, omni):
        image = p.sample("a red circle", seed=0, height=64, width=48, num_inference_steps=2)
        assert isinstance(image, Image.Image) and image.size == (48, 64)


# ------------------------------------------------------------------------------------- names

def test_diffsynth_lora_targets_are_linears_of_the_real_dit(real_dit):
    modules = dict(real_dit.named_modules())
    targets = zi.LORA_TARGETS.split(",")
    hit = [n for n, m in modules.items() if any(n == t or n.endswith("." + t) for t in targets)]
    assert all(isinstance(modules[n], torch.nn.Linear) for n in hit)
    # 30 layers + 2 noise-refiner + 2 context-refiner blocks, 7 Linears each (q, k, v, out, w1, w2, w3)
    assert len(hit) == (30 + 2 + 2) * 7
    assert zi.ZImage.map_lora_targets(real_dit, targets) == targets  # DiffSynth's DiT has diffusers' names


def test_original_names_are_what_diffusers_single_file_reader_reads(pipe):
    """Our diffusers -> original converter, read back by diffusers' own single-file converter (a third party's
    reading of the original names), gives every tensor back unchanged, key by key; ours reads it too."""
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    sd = pipe.dit.state_dict()
    original = convert.diffusers_to_original(sd)
    assert "layers.0.attention.qkv.weight" in original and "x_embedder.weight" in original
    assert "final_layer.linear.weight" in original and "layers.0.attention.out.weight" in original
    assert not any("to_q" in k or "all_x_embedder" in k for k in original)
    back = convert_z_image_transformer_checkpoint_to_diffusers({f"model.diffusion_model.{k}": v
                                                                for k, v in original.items()})
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    ours = convert.original_to_diffusers({f"model.diffusion_model.{k}": v for k, v in original.items()})
    assert set(ours) == set(sd) and all(torch.equal(ours[k], sd[k]) for k in sd)


def test_a_real_dit_in_original_names_is_detected_and_matches(real_dit):
    shapes = {f"model.diffusion_model.{k}": tuple(v.shape)
              for k, v in convert.diffusers_to_original(real_dit.state_dict()).items()}
    detected, module, mismatch = plan_shapes(shapes, "z_image")
    assert detected.kind.name == "z_image_dit_original" and detected.variant.startswith("z-image-dit")
    assert mismatch == ([], [], [])


def test_text_encoder_checkpoint_names_and_inferred_config():
    shapes = {f"model.{k}": tuple(v.shape) for k, v in
              _meta("z-image-text-encoder").items()}  # Qwen3ForCausalLM's checkpoint names
    detected, _, mismatch = plan_shapes(shapes, "z_image")
    assert detected.component == "text_encoder" and mismatch == ([], [], [])
    real = REAL_MODELS["z-image-text-encoder"]["config"]
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim"):
        assert detected.config[key] == real[key], key


def _meta(name):
    from accelerate import init_empty_weights
    from diffsynth.models.real_configs import build_class
    entry = REAL_MODELS[name]
    cls = build_class(entry["cls"])
    with init_empty_weights():
        module = cls.from_config(entry["config"]) if entry["cls"].startswith("diffusers.") \
            else cls(cls.config_class(**entry["config"]))
    return module.state_dict()


def _trained_lora(dit, rank=2, seed=1):
    from peft import LoraConfig, inject_adapter_in_model
    import copy
    model = copy.deepcopy(dit)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=zi.LORA_TARGETS.split(",")), model)
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=g) * 0.1 for n, p in model.named_parameters() if ".lora_" in n}


def test_comfyui_lora_fuses_qkv_and_carries_the_same_update(pipe):
    base = pipe.dit
    modules = lora_modules(_trained_lora(base))
    out = write_format(modules, "comfyui", "z_image", weight_shapes(base))
    assert check_lora(out, "comfyui", original_weight_shapes(base, "z_image"))["unmatched_keys"] == 0
    a, b = out["diffusion_model.layers.0.attention.qkv.lora_A.weight"], out["diffusion_model.layers.0.attention.qkv.lora_B.weight"]
    assert a.shape == (6, 64) and b.shape == (192, 6) and out["diffusion_model.layers.0.attention.qkv.alpha"] == 6
    stacked = torch.cat([modules[f"layers.0.attention.to_{p}"][1] @ modules[f"layers.0.attention.to_{p}"][0]
                         for p in "qkv"])
    torch.testing.assert_close(b @ a, stacked, rtol=0, atol=1e-6)
    assert "diffusion_model.layers.1.feed_forward.w2.lora_A.weight" in out
    assert "diffusion_model.context_refiner.0.attention.out.lora_B.weight" in out


def test_diffusers_export_loads_with_diffusers_own_lora_loader(pipe, caplog):
    import copy
    import logging
    modules = lora_modules(_trained_lora(pipe.dit))
    exported = write_format(modules, "diffusers", "z_image")
    model = copy.deepcopy(pipe.dit)
    with caplog.at_level(logging.WARNING):
        model.load_lora_adapter(exported, prefix="transformer", adapter_name="t")
    assert "unexpected" not in caplog.text.lower() and "missing" not in caplog.text.lower(), caplog.text
    loaded = {n.replace(".t.weight", ".weight"): p for n, p in model.named_parameters() if ".lora_" in n}
    assert set(loaded) == {k[len("transformer."):] for k in exported}


# ------------------------------------------------------------------------------------- presets

def test_presets_load_with_the_recipes_values():
    lora, full = load_params(PRESETS["z-image-turbo-lora"]), load_params(PRESETS["z-image-full"])
    assert (lora.model.family, lora.train.learning_rate, lora.train.num_epochs, lora.dataset.dataset_repeat) == \
        ("z_image", 1e-4, 5, 50)
    assert lora.lora.lora_rank == 32 and lora.lora.lora_target_modules == zi.LORA_TARGETS
    assert lora.sample.num_inference_steps == 8  # Turbo's few steps
    assert (full.train.learning_rate, full.train.num_epochs, full.dataset.dataset_repeat) == (1e-5, 2, 400)
    assert full.train.trainable_models == "dit" and full.lora.lora_base_model is None


def test_params_from_diffsynth_flags_equal_the_lora_preset(capsys):
    from diffsynth.cli import main

    assert main(["params", "--from-args", *shlex.split(TURBO_LORA_SH)]) == 0  # the family comes from the ids
    printed = yaml.safe_load(capsys.readouterr().out)
    preset = preset_params(PRESETS["z-image-turbo-lora"])
    assert printed["model"]["family"] == preset["model"]["family"] == "z_image"
    for section in ("dataset", "resolution", "model", "train", "lora", "gradient", "output"):
        for f in fields(SECTIONS[section]):
            if not f.metadata.get("ours"):
                assert printed[section][f.name] == preset[section][f.name], f"{section}.{f.name}"


def test_controlnet_recipe_model_ids_are_z_images():
    from diffsynth.families import upstream
    # the Fun-ControlNet recipes run now (tests/test_family_z_image_controlnet.py): its model id is ours
    assert upstream.recognise("PAI/Z-Image-Turbo-Fun-Controlnet-Union-2.1:x.safetensors,"
                              "Tongyi-MAI/Z-Image-Turbo:transformer/*.safetensors") == "z_image"


# ------------------------------------------------------------------------------------- training

def twin_params(name, tmp_path, metadata, max_steps):
    data = preset_params(PRESETS[name])
    data["dataset"].update(dataset_base_path=str(metadata.parent), dataset_metadata_path=str(metadata))
    data["output"]["output_path"] = str(tmp_path / "out")
    data["sample"]["out_dir"] = str(tmp_path / "samples")
    data["tracking"].update(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", enable_csv_log=False)
    data["train"].update(max_steps=max_steps, num_epochs=1)
    data["cache"]["enabled"] = False
    return data


def test_tiny_turbo_lora_trains_and_exports_every_format_key_by_key(tmp_path, shapes_dataset, zi_base, zi_env,
                                                                     pipe, real_dit):
    data = twin_params("tiny/z-image-turbo-lora", tmp_path, shapes_dataset, max_steps=4)
    data["validation"]["num_samples"] = 2
    data["sample"]["num_inference_steps"] = 2
    result = run_training(config_from_dict(data))
    assert result.steps == 4
    (_, before), (_, after) = result.val_history
    assert math.isfinite(before["val_loss"]) and after["val_loss"] < before["val_loss"], result.val_history
    ckpt = tmp_path / "out" / "epoch-0.safetensors"
    state = load_file(str(ckpt))
    # DiffSynth's names on the real DiT: every trained module is a Linear of the real-size model
    real = dict(real_dit.named_modules())
    names = {re.sub(r"\.lora_[AB]\.(default\.)?weight$", "", k) for k in state}
    assert names and all(isinstance(real.get(n), torch.nn.Linear) for n in names)
    assert len(names) == (2 + 1 + 1) * 7  # tiny: 2 layers, 1 noise- and 1 context-refiner block
    export = export_checkpoint(ckpt, tmp_path / "export", ["diffusers", "comfyui", "diffsynth"], "z_image", pipe.dit)
    assert export.compat["unmatched_keys"] == 0 and export.compat["matched_modules"] == len(names)
    for fmt, record in export.compat["formats"].items():
        assert record["unmatched_keys"] == 0 and record["tensors"] > 0, fmt
    # the diffsynth file is the trained names (DiffSynth's DiT = diffusers names), checked against the base
    diffsynth = load_file(str(export.files["diffsynth"]))
    assert {re.sub(r"\.lora_[AB]\.weight$", "", k) for k in diffsynth} == names


def test_differential_lora_fuses_the_preset_lora_before_training(tmp_path, shapes_dataset, zi_env, pipe):
    """DiffSynth's special/differential_training recipe: --preset_lora_path/--preset_lora_model fuse a LoRA (here in
    ComfyUI's original names, as adapters such as ostris' ship) into the DiT, then a new LoRA trains on top."""
    from diffsynth.training.module import TrainingModule  # noqa: F401  (the path run_training takes)
    modules = lora_modules(_trained_lora(pipe.dit, seed=5))
    adapter = tmp_path / "adapter.safetensors"
    save_file(write_format(modules, "comfyui", "z_image", weight_shapes(pipe.dit)), str(adapter))
    data = twin_params("tiny/z-image-turbo-lora", tmp_path, shapes_dataset, max_steps=2)
    data["lora"].update(preset_lora_path=str(adapter), preset_lora_model="dit")
    data["sample"]["prompts"], data["validation"]["num_samples"] = [], 1
    result = run_training(config_from_dict(data))
    assert result.steps == 2 and all(math.isfinite(v) for _, v in result.loss_history)


@pytest.mark.slow
def test_diffsynth_z_image_turbo_nf4_recipe_parses_and_trains(tmp_path, shapes_dataset, monkeypatch):
    pytest.importorskip("bitsandbytes", reason="optional extra: pip install -e '.[quant]'")
    from diffsynth.command_line import config_from_args
    from diffsynth.models.tiny import write_tiny_model
    write_tiny_model("z-image-turbo", tmp_path / "models" / "Tongyi-MAI" / "Z-Image-Turbo")
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(tmp_path / "models"))
    argv = shlex.split(TURBO_NF4_SH.replace("\\\n", " ").format(
        data=shapes_dataset.parent, metadata=shapes_dataset, out=tmp_path / "out"))
    config = config_from_args(argv)
    assert config.model.family == "z_image"
    assert config.model.quant_options.count(":bitsandbytes_nf4") == 2
    config.train.max_steps, config.dataset.dataset_num_workers = 2, 0
    config.sample.prompts, config.validation.num_samples = [], 1
    config.tracking.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_training(config)
    assert result.steps == 2 and all(math.isfinite(v) for _, v in result.loss_history)


def test_the_family_is_registered_with_its_twins():
    spec = get_spec("z_image")
    assert spec is zi.ZImage and set(spec.tiny_twins) == {"z-image-turbo", "z-image", "z-image-omni-base"}
