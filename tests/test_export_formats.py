"""Every export format on the tiny Qwen-Image, FLUX, FLUX.2 and Wan DiTs: keys load into the diffusers model with nothing
missing or unexpected, ComfyUI/kohya names exist in the family's original checkpoint layout and carry the same
weight update, and whole-model exports equal base + B·A."""
import logging

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import load_file, save_file

from diffsynth.export import (ExportError, check_lora, export_checkpoint, lora_modules, original_weight_shapes,
                              weight_shapes, write_format)
from diffsynth.export.lora_formats import from_original_names
from diffsynth.families.flux import convert as convert_flux
from diffsynth.families.flux2 import convert as convert_flux2
from diffsynth.families.wan import convert as convert_wan
from diffsynth.models.components import rope_axes


def tiny_dit(family):
    torch.manual_seed(0)
    if family == "qwen_image":
        from diffusers import QwenImageTransformer2DModel
        return QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                                           attention_head_dim=16, num_attention_heads=4, joint_attention_dim=32,
                                           axes_dims_rope=(4, 6, 6))
    if family == "flux":
        from diffusers import FluxTransformer2DModel
        return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2,
                                      attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                      pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=rope_axes(16))
    if family == "flux2":
        from diffusers import Flux2Transformer2DModel
        return Flux2Transformer2DModel(patch_size=1, in_channels=32, num_layers=1, num_single_layers=2,
                                       attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                                       timestep_guidance_channels=16, mlp_ratio=3.0, axes_dims_rope=(4, 4, 4, 4),
                                       guidance_embeds=True)
    from diffsynth.families.wan.tiny import tiny_dit
    return tiny_dit()


TARGETS = {
    "qwen_image": ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "img_mlp.net.2"],
    # q/k/v of the double blocks complete, single blocks only partly (to_q, proj_mlp): exercises zero-filled fusion
    "flux": ["to_q", "transformer_blocks.0.attn.to_k", "transformer_blocks.0.attn.to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out",
             "ff.net.0.proj", "ff_context.net.2", "proj_mlp", "norm1.linear", "norm_out.linear"],
    "wan": ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"],
    # DiffSynth's FLUX.2 names; the image q/k/v only partly (to_q, to_v): zero-filled fusion into img_attn.qkv;
    # norm_out.linear: its B halves swap with the weight's (shift, scale)
    "flux2": ["to_q", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out", "linear_in",
              "linear_out", "to_qkv_mlp_proj", "single_transformer_blocks.0.attn.to_out",
              "double_stream_modulation_img.linear", "x_embedder", "norm_out.linear", "proj_out"],
}
FAMILIES = list(TARGETS)


def trained_lora(family, rank=4):
    """A DiffSynth-native checkpoint as the trainer writes it: peft adapter `default`, B made non-zero."""
    model = tiny_dit(family)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS[family]), model)
    gen = torch.Generator().manual_seed(1)
    state = {}
    for name, p in model.named_parameters():
        if ".lora_" in name:
            state[name] = torch.randn(p.shape, generator=gen) * 0.1
    return state


