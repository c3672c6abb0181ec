"""Wan's checkpoint files: how each kind is recognised (Wan-AI's original names or diffusers/transformers'), its
architecture inferred and its keys converted (``convert.py``)."""
from __future__ import annotations

import torch

from ...models.components import (ComponentKind, beside_or, diffusers_class, is_5d, is_umt5, t5_config,
                                  transformers_class)
from . import animate2_model, animate_model, convert, vace_model
from .fun_dit import build_dit

FAMILY = "wan"


def _hf_clip_vision_config(shapes: dict) -> dict:
    meta = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    return convert.wan_clip_config({k: tuple(v.shape) for k, v in convert.hf_to_wan_clip(meta).items()})


def dit_config(shapes: dict, beside: dict | None) -> dict:
    if beside is not None and beside.get("_class_name") in ("WanTransformer3DModel", "WanFunTransformer3DModel"):
        return beside
    return convert.wan_dit_config(shapes, beside)  # beside may be Wan-AI's own config.json (dim, num_heads, ...)


def animate_dit_config(shapes: dict, beside: dict | None) -> dict:
    """An Animate DiT file: the Wan DiT's config from its own keys, plus ``animate_adapter`` (the adapter's keywords,
    from the adapter keys' shapes)."""
    dit = {k: v for k, v in shapes.items() if not animate_model.ADAPTER_KEY.match(k)}
    adapter = {k: v for k, v in shapes.items() if animate_model.ADAPTER_KEY.match(k)}
    wan_ai = beside if beside and "num_heads" in beside else None  # Wan-AI's config.json (model_type animate)
    return {**dit_config(dit, wan_ai), "animate_adapter": animate_model.adapter_config(adapter)}


def vae_config(shapes: dict, beside: dict | None) -> dict:
    return beside if beside is not None else convert.wan_vae_config(shapes)


def _not_another_vae(shapes, beside) -> bool:
    return is_5d("encoder.conv_in.weight")(shapes, beside) and (beside or {}).get("_class_name") in (
        None, "AutoencoderKLWan")


