"""Wan2.1/2.2 checkpoints in the original Wan-AI names <-> diffusers/transformers names (pure functions).

* DiT: ``blocks.N.self_attn.q`` <-> ``blocks.N.attn1.to_q``; the original ``norm3`` (cross-attention norm)
  is diffusers' ``norm2``; ``modulation`` <-> ``scale_shift_table``; I2V ``img_emb.proj.*`` <-> image embedder.
* VAE 2.1: flat ``encoder.downsamples.K`` / ``decoder.upsamples.K`` lists; VAE 2.2: nested residual blocks.
* UMT5 encoder (``models_t5_umt5-xxl-enc-bf16``): Wan's own T5 module names <-> ``UMT5EncoderModel``.
* CLIP (``models_clip_open-clip-xlm-roberta-large-vit-huge-14``): open-clip ViT-H names <-> ``CLIPVisionModelWithProjection``
  (the XLM-RoBERTa text tower in the same file is not used by Wan and is dropped).
Functions accept real tensors or meta tensors.
"""
from __future__ import annotations

import re

import torch

from ...models.components import video_vae_config
from .fun_dit import fun_dit_config

# ----------------------------------------------------------------------------------------------- DiT
_DIT = [  # (original, diffusers) substrings, applied in order on the dotted name
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("img_emb.proj.0.", "condition_embedder.image_embedder.norm1."),
    ("img_emb.proj.1.", "condition_embedder.image_embedder.ff.net.0.proj."),
    ("img_emb.proj.3.", "condition_embedder.image_embedder.ff.net.2."),
    ("img_emb.proj.4.", "condition_embedder.image_embedder.norm2."),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),  # FLF2V: two images' CLIP positions
    ("head.head.", "proj_out."),
]
_BLOCK = {"self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
          "self_attn.o": "attn1.to_out.0", "self_attn.norm_q": "attn1.norm_q", "self_attn.norm_k": "attn1.norm_k",
          "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v",
          "cross_attn.o": "attn2.to_out.0", "cross_attn.norm_q": "attn2.norm_q", "cross_attn.norm_k": "attn2.norm_k",
          "cross_attn.k_img": "attn2.add_k_proj", "cross_attn.v_img": "attn2.add_v_proj",
          "cross_attn.norm_k_img": "attn2.norm_added_k", "norm3": "norm2", "ffn.0": "ffn.net.0.proj",
          "ffn.2": "ffn.net.2"}
# VACE blocks (``vace_blocks.N.``: a DiT block plus these; diffusers' WanVACETransformerBlock names them proj_in/out)
_VACE_PROJ = {"before_proj": "proj_in", "after_proj": "proj_out"}


# ComfyUI's single files put the DiT under ``model.diffusion_model.``; Self-Forcing's checkpoints (Krea Realtime
# 14B: DiffSynth's WanVideoDiTStateDictConverter strips it) under ``model.``
_PREFIX = re.compile(r"^model\.(diffusion_model\.)?")


def _strip(sd: dict) -> dict:
    return {_PREFIX.sub("", k): v for k, v in sd.items()}


def wan_dit_to_diffusers(sd: dict) -> dict:
    out = {}
    for key, value in _strip(sd).items():
        new = key
        if m := re.match(r"((?:vace_)?blocks)\.(\d+)\.(.+)\.(weight|bias)$", key):
            if m[3] in _BLOCK or m[3] in _VACE_PROJ:
                new = f"{m[1]}.{m[2]}.{_BLOCK.get(m[3]) or _VACE_PROJ[m[3]]}.{m[4]}"
        elif m := re.match(r"((?:vace_)?blocks)\.(\d+)\.modulation$", key):
            new = f"{m[1]}.{m[2]}.scale_shift_table"
        elif key == "head.modulation":
            new = "scale_shift_table"
        else:
            for src, dst in _DIT:
                if key.startswith(src):
                    new = dst + key[len(src):]
                    break
        out[new] = value
    return out


