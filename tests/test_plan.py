"""The memory plan: its numbers are the parameter counts of the real modules (meta device for the real presets,
the loaded pipeline for the tiny one), LoRA counts are what peft injects, the cached train stage holds no encoder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights

from diffsynth.cli import main
from diffsynth.errors import ConfigError
from diffsynth.models.real_configs import REAL_MODELS, WEIGHT_FILES
from diffsynth.plan import load_plan_params, memory_plan, plan_for_file, real_model_for

REPO = Path(__file__).resolve().parents[1]
REAL_PRESETS = sorted(p for p in (REPO / "presets").glob("*.yaml") if p.name != "base.yaml")
QWEN_LORA = REPO / "presets" / "qwen-image-lora.yaml"


def fresh_qwen_dit() -> torch.nn.Module:
    from diffusers import QwenImageTransformer2DModel
    with init_empty_weights():
        return QwenImageTransformer2DModel.from_config(REAL_MODELS["qwen-image-dit"]["config"])


@pytest.fixture(scope="module")
def qwen_plan() -> dict:
    return plan_for_file(QWEN_LORA)


def test_every_real_model_says_where_its_weights_live():
    assert set(WEIGHT_FILES) == set(REAL_MODELS)


def test_qwen_image_weights_are_the_meta_models_parameters(qwen_plan):
    dit = fresh_qwen_dit()
    n = sum(p.numel() for p in dit.parameters())
    assert qwen_plan["models"]["dit"]["parameters"] == n
    assert qwen_plan["models"]["dit"]["bytes"] == 2 * n  # bfloat16
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    with init_empty_weights():
        te = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**REAL_MODELS["qwen-image-text-encoder"]["config"]))
    assert qwen_plan["models"]["text_encoder"]["bytes"] == 2 * sum(p.numel() for p in te.parameters())
    vae = qwen_plan["models"]["vae"]
    assert vae["encoder"]["parameters"] + vae["decoder"]["parameters"] == vae["parameters"]
    assert vae["encoder"]["parameters"] > 0 and vae["decoder"]["parameters"] > 0
    # the figures: a ~20B DiT (~41 GB) and a ~7-8B Qwen2.5-VL (~16.6 GB) in bf16
    assert 40e9 < qwen_plan["models"]["dit"]["bytes"] < 42e9
    assert 16e9 < qwen_plan["models"]["text_encoder"]["bytes"] < 17e9


@pytest.mark.slow  # peft injects 718 adapters into the meta DiT
def test_qwen_image_lora_count_is_what_peft_injects(qwen_plan):
    from diffsynth.training.lora import add_lora
    dit = fresh_qwen_dit()
    targets = [t.strip() for t in qwen_plan_targets().split(",")]
    last = f"transformer_blocks.{len(dit.transformer_blocks) - 1}"
    add_lora(dit, targets, 32, exclude=[f"{last}.attn.to_add_out", f"{last}.txt_mlp.net.0.proj", f"{last}.txt_mlp.net.2"])
    injected = sum(p.numel() for n, p in dit.named_parameters() if ".lora_" in n)
    assert qwen_plan["lora"]["parameters"] == injected
    # by hand: per block 8 attention projections 3072->3072, two MLP outputs 12288->3072, two modulations
    # 3072->18432; the last block's text-stream to_add_out and txt_mlp.net.2 get no LoRA (no gradient)
    per_block = 32 * (8 * (3072 + 3072) + 2 * (12288 + 3072) + 2 * (3072 + 18432))
    assert injected == 60 * per_block - 32 * ((3072 + 3072) + (12288 + 3072))
    train = qwen_plan["modes"]["cached"]["train"]
    assert train["lora_bytes"] == train["trainable_bytes"] == train["gradient_bytes"] == 2 * injected
    assert train["optimizer_bytes"] == 4 * injected  # AdamW: two bf16 states per parameter


def qwen_plan_targets() -> str:
    config = load_plan_params(QWEN_LORA)
    return config.lora.lora_target_modules


def test_cached_train_stage_holds_no_encoder(qwen_plan):
    cached, online = qwen_plan["modes"]["cached"], qwen_plan["modes"]["online"]
    assert set(cached["train"]["models"]) == {"dit", "vae.decoder"}
    assert set(cached["cache"]["models"]) == {"text_encoder", "vae.encoder"}
    assert set(online["train"]["models"]) == {"dit", "vae", "text_encoder"}
    models = qwen_plan["models"]
    assert cached["train"]["weights_bytes"] == models["dit"]["bytes"] + models["vae"]["decoder"]["bytes"]
    assert online["train"]["total_bytes"] - cached["train"]["total_bytes"] == \
        models["text_encoder"]["bytes"] + models["vae"]["encoder"]["bytes"]


def test_fp8_dit_counts_linear_weights_at_one_byte():
    config = load_plan_params(QWEN_LORA)
    dit_entry = config.model.model_id_with_origin_paths.split(",")[0]
    config.model.fp8_models = dit_entry
    plan = memory_plan(config)
    dit = fresh_qwen_dit()
    linear = [m for m in dit.modules() if isinstance(m, torch.nn.Linear)]
    in_linear = sum(m.weight.numel() for m in linear)
    total = sum(p.numel() for p in dit.parameters())
    assert plan["models"]["dit"]["fp8"]
    assert plan["models"]["dit"]["bytes"] == in_linear + 4 * len(linear) + 2 * (total - in_linear)
    assert plan["fp8_models"] == [dit_entry]


def test_model_entries_match_by_repository_and_file():
    assert real_model_for("Wan-AI/Wan2.2-T2V-A14B", "low_noise_model/diffusion_pytorch_model*.safetensors",
                          "wan") == "wan2.2-t2v-a14b-dit"
    assert real_model_for("Wan-AI/Wan2.1-I2V-14B-480P", "Wan2.1_VAE.pth", "wan") == "wan2.1-vae"
    assert real_model_for("black-forest-labs/FLUX.1-dev", "text_encoder_2/*.safetensors", "flux") == "flux.1-dev-t5"
    assert real_model_for("someone/Other-Model", "transformer/*.safetensors", "qwen_image") is None


def test_tiny_plan_equals_the_loaded_pipeline(tiny_env, shapes_dataset, tmp_path):
    """On the tiny preset (architecture read from the local files) the plan equals what training loads: the
    bytes of every module, the trainable parameters after configure_trainable, and the fp8 bytes."""
    from diffsynth.families import spec_for
    from diffsynth.models.fp8 import enable_fp8, parameter_bytes
    from diffsynth.training.module import TrainingModule, configure_trainable
    from diffsynth.training.schedule import FlowMatchSchedule
    from tests.helpers import tiny_config

    config = tiny_config(tmp_path, shapes_dataset)
    plan = memory_plan(config)
    pipe = spec_for(config).load_pipeline(config, torch.float32, "cpu")
    for component, entry in plan["models"].items():
        assert entry["bytes"] == parameter_bytes(getattr(pipe, component)), component
    module = TrainingModule(pipe, FlowMatchSchedule.for_family("qwen_image"), torch.Generator())
    configure_trainable(module, config, torch.float32)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert plan["lora"]["parameters"] == trainable
    assert plan["modes"]["online"]["train"]["trainable_bytes"] == 4 * trainable

    config.model.fp8_models = pipe.component_sources["dit"]
    fp8_plan = memory_plan(config)
    converted = enable_fp8(pipe.dit, compute_dtype=torch.float32)
    base = sum(p.numel() * p.element_size() for n, p in pipe.dit.named_parameters() if ".lora_" not in n)
    assert fp8_plan["models"]["dit"]["bytes"] == base + 4 * converted  # + one float32 scale per layer


@pytest.mark.slow
def test_plan_command_runs_for_every_real_preset(tmp_path, capsys):
    assert len(REAL_PRESETS) >= 10
    for preset in REAL_PRESETS:
        out = tmp_path / f"{preset.stem}.json"
        assert main(["plan", "--params", str(preset), "--fp8", "--json", str(out)]) == 0
        plan = json.loads(out.read_text())
        # --fp8 stores the DiT in fp8 unless it is trained, whole or in part (a full fine-tune of the DiT, or
        # Animate-2's listed attention layers; Wan's speed control trains only its motion controller): trained
        # weights stay bf16
        trained = plan["full_trainable"]["models"]
        dit_trained = any(name == "dit" or name.startswith("dit.") for name in trained)
        assert plan["models"]["dit"]["fp8"] != dit_trained, preset.name
        cached = plan["modes"]["cached"]
        assert not {"text_encoder", "text_encoder_2", "image_encoder"} & set(cached["train"]["models"])
        assert cached["train"]["total_bytes"] < plan["modes"]["online"]["train"]["total_bytes"]
    printed = capsys.readouterr().out
    assert printed.count("## Memory plan") == len(REAL_PRESETS)


def test_plan_reads_overlays_and_names_bad_input(tmp_path, capsys):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("model:\n  family: qwen_image\n  tiny_preset: ''\n  model_id_with_origin_paths: "
                       "\"Qwen/Qwen-Image:vae/diffusion_pytorch_model.safetensors\"\n"
                       "lora:\n  lora_base_model: null\ntrain:\n  trainable_models: vae\ncache:\n  enabled: true\n")
    plan = plan_for_file(overlay)
    assert plan["current_mode"] == "cached"
    assert plan["full_trainable"]["parameters"] == plan["models"]["vae"]["parameters"]
    assert main(["plan", "--params", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml not found" in capsys.readouterr().err
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  model_id_with_origin_paths: \"someone/Other:dit/*.safetensors\"\n"
                       "lora:\n  lora_base_model: dit\n")
    assert main(["plan", "--params", str(unknown)]) == 2
    assert "someone/Other:dit/*.safetensors" in capsys.readouterr().err


def test_a_model_split_by_its_family_plans_the_same_in_any_order(tmp_path):
    """Wan2.2-Animate's DiT file splits into dit + animate_adapter; planning one preset of it must not take the adapter
    from the (cached) model the next preset gets: the full recipe trains animate_adapter."""
    lora, full = (REPO / "presets" / f"wan2.2-animate-14b-{kind}.yaml" for kind in ("lora", "full"))
    for preset in (lora, full, lora):
        assert main(["plan", "--params", str(preset), "--json", str(tmp_path / "plan.json")]) == 0
        plan = json.loads((tmp_path / "plan.json").read_text())
        assert {"dit", "animate_adapter"} <= set(plan["models"])


def test_z_image_blocks_carry_gradient_through_x(tmp_path):
    """Z-Image's blocks take their hidden states as ``x``: checkpointing keeps them, and a frozen DiT below a trained
    ControlNet (the full Fun-ControlNet recipe) still saves activations for the gradient that passes through it."""
    for preset in ("z-image-turbo-lora", "z-image-turbo-fun-controlnet-union-2.1-full"):
        out = tmp_path / f"{preset}.json"
        assert main(["plan", "--params", str(REPO / "presets" / f"{preset}.yaml"), "--json", str(out)]) == 0
        blocks = json.loads(out.read_text())["activations"]["blocks"]
        for name in ("noise_refiner", "layers"):
            block = blocks[f"ZImageTransformerBlock (dit.{name})"]
            assert block["input_bytes"] > 0 and block["saved_bytes"] > 10 * block["input_bytes"], (preset, block)
        # the layers see image + text tokens, the noise refiner only the image's
        assert blocks["ZImageTransformerBlock (dit.layers)"]["input_bytes"] > \
            blocks["ZImageTransformerBlock (dit.noise_refiner)"]["input_bytes"]


def test_side_model_blocks_join_the_activations(tmp_path):
    """The blocks the denoiser runs beside the DiT are traced too: a ControlNet's (its last control layer receives
    the 14 hints so far and its stream, stacked: 15 x its stream) and VACE's, trained in full here."""
    plans = {}
    for preset in ("z-image-turbo-fun-controlnet-union-2.1-full", "wan2.1-vace-14b-full"):
        out = tmp_path / f"{preset}.json"
        assert main(["plan", "--params", str(REPO / "presets" / f"{preset}.yaml"), "--json", str(out)]) == 0
        plans[preset] = json.loads(out.read_text())["activations"]
    a = plans["z-image-turbo-fun-controlnet-union-2.1-full"]
    layers, control = a["blocks"]["ZImageTransformerBlock (dit.layers)"], \
        a["blocks"]["ZImageControlTransformerBlock (controlnet.control_layers)"]
    assert control["count"] == 15 and a["blocks"]["ZImageControlTransformerBlock (controlnet.control_noise_refiner)"][
        "count"] == 2
    assert control["input_bytes"] == 15 * layers["input_bytes"]
    a = plans["wan2.1-vace-14b-full"]
    dit, vace = a["blocks"]["WanTransformerBlock (dit.blocks)"], a["blocks"]["VaceBlock (vace.vace_blocks)"]
    assert (dit["count"], vace["count"]) == (40, 8)
    assert vace["input_bytes"] == a["tokens"]["image_tokens"] * 5120 * 2  # its stream c, in bfloat16, batch 1
    assert vace["saved_bytes"] > dit["saved_bytes"]  # its weights are trained, the DiT's frozen
    # checkpointing keeps every block's input and the 8 hints waiting for the DiT
    assert a["total_bytes"]["checkpointing"] > a["offloaded_input_bytes"] + 8 * vace["input_bytes"]