def deltas(modules):
    return {f"{name}.weight": b.float() @ a.float() for name, (a, b) in modules.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_format_loads_with_load_lora_adapter(family, caplog):
    native = trained_lora(family)
    exported = write_format(lora_modules(native), "diffusers", family)
    assert all(k.startswith("transformer.") and ".default." not in k for k in exported)
    model = tiny_dit(family)
    with caplog.at_level(logging.WARNING):
        model.load_lora_adapter(exported, prefix="transformer", adapter_name="t")
    assert "unexpected" not in caplog.text.lower() and "missing" not in caplog.text.lower(), caplog.text
    loaded = {n.replace(".t.weight", ".weight"): p for n, p in model.named_parameters() if ".lora_" in n}
    assert set(loaded) == {k[len("transformer."):] for k in exported}
    for key, value in exported.items():
        assert torch.equal(loaded[key[len("transformer."):]], value)
    record = check_lora(exported, "diffusers", weight_shapes(tiny_dit(family)))
    assert record["unmatched_keys"] == 0 and record["matched_modules"] == len(native) // 2


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fmt", ["comfyui", "kohya"])
def test_original_name_formats_carry_the_same_update(family, fmt):
    """Applying the exported LoRA in the original layout equals converting the diffusers-space merge."""
    base = tiny_dit(family)
    shapes = weight_shapes(base)
    modules = lora_modules(trained_lora(family))
    exported = write_format(modules, fmt, family, shapes)
    original = original_weight_shapes(base, family)
    record = check_lora(exported, fmt, original)
    assert record["unmatched_keys"] == 0, record["unmatched"]
    convert = {"qwen_image": lambda sd: sd, "flux": convert_flux.diffusers_to_bfl_dit,
               "wan": convert_wan.diffusers_to_wan_dit, "flux2": convert_flux2.diffusers_to_original}[family]
    sd = {k: v for k, v in base.state_dict().items()}
    merged = {k: (v + deltas(modules)[k] if k in deltas(modules) else v) for k, v in sd.items()}
    expected = convert(merged)
    got = dict(convert(sd))
    down, up, prefix = ("lora_A", "lora_B", "diffusion_model.") if fmt == "comfyui" else ("lora_down", "lora_up", "")
    kohya = {"lora_unet_" + n.replace(".", "_"): n for n in original}
    for key, a in exported.items():
        if not key.endswith(f".{down}.weight"):
            continue
        base_name = key[: -len(f".{down}.weight")]
        b = exported[f"{base_name}.{up}.weight"]
        alpha = exported[f"{base_name}.alpha"].item()
        assert alpha == a.shape[0]  # alpha = rank: the update is B @ A
        name = base_name[len(prefix):] if fmt == "comfyui" else kohya[base_name]
        got[f"{name}.weight"] = got[f"{name}.weight"] + (alpha / a.shape[0]) * (b @ a)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=1e-6, msg=k)


def test_comfyui_names_are_the_original_ones():
    wan = write_format(lora_modules(trained_lora("wan")), "comfyui", "wan")
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in wan
    assert "diffusion_model.blocks.1.ffn.2.lora_B.weight" in wan and "diffusion_model.blocks.0.self_attn.q.alpha" in wan
    assert not any(".attn1." in k or "to_q" in k for k in wan)
    flux_base = tiny_dit("flux")
    flux = write_format(lora_modules(trained_lora("flux", rank=4)), "comfyui", "flux", weight_shapes(flux_base))
    a = flux["diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight"]
    b = flux["diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight"]
    assert a.shape == (12, 32) and b.shape == (96, 12)  # q, k, v ranks stacked; B block-diagonal
    assert torch.count_nonzero(b[:32, 4:]) == 0 and torch.count_nonzero(b[32:64, :4]) == 0
    # single blocks: only to_q and proj_mlp have LoRA; linear1 = [q, k, v, mlp], k/v rows of the update are zero
    a1 = flux["diffusion_model.single_blocks.0.linear1.lora_A.weight"]
    b1 = flux["diffusion_model.single_blocks.0.linear1.lora_B.weight"]
    update = b1 @ a1
    assert update.shape == (32 * 3 + 128, 32) and torch.count_nonzero(update[32:96]) == 0
    assert "diffusion_model.final_layer.adaLN_modulation.1.lora_B.weight" in flux


def test_flux_kohya_names_match_the_opensource_format():
    flux = write_format(lora_modules(trained_lora("flux")), "kohya", "flux", weight_shapes(tiny_dit("flux")))
    for name in ("lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_double_blocks_0_txt_attn_qkv",
                 "lora_unet_double_blocks_0_img_attn_proj", "lora_unet_double_blocks_0_txt_attn_proj",
                 "lora_unet_double_blocks_0_img_mlp_0", "lora_unet_double_blocks_0_txt_mlp_2",
                 "lora_unet_double_blocks_0_img_mod_lin", "lora_unet_single_blocks_1_linear1"):
        assert f"{name}.lora_down.weight" in flux and f"{name}.lora_up.weight" in flux, name
        assert flux[f"{name}.alpha"].item() == flux[f"{name}.lora_down.weight"].shape[0]