def diffusers_to_wan_dit(sd: dict) -> dict:
    inv_block = {v: k for k, v in {**_BLOCK, **_VACE_PROJ}.items()}
    out = {}
    for key, value in sd.items():
        new = key
        if m := re.match(r"((?:vace_)?blocks)\.(\d+)\.(.+)\.(weight|bias)$", key):
            if m[3] in inv_block:
                new = f"{m[1]}.{m[2]}.{inv_block[m[3]]}.{m[4]}"
        elif m := re.match(r"((?:vace_)?blocks)\.(\d+)\.scale_shift_table$", key):
            new = f"{m[1]}.{m[2]}.modulation"
        elif key == "scale_shift_table":
            new = "head.modulation"
        else:
            for src, dst in _DIT:
                if key.startswith(dst):
                    new = src + key[len(dst):]
                    break
        out[new] = value
    return out


# DiffSynth-Studio's own Wan DiT (``diffsynth/models/wan_video_dit.py``, ``WanModel``) keeps the original Wan-AI
# module names (its ``WanVideoDiTFromDiffusers`` converter is the table above), so its trainer's checkpoints and
# LoRAs use them: DiffSynth names are the original names.
diffusers_to_diffsynth_dit = diffusers_to_wan_dit
diffsynth_dit_to_diffusers = wan_dit_to_diffusers


def wan_dit_config(shapes: dict, original_config: dict | None = None) -> dict:
    """``WanTransformer3DModel`` config from shapes (either naming) or from Wan-AI's own ``config.json``."""
    s = shapes if any(k.startswith("blocks.") and ".attn1." in k for k in shapes) else wan_dit_to_diffusers(
        {k: torch.empty(v, device="meta") for k, v in shapes.items()})
    s = {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in s.items()}
    dim, in_ch, *patch = s["patch_embedding.weight"]
    layers = 1 + max(int(m[1]) for k in s if (m := re.match(r"blocks\.(\d+)\.", k)))
    if original_config and "num_heads" in original_config:
        heads = original_config["num_heads"]
    else:
        heads = dim // 128 if dim % 128 == 0 else max(1, dim // 16)  # Wan's head size is 128 in every release
    image_dim = s["condition_embedder.image_embedder.norm1.weight"][0] \
        if "condition_embedder.image_embedder.norm1.weight" in s else None
    prod = patch[0] * patch[1] * patch[2]
    extra = fun_dit_config(s)  # Wan-Fun's reference convolution / camera adapter (none in other releases)
    # FLF2V: 2 x 257 image tokens with positions (None in every other release)
    pos = s.get("condition_embedder.image_embedder.pos_embed")
    extra["pos_embed_seq_len"] = pos[1] if pos is not None else None
    return {**extra, "patch_size": list(patch), "num_attention_heads": heads, "attention_head_dim": dim // heads,
            "in_channels": in_ch, "out_channels": s["proj_out.weight"][0] // prod,
            "text_dim": s["condition_embedder.text_embedder.linear_1.weight"][1],
            "freq_dim": s["condition_embedder.time_embedder.linear_1.weight"][1],
            "ffn_dim": s["blocks.0.ffn.net.0.proj.weight"][0], "num_layers": layers, "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": image_dim,
            "added_kv_proj_dim": dim if "blocks.0.attn2.add_k_proj.weight" in s else None,
            "rope_max_seq_len": 1024}


def wan_original_dit_config(config: dict) -> dict:
    """Wan-AI's ``config.json`` (``dim``, ``num_heads``, ``in_dim``...) as written for a tiny preset too."""
    return config


# ----------------------------------------------------------------------------------------------- VAE
_RES = [("residual.0.gamma", "norm1.gamma"), ("residual.2.", "conv1."), ("residual.3.gamma", "norm2.gamma"),
        ("residual.6.", "conv2."), ("shortcut.", "conv_shortcut.")]


def _res(rest: str, inverse: bool = False) -> str:
    for a, b in _RES:
        src, dst = (b, a) if inverse else (a, b)
        if rest.startswith(src):
            return dst + rest[len(src):]
    return rest