KINDS = (
    # a VACE DiT file (Wan2.1-VACE, Wan2.2-VACE-Fun): the DiT and its VACE branch, loaded as diffusers' VACE model,
    # which the VACE pipeline splits into pipe.dit and pipe.vace (vace_model.py); before the plain DiT kind, which
    # matches it too
    ComponentKind("wan_vace_dit_original", FAMILY, "dit", "wan",
                  (r"^(model\.diffusion_model\.)?vace_blocks\.\d+\.(self_attn|cross_attn)\.",),
                  vace_model.make_config, diffusers_class("WanVACETransformer3DModel"), vace_model.to_model_keys),
    ComponentKind("wan_vace_dit", FAMILY, "dit", "diffusers", (r"^vace_blocks\.\d+\.attn[12]\.",),
                  vace_model.make_config, diffusers_class("WanVACETransformer3DModel")),
    # a Wan2.2-Animate DiT file: the image-to-video DiT and DiffSynth's animate_adapter (pose patch embedding, motion
    # and face encoders, face blocks) in one file, loaded as one model whose adapter parts the Animate pipeline splits
    # off into pipe.animate_adapter (animate_model.py, as DiffSynth's model config splits the file); before the plain
    # DiT kinds, which match it too
    ComponentKind("wan_animate_dit_original", FAMILY, "dit", "wan",
                  (r"^(model\.diffusion_model\.)?face_adapter\.fuser_blocks\.\d+\.linear1_kv\.",),
                  animate_dit_config, animate_model.WanAnimateDiT.from_config,
                  lambda sd, c: convert.wan_dit_to_diffusers(sd),
                  accepts=lambda s, b: any(k.endswith("blocks.0.self_attn.q.weight") for k in s)),
    ComponentKind("wan_animate_dit", FAMILY, "dit", "diffusers",
                  (r"^face_adapter\.fuser_blocks\.\d+\.linear1_kv\.",),
                  animate_dit_config, animate_model.WanAnimateDiT.from_config,
                  accepts=lambda s, b: "blocks.0.attn1.to_q.weight" in s),
    # a Wan2.2-Animate-2 DiT file (DiffSynth's WanAnimate2Transformer, animate2_model.py): its blocks wrap their
    # layers in ``block.``; diffusers' layout (WanAnimate2Transformer3DModel) drops that and renames the attention
    # layers. Both before the plain DiT kinds, whose markers (head.head, blocks.N.self_attn) they share
    ComponentKind("wan_animate_2_dit_original", FAMILY, "dit", "wan",
                  (r"^(model\.diffusion_model\.)?blocks\.\d+\.block\.self_attn\.",),
                  animate2_model.make_config, animate2_model.WanAnimate2DiT.from_config, animate2_model.original_keys),
    ComponentKind("wan_animate_2_dit", FAMILY, "dit", "diffusers", (r"^blocks\.\d+\.self_attn\.to_q\.",),
                  lambda s, b: animate2_model.make_config(animate2_model.state_dict_from_diffusers(s), b),
                  animate2_model.WanAnimate2DiT.from_config, animate2_model.state_dict_from_diffusers),
    # Wan-AI's names, bare, as ComfyUI ships them (model.diffusion_model.) or as Self-Forcing saves them (model.:
    # krea/krea-realtime-video)
    ComponentKind("wan_dit_original", FAMILY, "dit", "wan",
                  (r"^(model\.(diffusion_model\.)?)?blocks\.\d+\.(self_attn|cross_attn)\.",
                   r"^(model\.(diffusion_model\.)?)?head\.head\.", r"^(model\.(diffusion_model\.)?)?time_projection\."),
                  dit_config, build_dit, lambda sd, c: convert.wan_dit_to_diffusers(sd)),
    ComponentKind("wan_dit", FAMILY, "dit", "diffusers",
                  (r"^blocks\.\d+\.attn[12]\.", r"^condition_embedder\."),
                  dit_config, build_dit),
    # the video VAE in diffusers names (2.1 or 2.2)
    ComponentKind("wan_vae", FAMILY, "vae", "diffusers",
                  (r"^(en|de)coder\.(down|up)_blocks\.\d+\..*gamma$", r"^(en|de)coder\.mid_block\.resnets\.\d+\.norm1\.gamma"),
                  vae_config, diffusers_class("AutoencoderKLWan"), accepts=_not_another_vae),
    ComponentKind("wan_vae_original", FAMILY, "vae", "wan",
                  (r"^(en|de)coder\.(downsamples|upsamples|middle)\.\d+\.",),
                  lambda s, b: convert.wan_vae_config(s), diffusers_class("AutoencoderKLWan"),
                  lambda sd, c: convert.wan_vae_to_diffusers(sd, c["num_res_blocks"])),
    ComponentKind("umt5_original", FAMILY, "text_encoder", "wan",
                  (r"^token_embedding\.", r"^blocks\.\d+\.attn\.[qkvo]\.", r"^blocks\.\d+\.ffn\.(gate|fc1|fc2)\.",
                   r"^blocks\.\d+\.pos_embedding\."),
                  lambda s, b: convert.umt5_config(s), transformers_class("UMT5EncoderModel", "UMT5Config"),
                  lambda sd, c: convert.wan_t5_to_hf(sd)),
    ComponentKind("umt5", FAMILY, "text_encoder", "transformers",
                  (r"^encoder\.block\.\d+\.layer\.\d+\.",),
                  beside_or(t5_config), transformers_class("UMT5EncoderModel", "UMT5Config"),
                  accepts=lambda s, b: is_umt5(s)),
    ComponentKind("wan_clip_original", FAMILY, "image_encoder", "wan",
                  (r"^visual\.transformer\.\d+\.", r"^visual\.cls_embedding$", r"^log_scale$"),
                  lambda s, b: convert.wan_clip_config(s),
                  transformers_class("CLIPVisionModelWithProjection", "CLIPVisionConfig"),
                  lambda sd, c: convert.wan_clip_to_hf(sd)),
    ComponentKind("wan_clip", FAMILY, "image_encoder", "transformers",
                  (r"^vision_model\.encoder\.layers\.\d+\.", r"^visual_projection\."),
                  beside_or(_hf_clip_vision_config), transformers_class("CLIPVisionModelWithProjection", "CLIPVisionConfig")),
)
