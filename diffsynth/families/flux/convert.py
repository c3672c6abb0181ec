"""FLUX.1 checkpoints in Black Forest Labs' original names <-> diffusers names (pure state-dict functions).

``flux1-dev.safetensors`` (BFL) fuses q/k/v (``img_attn.qkv``) and, in single blocks, q/k/v/mlp-in
(``linear1``); diffusers keeps them separate. The final ``adaLN_modulation`` stores (shift, scale) where
diffusers' ``norm_out`` expects (scale, shift). ``ae.safetensors`` uses the LDM autoencoder names
(``encoder.down.0.block.0``, 1×1-conv attention) where diffusers' ``AutoencoderKL`` has
``encoder.down_blocks.0.resnets.0`` and linear attention; the decoder's ``up`` list is in reverse order.
Functions accept real tensors or meta tensors (shape-only checks).
"""
from __future__ import annotations

import re

import torch

from ...models.components import rope_axes

PREFIXES = ("model.diffusion_model.",)


def _strip(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        for p in PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


_DOUBLE = {  # BFL name inside double_blocks.N -> diffusers name inside transformer_blocks.N
    "img_mod.lin": "norm1.linear", "txt_mod.lin": "norm1_context.linear",
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight", "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
    "img_attn.proj": "attn.to_out.0", "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2", "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
_SINGLE = {"modulation.lin": "norm.linear", "norm.query_norm.scale": "attn.norm_q.weight",
           "norm.key_norm.scale": "attn.norm_k.weight", "linear2": "proj_out"}
_TOP = {"time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
        "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
        "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
        "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
        "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
        "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
        "txt_in": "context_embedder", "img_in": "x_embedder", "final_layer.linear": "proj_out",
        "final_layer.adaLN_modulation.1": "norm_out.linear"}


def _rename(name: str, table: dict) -> str | None:
    for src, dst in table.items():
        if name == src or name.startswith(src + "."):
            return dst + name[len(src):]
    return None


def bfl_dit_to_diffusers(sd: dict) -> dict:
    """``flux1-dev.safetensors`` names -> ``FluxTransformer2DModel`` names."""
    sd = _strip(sd)
    inner = sd["img_in.weight"].shape[0] if "img_in.weight" in sd else None
    out = {}
    for key, value in sd.items():
        m = re.match(r"double_blocks\.(\d+)\.(.+)$", key)
        if m:
            i, rest = m.groups()
            p = f"transformer_blocks.{i}."
            qkv = re.match(r"(img|txt)_attn\.qkv\.(weight|bias)$", rest)
            if qkv:
                names = ("to_q", "to_k", "to_v") if qkv.group(1) == "img" else ("add_q_proj", "add_k_proj", "add_v_proj")
                for n, t in zip(names, value.chunk(3, dim=0)):
                    out[f"{p}attn.{n}.{qkv.group(2)}"] = t
                continue
            new = _rename(rest, _DOUBLE)
            out[p + (new if new is not None else rest)] = value
            continue
        m = re.match(r"single_blocks\.(\d+)\.(.+)$", key)
        if m:
            i, rest = m.groups()
            p = f"single_transformer_blocks.{i}."
            lin = re.match(r"linear1\.(weight|bias)$", rest)
            if lin:
                hidden = inner if inner is not None else sd[f"single_blocks.{i}.linear2.weight"].shape[0]
                mlp = value.shape[0] - 3 * hidden
                q, k, v, x = torch.split(value, [hidden, hidden, hidden, mlp], dim=0)
                for n, t in (("attn.to_q", q), ("attn.to_k", k), ("attn.to_v", v), ("proj_mlp", x)):
                    out[f"{p}{n}.{lin.group(1)}"] = t
                continue
            new = _rename(rest, _SINGLE)
            out[p + (new if new is not None else rest)] = value
            continue
        new = _rename(key, _TOP)
        if new is not None and key.startswith("final_layer.adaLN_modulation.1"):
            value = _swap_halves(value)
        out[new if new is not None else key] = value
    return out


def diffusers_to_bfl_dit(sd: dict) -> dict:
    """Inverse of :func:`bfl_dit_to_diffusers` (writes the BFL single-file layout)."""
    inv_double = {v: k for k, v in _DOUBLE.items()}
    inv_single = {v: k for k, v in _SINGLE.items()}
    inv_top = {v: k for k, v in _TOP.items()}
    out, done = {}, set()
    for key, value in sd.items():
        if key in done:
            continue
        m = re.match(r"transformer_blocks\.(\d+)\.(.+)$", key)
        if m:
            i, rest = m.groups()
            p, q = f"transformer_blocks.{i}.", f"double_blocks.{i}."
            qkv = re.match(r"attn\.(to_q|add_q_proj)\.(weight|bias)$", rest)
            if qkv:
                names = ("to_q", "to_k", "to_v") if qkv.group(1) == "to_q" else ("add_q_proj", "add_k_proj", "add_v_proj")
                parts = [f"{p}attn.{n}.{qkv.group(2)}" for n in names]
                out[f"{q}{'img' if qkv.group(1) == 'to_q' else 'txt'}_attn.qkv.{qkv.group(2)}"] = torch.cat([sd[x] for x in parts])
                done.update(parts)
                continue
            if re.match(r"attn\.(to_k|to_v|add_k_proj|add_v_proj)\.", rest):
                continue  # fused with its q above
            new = _rename(rest, inv_double)
            out[q + (new if new is not None else rest)] = value
            continue
        m = re.match(r"single_transformer_blocks\.(\d+)\.(.+)$", key)
        if m:
            i, rest = m.groups()
            p, q = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
            lin = re.match(r"attn\.to_q\.(weight|bias)$", rest)
            if lin:
                s = lin.group(1)
                parts = [f"{p}attn.to_q.{s}", f"{p}attn.to_k.{s}", f"{p}attn.to_v.{s}", f"{p}proj_mlp.{s}"]
                out[f"{q}linear1.{s}"] = torch.cat([sd[x] for x in parts])
                done.update(parts)
                continue
            if re.match(r"(attn\.to_k|attn\.to_v|proj_mlp)\.", rest):
                continue
            new = _rename(rest, inv_single)
            out[q + (new if new is not None else rest)] = value
            continue
        new = _rename(key, inv_top)
        if key.startswith("norm_out.linear"):
            value = _swap_halves(value)
        out[new if new is not None else key] = value
    return out


# DiffSynth-Studio's own FLUX DiT (``diffsynth/models/flux_dit.py``, ``FluxDiT``) renames BFL's modules but keeps
# their fusion (q/k/v; q/k/v/mlp-in) and row order (its ``final_norm_out`` is BFL's (shift, scale)). Table read from
# ``diffsynth/utils/state_dict_converters/flux_dit.py::FluxDiTStateDictConverter`` (DiffSynth-Studio 2.1.12).
_DIFFSYNTH_DOUBLE = {  # BFL name inside double_blocks.N -> DiffSynth name inside blocks.N
    "img_mod.lin": "norm1_a.linear", "txt_mod.lin": "norm1_b.linear",
    "img_attn.qkv": "attn.a_to_qkv", "txt_attn.qkv": "attn.b_to_qkv",
    "img_attn.proj": "attn.a_to_out", "txt_attn.proj": "attn.b_to_out",
    "img_attn.norm.query_norm.scale": "attn.norm_q_a.weight", "img_attn.norm.key_norm.scale": "attn.norm_k_a.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_q_b.weight", "txt_attn.norm.key_norm.scale": "attn.norm_k_b.weight",
    "img_mlp.0": "ff_a.0", "img_mlp.2": "ff_a.2", "txt_mlp.0": "ff_b.0", "txt_mlp.2": "ff_b.2",
}
_DIFFSYNTH_SINGLE = {"modulation.lin": "norm.linear", "linear1": "to_qkv_mlp", "linear2": "proj_out",
                     "norm.query_norm.scale": "norm_q_a.weight", "norm.key_norm.scale": "norm_k_a.weight"}
_DIFFSYNTH_TOP = {"time_in.in_layer": "time_embedder.timestep_embedder.0",
                  "time_in.out_layer": "time_embedder.timestep_embedder.2",
                  "guidance_in.in_layer": "guidance_embedder.timestep_embedder.0",
                  "guidance_in.out_layer": "guidance_embedder.timestep_embedder.2",
                  "vector_in.in_layer": "pooled_text_embedder.0", "vector_in.out_layer": "pooled_text_embedder.2",
                  "txt_in": "context_embedder", "img_in": "x_embedder", "final_layer.linear": "final_proj_out",
                  "final_layer.adaLN_modulation.1": "final_norm_out.linear"}


def _rename_blocks(sd: dict, blocks: tuple[tuple[str, str, dict], ...], top: dict) -> dict:
    out = {}
    for key, value in sd.items():
        for src, dst, table in blocks:
            m = re.match(rf"{src}\.(\d+)\.(.+)$", key)
            if m:
                new = _rename(m[2], table)
                out[f"{dst}.{m[1]}.{new if new is not None else m[2]}"] = value
                break
        else:
            new = _rename(key, top)
            out[new if new is not None else key] = value
    return out


def bfl_dit_to_diffsynth(sd: dict) -> dict:
    """BFL names -> DiffSynth-Studio ``FluxDiT`` names (a pure rename: both layouts fuse the same layers)."""
    return _rename_blocks(_strip(sd), (("double_blocks", "blocks", _DIFFSYNTH_DOUBLE),
                                       ("single_blocks", "single_blocks", _DIFFSYNTH_SINGLE)), _DIFFSYNTH_TOP)


def diffsynth_dit_to_bfl(sd: dict) -> dict:
    inv = lambda table: {v: k for k, v in table.items()}  # noqa: E731
    return _rename_blocks(sd, (("blocks", "double_blocks", inv(_DIFFSYNTH_DOUBLE)),
                               ("single_blocks", "single_blocks", inv(_DIFFSYNTH_SINGLE))), inv(_DIFFSYNTH_TOP))


def diffusers_to_diffsynth_dit(sd: dict) -> dict:
    """``FluxTransformer2DModel`` names -> DiffSynth-Studio ``FluxDiT`` names (what its trainer saves)."""
    return bfl_dit_to_diffsynth(diffusers_to_bfl_dit(sd))


def diffsynth_dit_to_diffusers(sd: dict) -> dict:
    return bfl_dit_to_diffusers(diffsynth_dit_to_bfl(sd))


def flux_dit_config(shapes: dict) -> dict:
    """``FluxTransformer2DModel`` config from a checkpoint's shapes (BFL or diffusers names)."""
    if "img_in.weight" in shapes or any(k.startswith("double_blocks.") for k in shapes):
        s = {k: v for k, v in shapes.items()}
        inner, in_ch = s["img_in.weight"]
        head = s["double_blocks.0.img_attn.norm.query_norm.scale"][0]
        layers = 1 + max(int(m.group(1)) for k in s if (m := re.match(r"double_blocks\.(\d+)\.", k)))
        single = 1 + max([int(m.group(1)) for k in s if (m := re.match(r"single_blocks\.(\d+)\.", k))] or [-1])
        joint, pooled = s["txt_in.weight"][1], s["vector_in.in_layer.weight"][1]
        guidance = any(k.startswith("guidance_in.") for k in s)
        out_ch = s["final_layer.linear.weight"][0]
    else:
        inner, in_ch = shapes["x_embedder.weight"]
        head = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
        layers = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"transformer_blocks\.(\d+)\.", k)))
        single = 1 + max([int(m.group(1)) for k in shapes
                          if (m := re.match(r"single_transformer_blocks\.(\d+)\.", k))] or [-1])
        joint, pooled = shapes["context_embedder.weight"][1], shapes["time_text_embed.text_embedder.linear_1.weight"][1]
        guidance = any(k.startswith("time_text_embed.guidance_embedder.") for k in shapes)
        out_ch = shapes["proj_out.weight"][0]
    return {"patch_size": 1, "in_channels": in_ch, "out_channels": out_ch, "num_layers": layers,
            "num_single_layers": single, "attention_head_dim": head, "num_attention_heads": inner // head,
            "joint_attention_dim": joint, "pooled_projection_dim": pooled, "guidance_embeds": guidance,
            "axes_dims_rope": rope_axes(head)}