def wan_vae_to_diffusers(sd: dict, num_res_blocks: int = 2) -> dict:
    """Original Wan VAE (2.1 flat or 2.2 residual) -> ``AutoencoderKLWan`` names."""
    residual = any(re.match(r"encoder\.downsamples\.\d+\.downsamples\.", k) for k in sd)
    per_stage = num_res_blocks + 2  # 2.1 decoder: (num_res_blocks + 1) resnets, then a resample
    out = {}
    for key, value in sd.items():
        new = key
        if key.startswith("conv1."):
            new = "quant_conv." + key[6:]
        elif key.startswith("conv2."):
            new = "post_quant_conv." + key[6:]
        elif m := re.match(r"(encoder|decoder)\.conv1\.(.+)$", key):
            new = f"{m[1]}.conv_in.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.head\.0\.gamma$", key):
            new = f"{m[1]}.norm_out.gamma"
        elif m := re.match(r"(encoder|decoder)\.head\.2\.(.+)$", key):
            new = f"{m[1]}.conv_out.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.middle\.1\.(.+)$", key):
            new = f"{m[1]}.mid_block.attentions.0.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.middle\.([02])\.(.+)$", key):
            new = f"{m[1]}.mid_block.resnets.{int(m[2]) // 2}.{_res(m[3])}"
        elif residual and (m := re.match(r"encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\.(.+)$", key)):
            j = int(m[2])
            new = (f"encoder.down_blocks.{m[1]}.resnets.{j}.{_res(m[3])}" if j < num_res_blocks
                   else f"encoder.down_blocks.{m[1]}.downsampler.{m[3]}")
        elif residual and (m := re.match(r"decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\.(.+)$", key)):
            j = int(m[2])
            new = (f"decoder.up_blocks.{m[1]}.resnets.{j}.{_res(m[3])}" if j < num_res_blocks + 1
                   else f"decoder.up_blocks.{m[1]}.upsampler.{m[3]}")
        elif m := re.match(r"encoder\.downsamples\.(\d+)\.(.+)$", key):
            new = f"encoder.down_blocks.{m[1]}.{_res(m[2])}"
        elif m := re.match(r"decoder\.upsamples\.(\d+)\.(.+)$", key):
            stage, r = divmod(int(m[1]), per_stage)
            new = (f"decoder.up_blocks.{stage}.resnets.{r}.{_res(m[2])}" if r < num_res_blocks + 1
                   else f"decoder.up_blocks.{stage}.upsamplers.0.{m[2]}")
        out[new] = value
    return out


def diffusers_to_wan_vae(sd: dict, num_res_blocks: int = 2) -> dict:
    residual = any(re.match(r"encoder\.down_blocks\.\d+\.resnets\.", k) for k in sd)
    per_stage = num_res_blocks + 2
    out = {}
    for key, value in sd.items():
        new = key
        if key.startswith("quant_conv."):
            new = "conv1." + key[len("quant_conv."):]
        elif key.startswith("post_quant_conv."):
            new = "conv2." + key[len("post_quant_conv."):]
        elif m := re.match(r"(encoder|decoder)\.conv_in\.(.+)$", key):
            new = f"{m[1]}.conv1.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.norm_out\.gamma$", key):
            new = f"{m[1]}.head.0.gamma"
        elif m := re.match(r"(encoder|decoder)\.conv_out\.(.+)$", key):
            new = f"{m[1]}.head.2.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$", key):
            new = f"{m[1]}.middle.1.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)$", key):
            new = f"{m[1]}.middle.{int(m[2]) * 2}.{_res(m[3], True)}"
        elif residual and (m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key)):
            new = f"encoder.downsamples.{m[1]}.downsamples.{m[2]}.{_res(m[3], True)}"
        elif residual and (m := re.match(r"encoder\.down_blocks\.(\d+)\.downsampler\.(.+)$", key)):
            new = f"encoder.downsamples.{m[1]}.downsamples.{num_res_blocks}.{m[2]}"
        elif residual and (m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key)):
            new = f"decoder.upsamples.{m[1]}.upsamples.{m[2]}.{_res(m[3], True)}"
        elif residual and (m := re.match(r"decoder\.up_blocks\.(\d+)\.upsampler\.(.+)$", key)):
            new = f"decoder.upsamples.{m[1]}.upsamples.{num_res_blocks + 1}.{m[2]}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.(.+)$", key):
            new = f"encoder.downsamples.{m[1]}.{_res(m[2], True)}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
            new = f"decoder.upsamples.{int(m[1]) * per_stage + int(m[2])}.{_res(m[3], True)}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)$", key):
            new = f"decoder.upsamples.{int(m[1]) * per_stage + num_res_blocks + 1}.{m[2]}"
        out[new] = value
    return out