def test_animate_face_blocks_keep_their_activations_under_checkpointing(tmp_path):
    """DiffSynth's model_fn_wan_video runs Wan2.2-Animate's face blocks between the checkpointed DiT blocks, so
    what they save stays for the backward even with gradient checkpointing (and its offload)."""
    out = tmp_path / "animate.json"
    assert main(["plan", "--params", str(REPO / "presets/wan2.2-animate-14b-lora.yaml"), "--json", str(out)]) == 0
    a = json.loads(out.read_text())["activations"]
    face = a["blocks"]["FaceBlock (animate_adapter.face_adapter.fuser_blocks)"]
    assert face["count"] == 8 and face["saved_bytes"] > 0
    # the face blocks' inputs are not among the checkpointed inputs
    dit = a["blocks"]["WanTransformerBlock (dit.blocks)"]
    assert a["offloaded_input_bytes"] == 40 * dit["input_bytes"]
    for mode in ("checkpointing", "checkpointing_offload"):
        assert a["total_bytes"][mode] > 8 * face["saved_bytes"], mode


def test_dotted_trainable_sub_modules_count_their_own_parameters():
    """DiffSynth's --trainable_models names sub-modules too (the Wan2.2-Animate-2 full recipes train
    dit.blocks.N.block.self_attn.q,k,v): the plan trains exactly those parameters; a wrong name is named."""
    config = load_plan_params(QWEN_LORA)
    config.lora.lora_base_model = None
    config.train.trainable_models = "dit.transformer_blocks.0.attn.to_q,dit.transformer_blocks.1.attn.to_q"
    plan = memory_plan(config)
    per_projection = 3072 * 3072 + 3072  # weight and bias
    assert plan["full_trainable"]["parameters"] == 2 * per_projection
    train = plan["modes"]["cached"]["train"]
    assert train["trainable_bytes"] == train["gradient_bytes"] == 2 * 2 * per_projection  # bfloat16
    config.train.trainable_models = "dit.transformer_blocks.0.attn.q"
    with pytest.raises(ConfigError, match=r"dit has no sub-module 'transformer_blocks.0.attn.q'"):
        memory_plan(config)