def test_partial_fusion_without_the_base_model_uses_flux_shapes():
    modules = lora_modules(trained_lora("flux"))
    assert write_format(modules, "comfyui", "flux").keys() == \
        write_format(modules, "comfyui", "flux", weight_shapes(tiny_dit("flux"))).keys()


def test_lora_alpha_is_folded_into_b():
    native = trained_lora("qwen_image", rank=4)
    plain = write_format(lora_modules(native), "diffusers", "qwen_image")
    scaled = write_format(lora_modules(native, alpha=8), "diffusers", "qwen_image")
    key = "transformer.transformer_blocks.0.attn.to_q.lora_B.weight"
    torch.testing.assert_close(scaled[key], 2 * plain[key])
    a_key = key.replace("lora_B", "lora_A")
    assert torch.equal(scaled[a_key], plain[a_key])


def test_check_reports_unknown_modules_and_wrong_shapes():
    shapes = weight_shapes(tiny_dit("wan"))
    bad = {"transformer.blocks.0.attn1.to_x.lora_A.weight": torch.zeros(2, 32),
           "transformer.blocks.0.attn1.to_x.lora_B.weight": torch.zeros(32, 2),
           "transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 31),
           "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(32, 2)}
    record = check_lora(bad, "diffusers", shapes)
    assert record["unmatched_modules"] == 2 and record["matched_modules"] == 0
    assert "31 inputs" in record["unmatched"]["transformer.blocks.0.attn1.to_q.lora_A.weight"]


@pytest.mark.parametrize("family", ["qwen_image", "wan"])
def test_merged_export_is_base_plus_ba_and_loads_with_from_pretrained(family, tmp_path):
    native = trained_lora(family)
    save_file(native, str(tmp_path / "epoch-0.safetensors"))
    base = tiny_dit(family)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    result = export_checkpoint(tmp_path / "epoch-0.safetensors", tmp_path / "out", ["diffusers", "comfyui"], family,
                               base, lora_alpha=8, merge=True, load_base=lambda: base, max_shard_size="50KB")
    assert result.ok and set(result.files) == {"diffusers", "comfyui", "model"}
    folder = tmp_path / "out" / "model"
    assert (folder / "config.json").exists() and (folder / "diffusion_pytorch_model.safetensors.index.json").exists()
    assert len(list(folder.glob("diffusion_pytorch_model-*.safetensors"))) > 1
    merged = type(base).from_pretrained(str(folder)).state_dict()
    modules = lora_modules(native)  # alpha = rank here; the export used lora_alpha 8 = 2 × rank 4
    for name, (a, b) in modules.items():
        expected = before[f"{name}.weight"] + 2.0 * (b @ a)
        torch.testing.assert_close(merged[f"{name}.weight"], expected, rtol=1e-6, atol=1e-6)
    untouched = next(k for k in before if k.endswith("norm_q.weight"))
    assert torch.equal(merged[untouched], before[untouched])


def test_full_finetune_exports_a_model_folder(tmp_path):
    base = tiny_dit("wan")
    trained = {k: v + 1.0 for k, v in tiny_dit("wan").state_dict().items()}
    save_file(trained, str(tmp_path / "epoch-0.safetensors"))
    result = export_checkpoint(tmp_path / "epoch-0.safetensors", tmp_path / "out", ["diffusers"], "wan",
                               tiny_dit("wan"), load_base=lambda: base)
    assert "diffusers" not in result.files and result.compat["model"]["full_tensors"] == len(trained)
    loaded = type(base).from_pretrained(str(tmp_path / "out" / "model")).state_dict()
    for k, v in trained.items():
        assert torch.equal(loaded[k], v), k


def test_unknown_format_names_the_param(tmp_path):
    save_file(trained_lora("qwen_image"), str(tmp_path / "c.safetensors"))
    with pytest.raises(ExportError, match="export.formats"):
        export_checkpoint(tmp_path / "c.safetensors", tmp_path / "o", ["safetensors"], "qwen_image", tiny_dit("qwen_image"))


def test_exported_files_round_trip(tmp_path):
    native = trained_lora("wan")
    save_file(native, str(tmp_path / "c.safetensors"))
    result = export_checkpoint(tmp_path / "c.safetensors", tmp_path / "o", ["diffsynth", "kohya"], "wan", tiny_dit("wan"))
    assert result.ok
    again = load_file(str(result.files["diffsynth"]))
    # DiffSynth's Wan DiT has the original Wan names: same tensors, renamed, and read back exactly
    assert "blocks.0.self_attn.q.lora_A.weight" in again and not any(".attn1." in k for k in again)
    back, want = from_original_names(lora_modules(again), "wan", tiny_dit("wan")), lora_modules(native)
    assert set(back) == set(want) and all(torch.equal(back[n][i], want[n][i]) for n in want for i in (0, 1))
    assert "lora_unet_blocks_0_self_attn_q.lora_down.weight" in load_file(str(result.files["kohya"]))


@pytest.mark.parametrize("family,fmt", [("flux", "kohya"), ("wan", "comfyui"), ("flux2", "comfyui"), ("flux2", "kohya")])
def test_checkpoints_in_original_names_export_back_to_diffusers(family, fmt, tmp_path):
    """A checkpoint saved with align_to_opensource_format (kohya) or a ComfyUI LoRA exports to every format."""
    native = lora_modules(trained_lora(family))
    model = tiny_dit(family)
    save_file(write_format(native, fmt, family, weight_shapes(model)), str(tmp_path / "c.safetensors"))
    result = export_checkpoint(tmp_path / "c.safetensors", tmp_path / "o", ["diffusers", "comfyui"], family, model)
    assert result.ok and result.compat["unmatched_modules"] == 0
    back = lora_modules(load_file(str(result.files["diffusers"])))
    expected, got = deltas(native), deltas(back)
    for name, delta in expected.items():  # parts the original layer fused without a LoRA get none back
        assert torch.allclose(got[name], delta, atol=1e-5), name


def test_merge_with_the_fetched_tiny_preset(tmp_path, tiny_env):
    """The export stage's path: model entries -> trained component on meta for the checks, weights only to merge."""
    from conftest import TINY_QWEN_MODELS
    from diffsynth.export import base_model
    from diffsynth.models.model_config import fetch, parse_model_configs

    configs = [fetch(c) for c in parse_model_configs(None, TINY_QWEN_MODELS)]
    meta, load = base_model(configs, "qwen_image", "dit")
    native = trained_lora("qwen_image")
    save_file(native, str(tmp_path / "c.safetensors"))
    result = export_checkpoint(tmp_path / "c.safetensors", tmp_path / "o", ["diffusers", "comfyui"], "qwen_image",
                               meta, merge=True, load_base=load)
    assert result.ok and result.compat["matched_modules"] == len(native) // 2
    base, merged = load().state_dict(), type(meta).from_pretrained(str(tmp_path / "o" / "model")).state_dict()
    a, b = native["transformer_blocks.1.attn.to_q.lora_A.default.weight"], native["transformer_blocks.1.attn.to_q.lora_B.default.weight"]
    torch.testing.assert_close(merged["transformer_blocks.1.attn.to_q.weight"],
                               base["transformer_blocks.1.attn.to_q.weight"] + b @ a, rtol=1e-6, atol=1e-6)


def test_standalone_export_of_a_wan_checkpoint_in_diffsynth_names(tmp_path):
    """`diffsynth export` has no base model: Wan's DiffSynth (original) names go back to diffusers by renaming."""
    from diffsynth.export import export_lora
    from diffsynth.export.lora_formats import to_diffsynth_checkpoint
    native = trained_lora("wan")
    save_file(to_diffsynth_checkpoint(native, "wan"), str(tmp_path / "c.safetensors"))
    exported = export_lora(tmp_path / "c.safetensors", tmp_path / "d.safetensors", "diffusers", "wan")
    assert exported and all(k.startswith("transformer.blocks.") for k in exported)
    assert not any("self_attn" in k or "cross_attn" in k for k in exported)
    assert check_lora(exported, "diffusers", weight_shapes(tiny_dit("wan")))["unmatched_keys"] == 0


def test_standalone_export_of_fused_flux_names_says_what_to_do(tmp_path):
    from diffsynth.export import export_lora
    from diffsynth.export.lora_formats import to_diffsynth_checkpoint
    save_file(to_diffsynth_checkpoint(trained_lora("flux"), "flux"), str(tmp_path / "c.safetensors"))
    with pytest.raises(ExportError, match="base model"):
        export_lora(tmp_path / "c.safetensors", tmp_path / "d.safetensors", "diffusers", "flux")


# ---- Wan variants: FLF2V's image positions, Wan-Fun's reference convolution and camera adapter ------------------
# ComfyUI's Wan model (comfy/ldm/wan/model.py, read at 075e17041b2f: CameraWanModel.control_adapter = WanCamAdapter
# with .conv and .residual_blocks.N.conv1/.conv2, MLPProj.emb_pos; a later revision adds WanModel.ref_conv, a Conv2d
# of the patch size) keeps the original Wan / DiffSynth names, and comfy/lora.py (41444b5236c6) maps a LoRA name
# `diffusion_model.<module>` onto `diffusion_model.<module>.weight` of that model's state dict.
FUN_DITS = {  # tiny DiT keyword arguments (diffsynth.families.wan.tiny.tiny_dit)
    "flf2v": dict(in_ch=36, image_dim=32, pos_embed_seq_len=10),
    "fun-control": dict(in_ch=48, image_dim=32),
    "fun-v1.1-control": dict(in_ch=48, image_dim=32, has_ref_conv=True),
    "fun-control-camera": dict(in_ch=32, image_dim=32, control_adapter_in_dim=24),
    "wan2.2-fun-a14b-control": dict(in_ch=52, has_ref_conv=True),
    "wan2.2-fun-a14b-control-camera": dict(in_ch=36, control_adapter_in_dim=24),
}


def comfyui_fun_names(kwargs: dict, dim: int = 32) -> dict:
    """The Fun / FLF2V parameters ComfyUI's Wan model holds, by its module code (patch 2x2, 16 latent channels)."""
    names = {}
    if kwargs.get("pos_embed_seq_len"):
        names["img_emb.emb_pos"] = (1, kwargs["pos_embed_seq_len"], kwargs["image_dim"])
    if kwargs.get("has_ref_conv"):
        names.update({"ref_conv.weight": (dim, 16, 2, 2), "ref_conv.bias": (dim,)})
    if kwargs.get("control_adapter_in_dim"):
        names.update({"control_adapter.conv.weight": (dim, kwargs["control_adapter_in_dim"] * 64, 2, 2),
                      "control_adapter.conv.bias": (dim,)})
        for conv in ("conv1", "conv2"):
            names.update({f"control_adapter.residual_blocks.0.{conv}.weight": (dim, dim, 3, 3),
                          f"control_adapter.residual_blocks.0.{conv}.bias": (dim,)})
    return names


@pytest.mark.parametrize("variant", list(FUN_DITS))
def test_wan_variant_dits_export_every_module_in_comfyui_names(variant):
    from diffsynth.families.wan.tiny import tiny_dit as wan_dit
    torch.manual_seed(0)
    base = wan_dit(**FUN_DITS[variant])
    # the additions keep ComfyUI's names and shapes in the original layout, and come back unchanged
    sd = base.state_dict()
    original = convert_wan.diffusers_to_wan_dit(sd)
    expected = comfyui_fun_names(FUN_DITS[variant])
    added = {k: tuple(v.shape) for k, v in original.items() if k.startswith(("ref_conv.", "control_adapter.",
                                                                               "img_emb.emb_pos"))}
    assert added == expected
    back = convert_wan.wan_dit_to_diffusers(original)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    # a LoRA on every Linear of the variant's DiT (image embedder and condition embedders too), key by key
    linears = [n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)]
    lora = wan_dit(**FUN_DITS[variant])
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=linears), lora)
    gen = torch.Generator().manual_seed(1)
    state = {n: torch.randn(p.shape, generator=gen) * 0.1 for n, p in lora.named_parameters() if ".lora_" in n}
    modules = lora_modules(state)
    assert len(modules) == len(linears)
    exported = write_format(modules, "comfyui", "wan", weight_shapes(base))
    record = check_lora(exported, "comfyui", original_weight_shapes(base, "wan"))
    assert record["unmatched_keys"] == 0 and record["matched_modules"] == len(linears), record["unmatched"]
    merged = {k: v + (modules[k[:-len(".weight")]][1] @ modules[k[:-len(".weight")]][0]
                      if k[:-len(".weight")] in modules else 0) for k, v in sd.items()}
    want = convert_wan.diffusers_to_wan_dit(merged)
    got = dict(original)
    for key, a in exported.items():
        if key.endswith(".lora_A.weight"):
            name = key[len("diffusion_model."):-len(".lora_A.weight")]
            assert f"{name}.weight" in original, name  # a module of ComfyUI's Wan model
            b = exported[f"diffusion_model.{name}.lora_B.weight"]
            got[f"{name}.weight"] = got[f"{name}.weight"] + b @ a
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6, msg=k)