def original_vae_num_res_blocks(shapes: dict) -> int:
    """Residual blocks per encoder stage of an original-layout Wan VAE (2 in every release)."""
    if any(re.match(r"encoder\.downsamples\.\d+\.downsamples\.", k) for k in shapes):
        return 1 + max(int(m[1]) for k in shapes
                       if (m := re.match(r"encoder\.downsamples\.0\.downsamples\.(\d+)\.residual", k)))
    n = 0
    while f"encoder.downsamples.{n}.residual.2.weight" in shapes:
        n += 1
    return n or 2


def wan_vae_config(shapes: dict) -> dict:
    """``AutoencoderKLWan`` config from shapes of either naming (2.1 or 2.2), with the Wan2.2 latent statistics."""
    if any(k.startswith(("encoder.downsamples.", "encoder.middle.")) for k in shapes):
        nrb = original_vae_num_res_blocks(shapes)
        meta = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
        return wan_vae_config({k: tuple(v.shape) for k, v in wan_vae_to_diffusers(meta, nrb).items()})
    config = video_vae_config(shapes)
    if config.get("is_residual") and config["z_dim"] == 48:
        from .real_configs import WAN22_VAE_LATENTS_MEAN, WAN22_VAE_LATENTS_STD
        config.update(latents_mean=WAN22_VAE_LATENTS_MEAN, latents_std=WAN22_VAE_LATENTS_STD)
    return config


# ---------------------------------------------------------------------------------------------- UMT5
_T5 = {"norm1.weight": "layer.0.layer_norm.weight", "attn.q.weight": "layer.0.SelfAttention.q.weight",
       "attn.k.weight": "layer.0.SelfAttention.k.weight", "attn.v.weight": "layer.0.SelfAttention.v.weight",
       "attn.o.weight": "layer.0.SelfAttention.o.weight",
       "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
       "norm2.weight": "layer.1.layer_norm.weight", "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
       "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight", "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight"}


def wan_t5_to_hf(sd: dict) -> dict:
    out = {}
    for key, value in sd.items():
        if key == "token_embedding.weight":
            out["shared.weight"] = value
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        elif (m := re.match(r"blocks\.(\d+)\.(.+)$", key)) and m[2] in _T5:
            out[f"encoder.block.{m[1]}.{_T5[m[2]]}"] = value
        else:
            out[key] = value
    return out


def hf_to_wan_t5(sd: dict) -> dict:
    inv = {v: k for k, v in _T5.items()}
    out = {}
    for key, value in sd.items():
        if key == "shared.weight":
            out["token_embedding.weight"] = value
        elif key == "encoder.embed_tokens.weight":
            continue  # the same tensor as shared.weight
        elif key == "encoder.final_layer_norm.weight":
            out["norm.weight"] = value
        elif (m := re.match(r"encoder\.block\.(\d+)\.(.+)$", key)) and m[2] in inv:
            out[f"blocks.{m[1]}.{inv[m[2]]}"] = value
        else:
            out[key] = value
    return out


def umt5_config(shapes: dict) -> dict:
    vocab, d_model = shapes["token_embedding.weight"]
    layers = 1 + max(int(m[1]) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k)))
    buckets, heads = shapes["blocks.0.pos_embedding.embedding.weight"]
    return {"model_type": "umt5", "vocab_size": vocab, "d_model": d_model, "d_kv": shapes["blocks.0.attn.q.weight"][0] // heads,
            "d_ff": shapes["blocks.0.ffn.fc1.weight"][0], "num_layers": layers, "num_heads": heads,
            "relative_attention_num_buckets": buckets, "relative_attention_max_distance": 128,
            "feed_forward_proj": "gated-gelu", "is_gated_act": True, "dense_act_fn": "gelu_new",
            "tie_word_embeddings": False}


# ---------------------------------------------------------------------------------------------- CLIP
_CLIP = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj",
         "mlp.0": "mlp.fc1", "mlp.2": "mlp.fc2"}


