"""Z-Image's state-dict names: the original single-file layout (Tongyi-MAI's NextDiT names, the layout ComfyUI loads
and DiffSynth's ZImageDiTStateDictConverter accepts with its ``model.diffusion_model.`` prefix) <-> diffusers'
ZImageTransformer2DModel, and LoRA names on the fused ``attention.qkv``.

DiffSynth-Studio's own ZImageDiT has exactly diffusers' parameter names (checked key by key in
tests/test_family_z_image.py), so the DiffSynth layout needs no converter.

The original names, as diffusers' ``convert_z_image_transformer_checkpoint_to_diffusers`` reads them:
``x_embedder`` / ``final_layer`` (diffusers: ``all_x_embedder.2-1`` / ``all_final_layer.2-1``), ``attention.qkv``
(q, k and v stacked on the rows), ``attention.out``, ``attention.q_norm`` / ``k_norm``.
"""
from __future__ import annotations

import re

import torch

PREFIX = "model.diffusion_model."
_RENAMES = (  # original -> diffusers, applied in order on the full key
    ("final_layer.", "all_final_layer.2-1."),
    ("x_embedder.", "all_x_embedder.2-1."),
    (".attention.out.", ".attention.to_out.0."),
    (".attention.q_norm.", ".attention.norm_q."),
    (".attention.k_norm.", ".attention.norm_k."),
)
_QKV = re.compile(r"^(.*\.attention\.)qkv\.(weight|bias)$")
_PARTS = re.compile(r"^(.*\.attention\.)to_([qkv])\.(weight|bias)$")


def _rename(key: str, table) -> str:
    for old, new in table:
        if key.startswith(old) or (old.startswith(".") and old in key):
            key = key.replace(old, new, 1) if old.startswith(".") else new + key[len(old):]
    return key


def original_to_diffusers(sd: dict) -> dict:
    """Original (ComfyUI / single-file) Z-Image DiT keys -> diffusers' (q/k/v split off the fused rows)."""
    out = {}
    for key, value in sd.items():
        key = key[len(PREFIX):] if key.startswith(PREFIX) else key
        if key == "norm_final.weight":  # an unused norm some single files carry (diffusers drops it too)
            continue
        m = _QKV.match(key)
        if m:
            prefix, end = _rename(m.group(1), _RENAMES), m.group(2)
            for part, rows in zip("qkv", torch.chunk(value, 3, dim=0)):
                out[f"{prefix}to_{part}.{end}"] = rows
            continue
        out[_rename(key, _RENAMES)] = value
    return out


_INVERSE = tuple((new, old) for old, new in _RENAMES)


def diffusers_to_original(sd: dict) -> dict:
    """diffusers' Z-Image DiT keys -> the original single-file names (q/k/v stacked into ``attention.qkv``)."""
    out, fused = {}, {}
    for key, value in sd.items():
        m = _PARTS.match(key)
        if m:
            fused.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        out[_rename(key, _INVERSE)] = value
    for (prefix, end), parts in fused.items():
        if set(parts) != set("qkv"):
            missing = sorted(set("qkv") - set(parts))
            raise KeyError(f"{prefix}to_{missing[0]}.{end}: the fused attention.qkv needs q, k and v")
        out[f"{_rename(prefix, _INVERSE)}qkv.{end}"] = torch.cat([parts[p] for p in "qkv"], dim=0)
    return out


# ------------------------------------------------------------------------------------- LoRA on original names
LORA_FUSED_GROUPS = [  # diffusers modules fused into one original module, in fusion order
    (re.compile(rf"^{blocks}\.(\d+)\.attention\.(to_q|to_k|to_v)$"), blocks + ".{}.attention.", ("to_q", "to_k", "to_v"))
    for blocks in ("layers", "noise_refiner", "context_refiner", "siglip_refiner")
]


def _fused_part_shape(member: str, hidden: int) -> tuple | None:
    """Without the base model: Z-Image's q, k and v each map hidden -> hidden (n_kv_heads == n_heads)."""
    return (hidden, hidden) if member.endswith(("to_q", "to_k", "to_v")) else None


def lora_to_original(modules: dict, shapes: dict | None = None) -> dict:
    """``{module: (A, B)}`` LoRAs on diffusers' DiT -> original names; q/k/v LoRAs of one attention become one
    LoRA on ``attention.qkv`` (A stacked along the rank, B block-diagonal: exactly the stacked updates)."""
    from ...models.lora_names import fuse_groups, rename_modules
    fused = fuse_groups(modules, LORA_FUSED_GROUPS, _fused_part_shape, shapes)
    return rename_modules(fused, diffusers_to_original)