def test_a_full_finetune_of_the_speed_control_motion_controller_exports_its_own_file(tmp_path):
    """trainable_models motion_controller: the checkpoint is the controller (DiffSynth's linear.* names), written
    as model.safetensors in the layout of DiffSynth-Studio/Wan2.1-1.3b-speedcontrol-v1."""
    from diffsynth.families.wan.fun_dit import WanMotionController
    torch.manual_seed(0)
    base = WanMotionController(freq_dim=16, dim=8)
    trained = {k: v + 1.0 for k, v in base.state_dict().items()}
    save_file(trained, str(tmp_path / "epoch-0.safetensors"))
    result = export_checkpoint(tmp_path / "epoch-0.safetensors", tmp_path / "out", ["diffusers"], "wan_speed_control",
                               WanMotionController(freq_dim=16, dim=8), load_base=lambda: base)
    assert result.compat["model"]["full_tensors"] == len(trained) == 6
    written = load_file(str(tmp_path / "out" / "model" / "model.safetensors"))
    assert written.keys() == trained.keys() and all(torch.equal(written[k], trained[k]) for k in trained)


# FLUX.2's original key set (BFL's released files, which ComfyUI loads as they are), written out from ComfyUI's
# FLUX.2 model code (comfy/ldm/flux of v0.9.0, read in a port: global modulation, bias-free layers, SiLU-gated
# MLPs) and diffusers' scripts/convert_flux2_to_diffusers.py (58eb52c0803e): {key: shape} from the config.
def flux2_original_keys(config: dict) -> dict[str, tuple]:
    h = config["num_attention_heads"] * config["attention_head_dim"]
    d, mlp = config["attention_head_dim"], int(h * config["mlp_ratio"])
    keys = {"img_in.weight": (h, config["in_channels"]), "txt_in.weight": (h, config["joint_attention_dim"]),
            "time_in.in_layer.weight": (h, config["timestep_guidance_channels"]), "time_in.out_layer.weight": (h, h),
            "double_stream_modulation_img.lin.weight": (6 * h, h),
            "double_stream_modulation_txt.lin.weight": (6 * h, h),
            "single_stream_modulation.lin.weight": (3 * h, h),
            "final_layer.adaLN_modulation.1.weight": (2 * h, h),
            "final_layer.linear.weight": (config["out_channels"] or config["in_channels"], h)}
    if config["guidance_embeds"]:
        keys.update({"guidance_in.in_layer.weight": (h, config["timestep_guidance_channels"]),
                     "guidance_in.out_layer.weight": (h, h)})
    for i in range(config["num_layers"]):
        for stream in ("img", "txt"):
            keys.update({f"double_blocks.{i}.{stream}_attn.qkv.weight": (3 * h, h),
                         f"double_blocks.{i}.{stream}_attn.proj.weight": (h, h),
                         f"double_blocks.{i}.{stream}_attn.norm.query_norm.scale": (d,),
                         f"double_blocks.{i}.{stream}_attn.norm.key_norm.scale": (d,),
                         f"double_blocks.{i}.{stream}_mlp.0.weight": (2 * mlp, h),
                         f"double_blocks.{i}.{stream}_mlp.2.weight": (h, mlp)})
    for i in range(config["num_single_layers"]):
        keys.update({f"single_blocks.{i}.linear1.weight": (3 * h + 2 * mlp, h),
                     f"single_blocks.{i}.linear2.weight": (h, h + mlp),
                     f"single_blocks.{i}.norm.query_norm.scale": (d,),
                     f"single_blocks.{i}.norm.key_norm.scale": (d,)})
    return keys