# ------------------------------------------------------------------------------------------------ VAE

def _vae_resnet(rest: str) -> str:
    return rest.replace("nin_shortcut", "conv_shortcut")


def bfl_vae_to_diffusers(sd: dict) -> dict:
    """``ae.safetensors`` (LDM names) -> ``AutoencoderKL`` names."""
    ups = {int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up\.(\d+)\.", k))}
    n_up = max(ups) + 1 if ups else 0
    out = {}
    for key, value in sd.items():
        new = key
        if m := re.match(r"encoder\.down\.(\d+)\.block\.(\d+)\.(.+)$", key):
            new = f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{_vae_resnet(m[3])}"
        elif m := re.match(r"encoder\.down\.(\d+)\.downsample\.conv\.(.+)$", key):
            new = f"encoder.down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"
        elif m := re.match(r"decoder\.up\.(\d+)\.block\.(\d+)\.(.+)$", key):
            new = f"decoder.up_blocks.{n_up - 1 - int(m[1])}.resnets.{m[2]}.{_vae_resnet(m[3])}"
        elif m := re.match(r"decoder\.up\.(\d+)\.upsample\.conv\.(.+)$", key):
            new = f"decoder.up_blocks.{n_up - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid\.block_(\d)\.(.+)$", key):
            new = f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{_vae_resnet(m[3])}"
        elif m := re.match(r"(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(.+)$", key):
            name = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}[m[2]]
            new = f"{m[1]}.mid_block.attentions.0.{name}.{m[3]}"
            if m[2] != "norm" and value.dim() == 4:
                value = value.reshape(value.shape[0], value.shape[1])  # 1x1 conv -> linear
        elif m := re.match(r"(encoder|decoder)\.norm_out\.(.+)$", key):
            new = f"{m[1]}.conv_norm_out.{m[2]}"
        out[new] = value
    return out


