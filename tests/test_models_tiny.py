"""Tiny presets in the real layouts go through fetch -> detect -> load; converters are exact on real tensors."""
from __future__ import annotations

import torch
import pytest

from diffsynth.families.flux import convert as cf
from diffsynth.families.wan import convert as cw
from diffsynth.models.components import detect, load_component
from diffsynth.models.model_config import fetch, parse_model_configs, parse_path_or_model_id
from diffsynth.models.tiny import TINY_PRESETS, is_tiny_preset, write_tiny_model

ENTRIES = {
    "qwen-image-edit": ["transformer/diffusion_pytorch_model*.safetensors", "text_encoder/model*.safetensors",
                        "vae/diffusion_pytorch_model.safetensors"],
    "flux.1-dev": ["flux1-dev.safetensors", "ae.safetensors", "text_encoder/model.safetensors",
                   "text_encoder_2/*.safetensors"],
    "wan2.1-t2v-1.3b": ["diffusion_pytorch_model*.safetensors", "models_t5_umt5-xxl-enc-bf16.pth", "Wan2.1_VAE.pth"],
    "wan2.1-i2v-14b": ["diffusion_pytorch_model*.safetensors", "models_t5_umt5-xxl-enc-bf16.pth", "Wan2.1_VAE.pth",
                       "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"],
    "wan2.2-ti2v-5b": ["diffusion_pytorch_model*.safetensors", "models_t5_umt5-xxl-enc-bf16.pth", "Wan2.2_VAE.pth"],
    "wan2.2-a14b": ["high_noise_model/diffusion_pytorch_model*.safetensors", "models_t5_umt5-xxl-enc-bf16.pth",
                    "Wan2.1_VAE.pth"],
    "z-image-omni-base": ["transformer/*.safetensors", "siglip/model.safetensors", "text_encoder/*.safetensors",
                          "vae/diffusion_pytorch_model.safetensors"],
}
TOKENIZERS = {"qwen-image-edit": ["tokenizer/", "processor/"], "flux.1-dev": ["tokenizer/", "tokenizer_2/"],
              "wan2.1-t2v-1.3b": ["google/umt5-xxl/"], "z-image-omni-base": ["tokenizer/"]}
EXPECTED = {"qwen-image-edit": {"dit", "text_encoder", "vae"},
            "flux.1-dev": {"dit", "vae", "text_encoder", "text_encoder_2"},
            "wan2.1-t2v-1.3b": {"dit", "text_encoder", "vae"},
            "wan2.1-i2v-14b": {"dit", "text_encoder", "vae", "image_encoder"},
            "wan2.2-ti2v-5b": {"dit", "text_encoder", "vae"}, "wan2.2-a14b": {"dit", "text_encoder", "vae"},
            "z-image-omni-base": {"dit", "text_encoder", "vae", "image_encoder"}}


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny_models")
    for preset in ENTRIES:
        write_tiny_model(preset, base / "diffsynth-tiny" / preset)
    return base


@pytest.mark.parametrize("preset", list(ENTRIES))
def test_tiny_preset_loads_through_the_real_path(tiny_base, preset):
    family, repo, _ = TINY_PRESETS[preset]
    assert is_tiny_preset(tiny_base / "diffsynth-tiny" / preset)
    assert repo in (tiny_base / "diffsynth-tiny" / preset / "TINY_PRESET.md").read_text()
    flag = ",".join(f"diffsynth-tiny/{preset}:{p}" for p in ENTRIES[preset])
    loaded = {}
    for config in parse_model_configs(None, flag):
        component, module = load_component(fetch(config, base_path=tiny_base, skip=True), family, torch.float32)
        loaded[component] = module
    assert set(loaded) == EXPECTED[preset]
    for folder in TOKENIZERS.get(preset, []):
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(fetch(parse_path_or_model_id(f"diffsynth-tiny/{preset}:{folder}", ""),
                                                  base_path=tiny_base, skip=True).path)
        assert len(tok("a red circle")["input_ids"]) > 1