def wan_clip_to_hf(sd: dict) -> dict:
    out = {}
    for key, value in sd.items():
        if key.startswith("textual.") or key == "log_scale":
            continue  # the XLM-RoBERTa text tower: Wan uses only the image tower
        if key == "visual.patch_embedding.weight":
            out["vision_model.embeddings.patch_embedding.weight"] = value
        elif key == "visual.cls_embedding":
            out["vision_model.embeddings.class_embedding"] = value.reshape(-1)
        elif key == "visual.pos_embedding":
            out["vision_model.embeddings.position_embedding.weight"] = value.reshape(value.shape[-2], value.shape[-1])
        elif m := re.match(r"visual\.pre_norm\.(.+)$", key):
            out[f"vision_model.pre_layrnorm.{m[1]}"] = value
        elif m := re.match(r"visual\.post_norm\.(.+)$", key):
            out[f"vision_model.post_layernorm.{m[1]}"] = value
        elif key == "visual.head":
            out["visual_projection.weight"] = value.t()
        elif m := re.match(r"visual\.transformer\.(\d+)\.attn\.to_qkv\.(weight|bias)$", key):
            for n, t in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"vision_model.encoder.layers.{m[1]}.self_attn.{n}.{m[2]}"] = t
        elif (m := re.match(r"visual\.transformer\.(\d+)\.(.+)\.(weight|bias)$", key)) and m[2] in _CLIP:
            out[f"vision_model.encoder.layers.{m[1]}.{_CLIP[m[2]]}.{m[3]}"] = value
        else:
            out[key] = value
    return out


def hf_to_wan_clip(sd: dict) -> dict:
    inv = {v: k for k, v in _CLIP.items()}
    out = {}
    for key, value in sd.items():
        if key == "vision_model.embeddings.patch_embedding.weight":
            out["visual.patch_embedding.weight"] = value
        elif key == "vision_model.embeddings.class_embedding":
            out["visual.cls_embedding"] = value.reshape(1, 1, -1)
        elif key == "vision_model.embeddings.position_embedding.weight":
            out["visual.pos_embedding"] = value.unsqueeze(0)
        elif m := re.match(r"vision_model\.pre_layrnorm\.(.+)$", key):
            out[f"visual.pre_norm.{m[1]}"] = value
        elif m := re.match(r"vision_model\.post_layernorm\.(.+)$", key):
            out[f"visual.post_norm.{m[1]}"] = value
        elif key == "visual_projection.weight":
            out["visual.head"] = value.t().contiguous()
        elif m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)$", key):
            p = f"vision_model.encoder.layers.{m[1]}.self_attn."
            out[f"visual.transformer.{m[1]}.attn.to_qkv.{m[2]}"] = torch.cat(
                [sd[f"{p}{n}.{m[2]}"] for n in ("q_proj", "k_proj", "v_proj")])
        elif re.match(r"vision_model\.encoder\.layers\.\d+\.self_attn\.[kv]_proj\.", key):
            continue
        elif (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)) and m[2] in inv:
            out[f"visual.transformer.{m[1]}.{inv[m[2]]}.{m[3]}"] = value
        else:
            out[key] = value
    return out


def wan_clip_config(shapes: dict) -> dict:
    dim = shapes["visual.patch_embedding.weight"][0]
    patch = shapes["visual.patch_embedding.weight"][-1]
    positions = shapes["visual.pos_embedding"][-2]
    image = int(round((positions - 1) ** 0.5)) * patch
    layers = 1 + max(int(m[1]) for k in shapes if (m := re.match(r"visual\.transformer\.(\d+)\.", k)))
    return {"model_type": "clip_vision_model", "hidden_size": dim,
            "intermediate_size": shapes["visual.transformer.0.mlp.0.weight"][0], "num_hidden_layers": layers,
            "num_attention_heads": max(1, dim // 80) if dim % 80 == 0 else max(1, dim // 16),
            "patch_size": patch, "image_size": image, "projection_dim": shapes["visual.head"][1],
            "hidden_act": "gelu", "layer_norm_eps": 1e-5}


def lora_to_wan_names(modules: dict, shapes: dict | None = None) -> dict:
    """``{module: (A, B)}`` LoRAs on diffusers' Wan DiT -> the original Wan-AI module names (pure renames), which
    are also DiffSynth-Studio's own Wan DiT names."""
    from ...models.lora_names import rename_modules
    return rename_modules(modules, diffusers_to_wan_dit)


def lora_names_without_model(modules: dict) -> dict:
    """LoRA modules in original (= DiffSynth) Wan names back to diffusers' names: a pure rename."""
    from ...models.lora_names import rename_modules
    own = {n: ab for n, ab in modules.items() if ".attn1." in n or ".attn2." in n or ".ffn.net." in n}
    return {**rename_modules({n: ab for n, ab in modules.items() if n not in own}, wan_dit_to_diffusers), **own}