def diffusers_to_bfl_vae(sd: dict) -> dict:
    """Inverse of :func:`bfl_vae_to_diffusers` (writes ``ae.safetensors`` names)."""
    ups = {int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))}
    n_up = max(ups) + 1 if ups else 0
    out = {}
    for key, value in sd.items():
        new = key
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)$", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)$", key):
            name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[m[2]]
            new = f"{m[1]}.mid.attn_1.{name}.{m[3]}"
            if name != "norm" and value.dim() == 2:
                value = value.reshape(*value.shape, 1, 1)
        elif m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.+)$", key):
            new = f"{m[1]}.norm_out.{m[2]}"
        out[new] = value
    return out


def flux_vae_config(shapes: dict, bfl: bool) -> dict:
    """``AutoencoderKL`` config of a FLUX-style VAE from shapes."""
    if bfl:
        downs = sorted({int(m[1]) for k in shapes if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
        channels = [shapes[f"encoder.down.{i}.block.0.conv1.weight"][0] for i in downs]
        layers = 1 + max(int(m[1]) for k in shapes if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
        latent = shapes["decoder.conv_in.weight"][1]
        quant = "quant_conv.weight" in shapes
    else:
        downs = sorted({int(m[1]) for k in shapes if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
        channels = [shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0] for i in downs]
        layers = 1 + max(int(m[1]) for k in shapes if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k)))
        latent = shapes["decoder.conv_in.weight"][1]
        quant = "quant_conv.weight" in shapes
    groups = 32  # not visible in shapes; every FLUX/SD-style VAE uses 32 (tiny presets too)
    return {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * len(channels),
            "up_block_types": ["UpDecoderBlock2D"] * len(channels), "block_out_channels": channels,
            "layers_per_block": layers, "latent_channels": latent, "norm_num_groups": groups,
            "scaling_factor": 0.3611, "shift_factor": 0.1159, "use_quant_conv": quant, "use_post_quant_conv": quant}


# ------------------------------------------------------------------------------------- LoRA on BFL names
LORA_FUSED_GROUPS = [  # diffusers modules fused into one BFL module, in fusion order
    (re.compile(r"^transformer_blocks\.(\d+)\.attn\.(to_q|to_k|to_v)$"), "transformer_blocks.{}.attn.",
     ("to_q", "to_k", "to_v")),
    (re.compile(r"^transformer_blocks\.(\d+)\.attn\.(add_q_proj|add_k_proj|add_v_proj)$"),
     "transformer_blocks.{}.attn.", ("add_q_proj", "add_k_proj", "add_v_proj")),
    (re.compile(r"^single_transformer_blocks\.(\d+)\.(attn\.to_q|attn\.to_k|attn\.to_v|proj_mlp)$"),
     "single_transformer_blocks.{}.", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
]


def _fused_part_shape(member: str, hidden: int) -> tuple | None:
    """Without the base model: q/k/v map hidden -> hidden and the single blocks' MLP-in hidden -> 4·hidden in every
    FLUX.1 release (mlp_ratio 4)."""
    if member.endswith("proj_mlp"):
        return (4 * hidden, hidden)
    if member.endswith(("to_q", "to_k", "to_v", "_proj")):
        return (hidden, hidden)
    return None


def _fused_lora_renamer(convert):
    """``{module: (A, B)}`` LoRAs on diffusers' FLUX DiT -> the names of a layout that fuses q/k/v(/mlp) (BFL's or
    DiffSynth's, ``convert``); the LoRAs of fused layers become one LoRA on the fused layer (A stacked along the
    rank, B block-diagonal: ``B_f @ A_f`` is the stacked updates)."""
    from ...models.lora_names import fuse_groups, rename_modules

    def rename_a(state: dict) -> dict:
        # A's rows are the rank, not weight rows: concatenate in the converter's fusion order, never swap halves
        out = convert(state)
        if "norm_out.linear.weight" in state:
            (fused_name,) = convert({"norm_out.linear.weight": torch.zeros(2, 1)})
            out[fused_name] = state["norm_out.linear.weight"]
        return out

    def rename(modules: dict, shapes: dict | None = None) -> dict:
        return rename_modules(fuse_groups(modules, LORA_FUSED_GROUPS, _fused_part_shape, shapes), rename_a, convert)
    return rename


lora_to_bfl = _fused_lora_renamer(diffusers_to_bfl_dit)
lora_to_diffsynth = _fused_lora_renamer(diffusers_to_diffsynth_dit)


def lora_names_without_model(modules: dict) -> dict:
    """LoRA names back to diffusers' where no base model is at hand: diffusers names pass; fused layers (BFL's or
    DiffSynth's names) can only be split against the model's rows."""
    from ...models.lora_names import LoraFormatError
    diffusers_top = ("transformer_blocks.", "single_transformer_blocks.", "x_embedder", "context_embedder",
                     "proj_out", "norm_out.", "time_text_embed.")
    foreign = [n for n in modules if not n.startswith(diffusers_top)]
    if foreign:
        raise LoraFormatError(f"LoRA module {foreign[0]!r} is a fused FLUX layer (DiffSynth's or BFL's names): "
                              "splitting it needs the base model. Export with the pipeline's export stage "
                              "(dvc repro export), which loads the DiT, or from a checkpoint in diffusers names")
    return dict(modules)