@pytest.mark.parametrize("name", ["tiny", "flux.2-klein-4b-dit", "flux.2-klein-9b-dit", "flux.2-dev-dit"])
def test_flux2_original_names_are_bfl_and_comfyuis_key_set(name):
    """Key by key: our FLUX.2 converter gives exactly the original checkpoint's keys and shapes (real configs on
    the meta device), and comes back to diffusers' state dict exactly."""
    from accelerate import init_empty_weights
    from diffsynth.models.real_configs import REAL_MODELS, build_class
    if name == "tiny":
        model = tiny_dit("flux2")
    else:
        with init_empty_weights():
            model = build_class(REAL_MODELS[name]["cls"]).from_config(REAL_MODELS[name]["config"])
    state = model.state_dict()
    original = convert_flux2.diffusers_to_original(state)
    assert {k: tuple(v.shape) for k, v in original.items()} == flux2_original_keys(dict(model.config))
    if name != "tiny":
        return
    back = convert_flux2.original_to_diffusers({f"model.diffusion_model.{k}": v for k, v in original.items()})
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    # the final modulation is (shift, scale) in the original, (scale, shift) in diffusers; q/k/v stacked in order
    scale, shift = state["norm_out.linear.weight"].chunk(2)
    assert torch.equal(original["final_layer.adaLN_modulation.1.weight"], torch.cat([shift, scale]))
    qkv = original["double_blocks.0.txt_attn.qkv.weight"].chunk(3)
    assert all(torch.equal(part, state[f"transformer_blocks.0.attn.add_{p}_proj.weight"]) for part, p in zip(qkv, "qkv"))


