"""Qwen-Image's checkpoint files: how each kind is recognised, its architecture inferred and its keys named.

The DiT is diffusers' QwenImageTransformer2DModel (the released names); the VAE has the Wan 2.1 VAE's
architecture in diffusers names (AutoencoderKLQwenImage); the text encoder is Qwen2.5-VL-7B-Instruct.
"""
from __future__ import annotations

import re

from ...models.components import (ComponentKind, DetectionError, beside_or, diffusers_class, is_5d, rope_axes,
                                  transformers_class, video_vae_config)
from .real_configs import QWEN25_VL_7B

FAMILY = "qwen_image"
# keys of the video VAE class's config (AutoencoderKLWan) that AutoencoderKLQwenImage does not take
VIDEO_ONLY_VAE_KEYS = ("is_residual", "decoder_base_dim", "in_channels", "out_channels", "patch_size",
                     "scale_factor_spatial", "scale_factor_temporal")


def dit_config(shapes: dict) -> dict:
    inner, in_channels = shapes["img_in.weight"]
    head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"transformer_blocks\.(\d+)\.", k)))
    patch = 2
    return {"patch_size": patch, "in_channels": in_channels, "out_channels": shapes["proj_out.weight"][0] // patch ** 2,
            "num_layers": layers, "attention_head_dim": head_dim, "num_attention_heads": inner // head_dim,
            "joint_attention_dim": shapes["txt_in.weight"][1], "guidance_embeds": False,
            "axes_dims_rope": rope_axes(head_dim)}


def vae_config(shapes: dict, beside: dict | None) -> dict:
    """The Wan 2.1 VAE architecture (inferred from its shapes without a config beside), in Qwen's class's keys."""
    config = beside if beside is not None else video_vae_config(shapes)
    if config.get("is_residual") or config.get("z_dim", 16) != 16:
        raise DetectionError("This VAE is a Wan2.2 VAE (48 latent channels, residual blocks), not a Qwen-Image VAE")
    return {k: v for k, v in config.items() if k not in VIDEO_ONLY_VAE_KEYS}


def text_encoder_config(shapes: dict, beside: dict | None) -> dict:
    if beside is not None:
        return beside
    emb = shapes.get("model.embed_tokens.weight") or shapes.get("model.language_model.embed_tokens.weight")
    if emb == (152064, 3584):
        return QWEN25_VL_7B  # Qwen-Image's text encoder is Qwen2.5-VL-7B-Instruct
    raise DetectionError("A Qwen2.5-VL text encoder of a size other than 7B needs its config.json beside it "
                         "(text_encoder/config.json of the repository)")


# Qwen2.5-VL checkpoints name the language model `model.*` and the vision tower `visual.*`; transformers 5
# nests both under `model.` (`model.language_model.*`, `model.visual.*`).
def vl_checkpoint_to_model(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if k.startswith("visual."):
            k = "model." + k
        elif k.startswith("model.") and not k.startswith(("model.language_model.", "model.visual.")):
            k = "model.language_model." + k[len("model."):]
        out[k] = v
    return out


def vl_model_to_checkpoint(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if k.startswith("model.visual."):
            k = k[len("model."):]
        elif k.startswith("model.language_model."):
            k = "model." + k[len("model.language_model."):]
        out[k] = v
    return out


def _this_vae_class(shapes, beside) -> bool:
    return is_5d("encoder.conv_in.weight")(shapes, beside) and (beside or {}).get("_class_name") != "AutoencoderKLWan"


KINDS = (
    ComponentKind("qwen_image_dit", FAMILY, "dit", "diffusers",
                  (r"^transformer_blocks\.\d+\.(img|txt)_mod\.", r"^txt_norm\.", r"^transformer_blocks\.\d+\.(img|txt)_mlp\."),
                  beside_or(dit_config), diffusers_class("QwenImageTransformer2DModel")),
    ComponentKind("qwen_image_text_encoder", FAMILY, "text_encoder", "transformers",
                  (r"^model\.embed_tokens\.", r"^visual\.patch_embed\.", r"^visual\.blocks\.", r"^model\.language_model\.",
                   r"^model\.visual\.", r"^model\.layers\.\d+\.self_attn\.[qkv]_proj"),
                  text_encoder_config, transformers_class("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLConfig"),
                  lambda sd, c: vl_checkpoint_to_model(sd)),
    # the Wan 2.1 VAE's architecture in diffusers names
    ComponentKind("qwen_image_vae", FAMILY, "vae", "diffusers",
                  (r"^(en|de)coder\.(down|up)_blocks\.\d+\..*gamma$", r"^(en|de)coder\.mid_block\.resnets\.\d+\.norm1\.gamma"),
                  vae_config, diffusers_class("AutoencoderKLQwenImage"), accepts=_this_vae_class),
)
