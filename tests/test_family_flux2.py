"""FLUX.2 (dev: Mistral text encoder; klein 4B/9B and klein-base: Qwen3): what the DiT sees, DiffSynth's prompt
path and latent normalisation, the sigma grids, the recipes' LoRA names on the real DiTs, the presets against
DiffSynth's own recipe flags, a short training run of the klein-4B twin and its exports checked key by key."""
from __future__ import annotations

import math
import os
import re

import pytest
import torch
from accelerate import init_empty_weights
from PIL import Image
from safetensors.torch import load_file

from diffsynth.cli import main as cli_main
from diffsynth.config import SECTIONS, config_from_dict
from diffsynth.export.check import check_against_model
from diffsynth.export.lora_formats import write_format
from diffsynth.families import get_spec
from diffsynth.families.flux2 import pipeline as flux2
from diffsynth.families.upstream import table
from diffsynth.models.lora_names import lora_modules
from diffsynth.models.real_configs import REAL_MODELS, build_class
from diffsynth.presets import load_preset, preset_params
from diffsynth.training.lora import add_lora
from diffsynth.training.loop import run_training
from helpers import REPO

PRESETS = REPO / "presets"
TWINS = {"klein": ("flux.2-klein-4b", "FLUX.2-klein-4B", "flux.2-klein-4b-lora"),
         "dev": ("flux.2-dev", "FLUX.2-dev", "flux.2-dev-lora")}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: the CI machine's 2 cores are shared, and OpenMP threads spinning under load cost ~1000x here on
    these tiny matmuls (as tests/test_every_preset.py measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def flux2_base(tmp_path_factory):
    from diffsynth.models.tiny import write_tiny_model

    base = tmp_path_factory.mktemp("flux2_models")
    for twin, folder, _ in TWINS.values():
        write_tiny_model(twin, base / "diffsynth-tiny" / folder)
    return base


@pytest.fixture(scope="module")
def pipes(flux2_base):
    old = os.environ.get("DIFFSYNTH_MODEL_BASE_PATH")
    os.environ["DIFFSYNTH_MODEL_BASE_PATH"] = str(flux2_base)
    try:
        return {k: flux2.Flux2.load_pipeline(load_preset(PRESETS / "tiny" / f"{preset}.yaml"), torch.float32)
                for k, (_, _, preset) in TWINS.items()}
    finally:
        if old is None:
            del os.environ["DIFFSYNTH_MODEL_BASE_PATH"]
        else:
            os.environ["DIFFSYNTH_MODEL_BASE_PATH"] = old


# ------------------------------------------------------------------------------------- what the DiT sees

@pytest.mark.parametrize("which", ["klein", "dev"])
def test_dit_sees_the_inputs_diffsynth_gives_it(pipes, which):
    pipe = pipes[which]
    encoder = pipe.text_encoder_qwen3 if which == "klein" else pipe.text_encoder
    seen = {}
    hooks = [pipe.dit.register_forward_pre_hook(lambda m, a, kw: seen.update(dit=kw), with_kwargs=True),
             encoder.register_forward_pre_hook(lambda m, a, kw: seen.update(te=kw), with_kwargs=True)]
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    try:
        inputs = pipe.encode({"image": image, "prompt": "a red square"})
        noisy = torch.randn(inputs["latents"].shape, generator=torch.Generator().manual_seed(0))
        out = pipe.predict(noisy, torch.tensor([500.0]), inputs)
    finally:
        for h in hooks:
            h.remove()
    # the prompt: padded to 512 tokens; three hidden layers side by side -> 3 x the tiny width (16)
    ids, mask = seen["te"]["input_ids"], seen["te"]["attention_mask"]
    assert ids.shape == mask.shape == (1, 512) and 0 < int(mask.sum()) < 512
    assert inputs["prompt_emb"].shape == (1, 512, 48)
    with torch.no_grad():
        hidden = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    layers = flux2.QWEN3_LAYERS if which == "klein" else flux2.MISTRAL_LAYERS
    assert torch.equal(inputs["prompt_emb"], torch.cat([hidden[k] for k in layers], dim=-1))
    # latents: 8x VAE, 2x2 patches folded into 128 channels, batch-norm statistics
    assert inputs["latents"].shape == (1, 128, 3, 4) and out.shape == noisy.shape
    with torch.no_grad():
        mode = pipe.vae.encode(flux2.image_to_tensor(image)).latent_dist.mode()
    bn = pipe.vae.bn
    expected = (flux2.patchify(mode) - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + 1e-4)
    assert torch.allclose(inputs["latents"], expected, atol=1e-6)
    kw = seen["dit"]
    assert torch.equal(kw["hidden_states"], noisy.flatten(2).transpose(1, 2))   # B C H W -> B (H W) C
    assert kw["img_ids"].shape == (12, 4) and kw["img_ids"][5].tolist() == [0, 1, 1, 0]
    assert kw["txt_ids"].shape == (512, 4) and kw["txt_ids"][7].tolist() == [0, 0, 0, 7]
    assert kw["timestep"].tolist() == [0.5]                                    # t/1000
    # embedded guidance 1 in training, only where the DiT embeds it (FLUX.2-dev)
    assert (kw["guidance"].tolist() == [1.0]) if which == "dev" else kw["guidance"] is None


def test_prompt_templates_are_diffsynths(pipes):
    klein, dev = pipes["klein"], pipes["dev"]
    seen = {}
    klein.text_encoder_qwen3.register_forward_pre_hook(lambda m, a, kw: seen.update(q=kw), with_kwargs=True)
    dev.text_encoder.register_forward_pre_hook(lambda m, a, kw: seen.update(m=kw), with_kwargs=True)
    klein.encode_prompt("a cat")
    dev.encode_prompt("a cat [IMG]")

    def text(tok, kw):
        return tok.decode(kw["input_ids"][0][kw["attention_mask"][0].bool()])
    assert text(klein.tokenizer, seen["q"]) == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    mistral = text(dev.tokenizer, seen["m"])
    assert f"[SYSTEM_PROMPT]{flux2.SYSTEM_MESSAGE}[/SYSTEM_PROMPT]" in mistral and "[INST]a cat [/INST]" in mistral
    assert "[IMG]" not in mistral  # DiffSynth drops [IMG] from prompts


def test_patches_and_latent_statistics_round_trip():
    x = torch.randn(2, 32, 6, 8)
    p = flux2.patchify(x)
    assert p.shape == (2, 128, 3, 4) and torch.equal(flux2.unpatchify(p), x)
    # channel-major (C, P, Q): channel 4c + 2p + q is pixel (2h + p, 2w + q) of latent channel c
    assert p[1, 4 * 5 + 2 * 1 + 0, 2, 3] == x[1, 5, 5, 6]


def test_sigma_grids_are_diffsynths_flux2_template():
    train = flux2.train_sigmas(1000)
    s = torch.linspace(1, 1 / 1000, 1000, dtype=torch.float64)
    assert torch.allclose(train, math.exp(0.8) / (math.exp(0.8) + 1 / s - 1))
    assert train[0] == 1 and train[-1] < 0.01 and bool((train[1:] < train[:-1]).all())
    grid = flux2.inference_sigmas(4, 16)
    assert grid.shape == (5,) and grid[0] == 1 and grid[-1] == 0
    mu = flux2.empirical_mu(16, 4)
    assert math.isclose(grid[1].item(), math.exp(mu) / (math.exp(mu) + 1 / 0.75 - 1), rel_tol=1e-6)
    assert flux2.empirical_mu(5000, 4) == pytest.approx(0.00016927 * 5000 + 0.45666666)  # long sequences: linear


def test_every_dit_parameter_gets_a_gradient(pipes):
    pipe = pipes["klein"]
    pipe.dit.requires_grad_(True)
    try:
        inputs = pipe.encode({"image": Image.new("RGB", (32, 32), (0, 90, 200)), "prompt": "a blue square"})
        pipe.predict(torch.randn_like(inputs["latents"]), torch.tensor([300.0]), inputs).pow(2).mean().backward()
        without = [n for n, p in pipe.dit.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    finally:
        pipe.dit.requires_grad_(False)
        pipe.dit.zero_grad(set_to_none=True)
    assert without == [] and flux2.Flux2.modules_without_gradient("dit", pipe.dit) == []


def test_samples_are_images_with_each_models_guidance(pipes):
    klein = pipes["klein"]
    calls = []
    predict = klein.predict
    klein.predict = lambda x, t, inputs: calls.append(inputs["prompt_emb"]) or predict(x, t, inputs)
    try:
        assert klein.sample("a red circle", seed=0, height=64, width=48, num_inference_steps=2).size == (48, 64)
        assert len(calls) == 2  # step-distilled klein: no CFG
        klein.sample_cfg_scale = flux2.BASE_CFG_SCALE  # klein-base: CFG 4 against the empty prompt
        calls.clear()
        klein.sample("a red circle", seed=0, height=32, width=32, num_inference_steps=2)
        assert len(calls) == 4 and not torch.equal(calls[0], calls[1])
    finally:
        klein.sample_cfg_scale = 1.0
        del klein.predict
    assert pipes["dev"].sample("a red circle", seed=0, height=32, width=32, num_inference_steps=2).size == (32, 32)


# ------------------------------------------------------------------------------------- LoRA names

def real_dit(name: str):
    entry = REAL_MODELS[name]
    with init_empty_weights():
        return build_class(entry["cls"]).from_config(entry["config"])


@pytest.mark.parametrize("preset,dit,double,single", [("flux.2-klein-4b-lora", "flux.2-klein-4b-dit", 5, 20),
                                                      ("flux.2-klein-9b-lora", "flux.2-klein-9b-dit", 8, 24),
                                                      ("flux.2-dev-lora", "flux.2-dev-dit", 8, 48)])
def test_recipe_lora_targets_cover_every_block_linear_of_the_real_dit(preset, dit, double, single):
    model = real_dit(dit)
    targets = load_preset(PRESETS / f"{preset}.yaml").lora.lora_target_modules.split(",")
    add_lora(model, get_spec("flux2").lora_targets_for("dit", model, targets), 4)
    names = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    per_double = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
                  "attn.to_out.0", "attn.to_add_out", "ff.linear_in", "ff.linear_out", "ff_context.linear_in",
                  "ff_context.linear_out")
    expected = {f"transformer_blocks.{i}.{m}" for i in range(double) for m in per_double}
    expected |= {f"single_transformer_blocks.{i}.attn.{m}" for i in range(single) for m in ("to_qkv_mlp_proj", "to_out")}
    assert names == expected
    # the family's default (FLUX.2-dev's 48 single blocks) fits every size: names past the depth match nothing
    assert flux2.LORA_TARGETS.split(",")[:11] == targets[:11] or set(flux2.LORA_TARGETS.split(",")) >= set(targets)


# ------------------------------------------------------------------------------------- presets = recipes

def recipe(path: str) -> dict:
    return next(r for r in table()["recipes"] if r["path"] == f"examples/flux2/model_training/{path}")


@pytest.mark.parametrize("preset,path", [("flux.2-klein-4b-lora", "lora/FLUX.2-klein-4B.sh"),
                                         ("flux.2-klein-base-9b-full", "full/FLUX.2-klein-base-9B.sh")])
def test_params_from_diffsynth_flags_equal_the_preset(preset, path, capsys):
    import yaml
    from dataclasses import fields

    (command,) = recipe(path)["commands"]
    assert cli_main(["params", "--from-args", *command["args"]]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    data = preset_params(PRESETS / f"{preset}.yaml")
    assert printed["model"]["family"] == data["model"]["family"] == "flux2"
    for section in ("dataset", "resolution", "model", "train", "lora", "gradient", "output"):
        for f in fields(SECTIONS[section]):
            if not f.metadata.get("ours") and not (section == "lora" and "full" in preset):
                assert printed[section][f.name] == data[section][f.name], f"{section}.{f.name}"


def test_dev_preset_is_the_split_recipes_two_steps(capsys):
    """FLUX.2-dev's recipe is split (sft:data_process, then sft:train): the preset names both steps' models and
    trains from the encoder cache, as our pipeline always can."""
    import yaml

    config = load_preset(PRESETS / "flux.2-dev-lora.yaml")
    entries = set(config.model.model_id_with_origin_paths.split(","))
    steps = recipe("lora/FLUX.2-dev.sh")["commands"]
    for command in steps:
        assert cli_main(["params", "--from-args", *command["args"]]) == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        assert set(printed["model"]["model_id_with_origin_paths"].split(",")) <= entries
        assert printed["lora"]["lora_target_modules"] == config.lora.lora_target_modules
        assert printed["lora"]["lora_rank"] == config.lora.lora_rank == 32
    assert [c["task"] for c in steps] == ["sft:data_process", "sft:train"] and config.cache.enabled


def test_template_i2l_treeadapter_and_dmd2_recipes_are_refused_by_name():
    from diffsynth.coverage import coverage

    (row,) = [r for r in coverage(PRESETS) if r.family == "flux2"]
    why = {p.rsplit("/", 1)[1]: w for p, w in row.refused.items()}
    assert why["Template-KleinBase4B-Age.sh"].startswith("template-model training")
    assert why["KleinBase4B-i2L-v2.sh"].startswith("i2L (image-to-LoRA)")
    assert why["TreeAdapter-KleinBase4B.sh"].startswith("TreeAdapter")
    assert why["FLUX.2-klein-base-4B-DMD2.sh"].startswith("DMD2")
    assert all(w.splitlines() == [w] for w in why.values())
    assert {"lora/FLUX.2-klein-4B.sh", "lora/FLUX.2-dev.sh"} <= {p.split("model_training/")[1] for p in row.preset}


# ------------------------------------------------------------------------------------- training and exports

def test_tiny_klein_trains_and_exports_key_by_key(tmp_path, shapes_dataset, flux2_base, monkeypatch):
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(flux2_base))
    data = preset_params(PRESETS / "tiny" / "flux.2-klein-4b-lora.yaml")
    data["dataset"].update(dataset_base_path=str(shapes_dataset.parent), dataset_metadata_path=str(shapes_dataset))
    data["output"]["output_path"] = str(tmp_path / "out")
    data["sample"].update(out_dir=str(tmp_path / "samples"), num_inference_steps=2)
    data["tracking"].update(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", enable_csv_log=False)
    data["train"].update(max_steps=4, num_epochs=1)
    data["validation"]["num_samples"] = 2
    data["cache"]["enabled"] = False  # encode online (the every-preset test runs the cached pipeline)
    result = run_training(config_from_dict(data))

    assert result.steps == 4
    (_, before), (_, after) = result.val_history
    assert after["val_loss"] < before["val_loss"], "fixed-noise validation loss should fall (seeded run)"
    state = load_file(str(tmp_path / "out" / "epoch-0.safetensors"))
    # DiffSynth's trainer names: peft's `.default`, the DiT prefix removed; modules of the real klein-4B DiT
    real = dict(real_dit("flux.2-klein-4b-dit").named_modules())
    assert state and all(re.search(r"\.lora_[AB]\.default\.weight$", k) for k in state)
    assert all(isinstance(real.get(k.split(".lora_")[0]), torch.nn.Linear) for k in state)
    assert len(state) == 2 * (1 * 12 + 2 * 2)  # tiny: 1 double block x 12 Linears + 2 single blocks x 2
    modules = lora_modules(state)
    tiny_dit = flux2.Flux2.load_pipeline(load_preset(PRESETS / "tiny" / "flux.2-klein-4b-lora.yaml"), torch.float32,
                                         role="train_cached").dit
    for fmt, prefix in (("diffusers", "transformer."), ("diffsynth", "")):
        out = write_format(modules, fmt, "flux2")
        report = check_against_model(out, tiny_dit, fmt, "flux2")
        assert report["unmatched_keys"] == 0 and report["tensors"] == len(out) == len(state), (fmt, report)
        for name, (a, b) in modules.items():  # key by key: the same update on the same module
            assert torch.equal(out[f"{prefix}{name}.lora_A.weight"], a) and torch.equal(out[f"{prefix}{name}.lora_B.weight"], b)
    # ComfyUI/kohya: BFL's original names, the double block's q/k/v fused (12 Linears -> 8 modules), alpha = rank
    for fmt in ("comfyui", "kohya"):
        out = write_format(modules, fmt, "flux2")
        report = check_against_model(out, tiny_dit, fmt, "flux2")
        assert report["unmatched_keys"] == 0 and report["matched_modules"] == 8 + 2 * 2, (fmt, report)
        assert len(out) == 3 * (8 + 2 * 2)
    comfy = write_format(modules, "comfyui", "flux2")
    a = comfy["diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight"]
    assert a.shape[0] == 3 * modules["transformer_blocks.0.attn.to_q"][0].shape[0]  # the three ranks stacked
    assert "diffusion_model.single_blocks.1.linear1.lora_B.weight" in comfy