def test_flux2_lora_names_without_the_model():
    """`diffsynth export` has no base model: FLUX.2's original names rename back, except the fused q/k/v."""
    from diffsynth.families.flux2.pipeline import Flux2
    modules = lora_modules(trained_lora("flux2"))
    original = write_format(modules, "kohya", "flux2")
    unfused = {k: v for k, v in lora_modules(original).items() if not k.endswith("_attn_qkv")}
    kohya = {"lora_unet_" + n.replace(".", "_"): n for n in original_weight_shapes(tiny_dit("flux2"), "flux2")}
    back = Flux2.lora_names_without_model({kohya[k]: ab for k, ab in unfused.items()})
    fused = (".attn.to_q", ".attn.to_v", ".attn.add_q_proj", ".attn.add_k_proj", ".attn.add_v_proj")
    want = {n: ab for n, ab in modules.items() if not n.endswith(fused)}
    assert back.keys() == want.keys()
    for n, (a, b) in want.items():
        assert torch.equal(back[n][0], a) and torch.equal(back[n][1], b), n  # norm_out's B halves swapped back
    with pytest.raises(ExportError, match="fused q/k/v layer"):
        Flux2.lora_names_without_model({"double_blocks.0.img_attn.qkv": modules["transformer_blocks.0.attn.to_q"]})