def lora_names_without_model(modules: dict) -> dict:
    """Original-name LoRAs back to diffusers' where no base model is at hand: renames pass; a fused ``qkv`` LoRA
    can only be split against the model's rows."""
    from ...models.lora_names import LoraFormatError
    fused = [n for n in modules if n.endswith(".attention.qkv")]
    if fused:
        raise LoraFormatError(f"LoRA module {fused[0]!r} is Z-Image's fused q/k/v layer (original/ComfyUI names): "
                              "splitting it needs the base model; export with the pipeline's export stage")
    renamed = original_to_diffusers({f"{n}.weight": a for n, (a, _) in modules.items()})
    names = [k[: -len(".weight")] for k in renamed]
    return {new: ab for new, ab in zip(names, modules.values())}


# ------------------------------------------------------------------------------------- architectures
def dit_config(shapes: dict) -> dict:
    """diffusers ZImageTransformer2DModel config from a diffusers-named state dict's shapes."""
    dim, patch_in = shapes["all_x_embedder.2-1.weight"]
    head_dim = shapes["layers.0.attention.norm_q.weight"][0]
    count = lambda blocks: 1 + max(int(m.group(1)) for k in shapes if (m := re.match(rf"{blocks}\.(\d+)\.", k)))
    in_channels = patch_in // 4  # 2x2 patches, one frame
    config = {"all_patch_size": [2], "all_f_patch_size": [1], "in_channels": in_channels, "dim": dim,
              "n_layers": count("layers"), "n_refiner_layers": count("noise_refiner"), "n_heads": dim // head_dim,
              "n_kv_heads": shapes["layers.0.attention.to_k.weight"][0] // head_dim, "norm_eps": 1e-5,
              "qk_norm": True, "cap_feat_dim": shapes["cap_embedder.1.weight"][1], "rope_theta": 256.0,
              "t_scale": 1000.0, "axes_dims": _axes(head_dim), "axes_lens": [1536, 512, 512]}
    if "siglip_embedder.1.weight" in shapes:  # Z-Image-Omni-Base
        config["siglip_feat_dim"] = shapes["siglip_embedder.1.weight"][1]
    return config


def _axes(head_dim: int) -> list[int]:
    """Z-Image's RoPE split of a head: (32, 48, 48) at head_dim 128, scaled (even sizes) for other widths."""
    a = max(2, (head_dim // 4) // 2 * 2)
    b = ((head_dim - a) // 2) // 2 * 2
    return [a, b, head_dim - a - b]


def vae_config(shapes: dict) -> dict:
    """The FLUX-style AutoencoderKL Z-Image ships (diffusers names), inferred when no config.json is beside it."""
    downs = sorted({int(m[1]) for k in shapes if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
    channels = [shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0] for i in downs]
    layers = 1 + max(int(m[1]) for k in shapes if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k)))
    quant = "quant_conv.weight" in shapes
    return {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * len(channels),
            "up_block_types": ["UpDecoderBlock2D"] * len(channels), "block_out_channels": channels,
            "layers_per_block": layers, "latent_channels": shapes["decoder.conv_in.weight"][1],
            "norm_num_groups": 32, "scaling_factor": 0.3611, "shift_factor": 0.1159,
            "use_quant_conv": quant, "use_post_quant_conv": quant}


def text_encoder_config(shapes: dict) -> dict:
    """A Qwen3 text encoder's config from its shapes (checkpoint names ``model.*``, or Qwen3Model's own)."""
    shapes = {k if k.startswith(("model.", "lm_head.")) else f"model.{k}": v for k, v in shapes.items()}
    vocab, hidden = shapes["model.embed_tokens.weight"]
    head_dim = shapes["model.layers.0.self_attn.q_norm.weight"][0]
    layers = 1 + max(int(m[1]) for k in shapes if (m := re.match(r"model\.layers\.(\d+)\.", k)))
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": vocab, "hidden_size": hidden,
            "intermediate_size": shapes["model.layers.0.mlp.gate_proj.weight"][0], "num_hidden_layers": layers,
            "num_attention_heads": shapes["model.layers.0.self_attn.q_proj.weight"][0] // head_dim,
            "num_key_value_heads": shapes["model.layers.0.self_attn.k_proj.weight"][0] // head_dim,
            "head_dim": head_dim, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000,
            "tie_word_embeddings": "lm_head.weight" not in shapes, "hidden_act": "silu", "attention_bias": False}


def text_encoder_to_model(sd: dict) -> dict:
    """Qwen3ForCausalLM checkpoint keys (``model.*``, ``lm_head``) -> Qwen3Model's (DiffSynth drops lm_head too)."""
    return {k[len("model."):] if k.startswith("model.") else k: v for k, v in sd.items() if k != "lm_head.weight"}


def model_to_text_encoder(sd: dict) -> dict:
    return {f"model.{k}": v for k, v in sd.items()}