def test_flux_bfl_and_diffusers_layouts_load_identical_weights(tiny_base):
    root = tiny_base / "diffsynth-tiny" / "flux.1-dev"
    for bfl, diff in (("flux1-dev.safetensors", "transformer/*.safetensors"),
                      ("ae.safetensors", "vae/diffusion_pytorch_model.safetensors")):
        a = load_component(fetch(parse_model_configs(f'["{root / bfl}"]', None)[0]), "flux", torch.float32)[1]
        b = load_component(fetch(parse_model_configs(f'["{root / diff}"]', None)[0]), "flux", torch.float32)[1]
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_flux_dit_runs_forward(tiny_base):
    dit = load_component(fetch(parse_model_configs(None, "diffsynth-tiny/flux.1-dev:flux1-dev.safetensors")[0],
                               base_path=tiny_base, skip=True), "flux", torch.float32)[1]
    out = dit(hidden_states=torch.randn(1, 16, 64), encoder_hidden_states=torch.randn(1, 4, 32),
              pooled_projections=torch.randn(1, 32), timestep=torch.tensor([0.5]), guidance=torch.tensor([1.0]),
              img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(4, 3), return_dict=False)[0]
    assert out.shape == (1, 16, 64)


def test_flux_converter_on_small_dict_splits_fused_qkv_and_swaps_final_modulation():
    inner = 4
    sd = {"img_in.weight": torch.zeros(inner, 8),
          "double_blocks.0.img_attn.qkv.weight": torch.arange(12.0).repeat_interleave(inner).view(12, inner),
          "single_blocks.0.linear1.weight": torch.arange(3 * inner + 8.0).unsqueeze(1).repeat(1, inner),
          "final_layer.adaLN_modulation.1.weight": torch.cat([torch.zeros(inner, inner), torch.ones(inner, inner)])}
    out = cf.bfl_dit_to_diffusers(sd)
    assert torch.equal(out["transformer_blocks.0.attn.to_k.weight"][:, 0], torch.arange(4.0, 8.0))
    assert out["single_transformer_blocks.0.proj_mlp.weight"].shape == (8, inner)
    assert torch.equal(out["single_transformer_blocks.0.attn.to_v.weight"][:, 0], torch.arange(8.0, 12.0))
    assert out["norm_out.linear.weight"][0, 0] == 1  # (shift, scale) -> (scale, shift)
    back = cf.diffusers_to_bfl_dit(out)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_wan_converters_on_small_dicts():
    sd = {"blocks.0.self_attn.q.weight": torch.ones(2, 2), "blocks.0.norm3.bias": torch.zeros(2),
          "blocks.0.modulation": torch.zeros(1, 6, 2), "head.head.weight": torch.ones(4, 2), "head.modulation": torch.zeros(1, 2, 2)}
    out = cw.wan_dit_to_diffusers(sd)
    assert set(out) == {"blocks.0.attn1.to_q.weight", "blocks.0.norm2.bias", "blocks.0.scale_shift_table",
                        "proj_out.weight", "scale_shift_table"}
    assert cw.diffusers_to_wan_dit(out).keys() == sd.keys()
    t5 = {"token_embedding.weight": torch.zeros(3, 2), "blocks.0.ffn.gate.0.weight": torch.zeros(4, 2)}
    assert set(cw.wan_t5_to_hf(t5)) == {"shared.weight", "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"}
    clip = {"visual.head": torch.arange(6.0).view(2, 3), "visual.transformer.0.attn.to_qkv.bias": torch.arange(6.0)}
    hf = cw.wan_clip_to_hf(clip)
    assert hf["visual_projection.weight"].shape == (3, 2)
    assert torch.equal(hf["vision_model.encoder.layers.0.self_attn.k_proj.bias"], torch.tensor([2.0, 3.0]))
    assert torch.equal(cw.hf_to_wan_clip(hf)["visual.head"], clip["visual.head"])


def test_detection_names_tiny_wan_files(tiny_base):
    root = tiny_base / "diffsynth-tiny" / "wan2.2-ti2v-5b"
    assert detect([str(root / "Wan2.2_VAE.safetensors")], "wan").config["is_residual"] is True
    assert detect([str(root / "diffusion_pytorch_model.safetensors")], "wan").config["in_channels"] == 48
