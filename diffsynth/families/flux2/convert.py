"""FLUX.2's state-dict names: the original Black Forest Labs layout (the released ``flux2-dev.safetensors`` /
klein single files, which ComfyUI loads as they are) <-> diffusers' Flux2Transformer2DModel, and LoRA names on it.

Read from diffusers' ``scripts/convert_flux2_to_diffusers.py`` (``convert_flux2_transformer_to_diffusers``, commit
58eb52c0803e) and ComfyUI's FLUX.2 model code (``comfy/ldm/flux`` with ``global_modulation``, ``mlp_silu_act``,
bias-free layers: ComfyUI's own repository is too large to fetch here and the indexed versions of its
``model.py`` read predate FLUX.2, so read in a port of its v0.9.0 ``comfy/ldm/flux`` in another repository). ComfyUI's ``comfy/lora.py`` (``model_lora_keys_unet``) maps every weight
``diffusion_model.<module>.weight`` of the loaded model to the LoRA names ``diffusion_model.<module>`` and
``lora_unet_<module with _>``, so a LoRA for ComfyUI names the original modules:

=====================================================  =====================================================
original (BFL / ComfyUI)                               diffusers
=====================================================  =====================================================
``img_in`` / ``txt_in``                                ``x_embedder`` / ``context_embedder``
``time_in.in_layer`` / ``.out_layer``                  ``time_guidance_embed.timestep_embedder.linear_1/2``
``guidance_in.in_layer`` / ``.out_layer`` (dev)        ``time_guidance_embed.guidance_embedder.linear_1/2``
``double_stream_modulation_img.lin`` (and ``_txt``)    ``double_stream_modulation_img.linear``
``single_stream_modulation.lin``                       ``single_stream_modulation.linear``
``double_blocks.N.img_attn.qkv`` (q, k, v rows)        ``transformer_blocks.N.attn.to_q`` / ``to_k`` / ``to_v``
``double_blocks.N.txt_attn.qkv``                       ``transformer_blocks.N.attn.add_q_proj`` / ``k`` / ``v``
``double_blocks.N.img_attn.proj`` / ``txt_attn.proj``  ``transformer_blocks.N.attn.to_out.0`` / ``to_add_out``
``double_blocks.N.img_attn.norm.query_norm.scale``     ``transformer_blocks.N.attn.norm_q.weight`` (``key``: k;
                                                       ``txt_attn``: ``norm_added_q`` / ``norm_added_k``)
``double_blocks.N.img_mlp.0`` / ``.2``                 ``transformer_blocks.N.ff.linear_in`` / ``linear_out``
``double_blocks.N.txt_mlp.0`` / ``.2``                 ``transformer_blocks.N.ff_context.linear_in`` / ``out``
``single_blocks.N.linear1`` (q, k, v, MLP-in rows)     ``single_transformer_blocks.N.attn.to_qkv_mlp_proj``
``single_blocks.N.linear2``                            ``single_transformer_blocks.N.attn.to_out``
``single_blocks.N.norm.query_norm.scale`` / ``key``    ``single_transformer_blocks.N.attn.norm_q`` / ``norm_k``
``final_layer.adaLN_modulation.1`` (shift, scale)      ``norm_out.linear`` (scale, shift: halves swapped)
``final_layer.linear``                                 ``proj_out``
=====================================================  =====================================================

diffusers keeps the single blocks' ``linear1`` fused (``to_qkv_mlp_proj``), so only the double blocks' q/k/v are
separate modules here: their LoRAs become one LoRA on ``qkv`` (A stacked along the rank, B block-diagonal).
DiffSynth-Studio's own Flux2DiT has diffusers' names, so its layout needs no converter.
"""
from __future__ import annotations

import re

import torch

PREFIXES = ("model.diffusion_model.", "diffusion_model.")

# module renames (original -> diffusers), whole module paths; blocks' insides below
_TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_guidance_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_guidance_embed.timestep_embedder.linear_2",
    "guidance_in.in_layer": "time_guidance_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_guidance_embed.guidance_embedder.linear_2",
    "double_stream_modulation_img.lin": "double_stream_modulation_img.linear",
    "double_stream_modulation_txt.lin": "double_stream_modulation_txt.linear",
    "single_stream_modulation.lin": "single_stream_modulation.linear",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
    "final_layer.linear": "proj_out",
}
_DOUBLE = {  # inside double_blocks.N -> inside transformer_blocks.N
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_attn.norm.query_norm": "attn.norm_q",
    "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q",
    "txt_attn.norm.key_norm": "attn.norm_added_k",
    "img_mlp.0": "ff.linear_in",
    "img_mlp.2": "ff.linear_out",
    "txt_mlp.0": "ff_context.linear_in",
    "txt_mlp.2": "ff_context.linear_out",
}
_SINGLE = {  # inside single_blocks.N -> inside single_transformer_blocks.N
    "linear1": "attn.to_qkv_mlp_proj",
    "linear2": "attn.to_out",
    "norm.query_norm": "attn.norm_q",
    "norm.key_norm": "attn.norm_k",
}
_FUSED = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),  # inside double_blocks.N, in row order
          "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_SWAPPED = "final_layer.adaLN_modulation.1"  # (shift, scale) rows in the original, (scale, shift) in diffusers
_NORMS = ("query_norm", "key_norm")  # the original RMSNorms' parameter is `scale`, diffusers' `weight`

_TOP_INV = {v: k for k, v in _TOP.items()}
_DOUBLE_INV = {v: k for k, v in _DOUBLE.items()}
_SINGLE_INV = {v: k for k, v in _SINGLE.items()}
_PART_OF = {part: (fused, i) for fused, parts in _FUSED.items() for i, part in enumerate(parts)}
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks|double_blocks|single_blocks)\.(\d+)\.(.+)$")


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _split_param(key: str) -> tuple[str, str]:
    module, _, param = key.rpartition(".")
    if not module:
        raise KeyError(f"{key!r} is not a <module>.<parameter> key of a FLUX.2 DiT")
    return module, param


def _original_module(module: str) -> tuple[str, int | None]:
    """diffusers module -> (original module, index of the part where the original fuses it, else None)."""
    if module in _TOP_INV:
        return _TOP_INV[module], None
    m = _BLOCK.match(module)
    if m and m.group(1) == "transformer_blocks":
        inner = m.group(3)
        if inner in _PART_OF:
            fused, index = _PART_OF[inner]
            return f"double_blocks.{m.group(2)}.{fused}", index
        if inner in _DOUBLE_INV:
            return f"double_blocks.{m.group(2)}.{_DOUBLE_INV[inner]}", None
    if m and m.group(1) == "single_transformer_blocks" and m.group(3) in _SINGLE_INV:
        return f"single_blocks.{m.group(2)}.{_SINGLE_INV[m.group(3)]}", None
    raise KeyError(f"{module!r} is not a module of diffusers' Flux2Transformer2DModel with an original FLUX.2 name")


def diffusers_to_original(sd: dict) -> dict:
    """diffusers' Flux2Transformer2DModel keys -> the original BFL / ComfyUI names: q/k/v of the double blocks
    stacked into ``qkv``, the final modulation's halves swapped back to (shift, scale), norms' ``.scale``."""
    out, fused = {}, {}
    for key, value in sd.items():
        module, param = _split_param(key)
        original, index = _original_module(module)
        if original.endswith(_NORMS) and param == "weight":
            param = "scale"
        if index is not None:
            fused.setdefault((original, param), {})[index] = value
            continue
        out[f"{original}.{param}"] = _swap_halves(value) if original == _SWAPPED else value
    for (original, param), parts in fused.items():
        if len(parts) != 3:
            _, block, inner = original.split(".", 2)
            missing = [part for i, part in enumerate(_FUSED[inner]) if i not in parts]
            raise KeyError(f"transformer_blocks.{block}.{missing[0]}.{param} is missing: the fused {original} "
                           "needs q, k and v")
        out[f"{original}.{param}"] = torch.cat([parts[i] for i in range(3)], dim=0)
    return out


def _diffusers_module(module: str) -> str | tuple[str, ...]:
    """original module -> diffusers module (a fused one: its parts in row order)."""
    if module in _TOP:
        return _TOP[module]
    m = _BLOCK.match(module)
    if m and m.group(1) == "double_blocks":
        inner, prefix = m.group(3), f"transformer_blocks.{m.group(2)}."
        if inner in _FUSED:
            return tuple(prefix + part for part in _FUSED[inner])
        if inner in _DOUBLE:
            return prefix + _DOUBLE[inner]
    if m and m.group(1) == "single_blocks" and m.group(3) in _SINGLE:
        return f"single_transformer_blocks.{m.group(2)}.{_SINGLE[m.group(3)]}"
    raise KeyError(f"{module!r} is not a module of the original FLUX.2 DiT (BFL / ComfyUI names)")


def original_to_diffusers(sd: dict) -> dict:
    """The original BFL / ComfyUI FLUX.2 DiT keys (``model.diffusion_model.`` prefix optional) -> diffusers'."""
    out = {}
    for key, value in sd.items():
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        module, param = _split_param(key)
        target = _diffusers_module(module)
        if param == "scale":
            param = "weight"
        if isinstance(target, tuple):
            for part, rows in zip(target, torch.chunk(value, 3, dim=0)):
                out[f"{part}.{param}"] = rows
        else:
            out[f"{target}.{param}"] = _swap_halves(value) if module == _SWAPPED else value
    return out


# ------------------------------------------------------------------------------------- LoRA on original names
LORA_FUSED_GROUPS = [  # diffusers modules fused into one original module, in fusion order
    (re.compile(r"^transformer_blocks\.(\d+)\.attn\.(to_q|to_k|to_v)$"), "transformer_blocks.{}.attn.",
     ("to_q", "to_k", "to_v")),
    (re.compile(r"^transformer_blocks\.(\d+)\.attn\.(add_q_proj|add_k_proj|add_v_proj)$"),
     "transformer_blocks.{}.attn.", ("add_q_proj", "add_k_proj", "add_v_proj")),
]


def _fused_part_shape(member: str, hidden: int) -> tuple | None:
    """Without the base model: FLUX.2's q/k/v (image and text stream) map hidden -> hidden."""
    return (hidden, hidden) if member.endswith(("to_q", "to_k", "to_v", "_proj")) else None


def _rename_a(state: dict) -> dict:
    """A's rows are the rank, not weight rows: renamed (parts concatenated in fusion order), never half-swapped."""
    out = diffusers_to_original(state)
    if "norm_out.linear.weight" in state:
        out[f"{_SWAPPED}.weight"] = state["norm_out.linear.weight"]
    return out


def lora_to_original(modules: dict, shapes: dict | None = None) -> dict:
    """``{module: (A, B)}`` LoRAs on diffusers' FLUX.2 DiT -> the original (BFL / ComfyUI) names: the double blocks'
    q/k/v LoRAs become one LoRA on ``img_attn.qkv`` / ``txt_attn.qkv`` (A stacked along the rank, B block-diagonal,
    a part without a LoRA zero rows); a LoRA on ``norm_out.linear`` gets B's halves swapped like the weight."""
    from ...models.lora_names import fuse_groups, rename_modules
    fused = fuse_groups(modules, LORA_FUSED_GROUPS, _fused_part_shape, shapes)
    return rename_modules(fused, _rename_a, diffusers_to_original)


def lora_names_without_model(modules: dict) -> dict:
    """Original-name LoRAs back to diffusers' where no base model is at hand: renames pass (``final_layer``'s B
    halves swapped back); a fused ``qkv`` LoRA can only be split against the model's rows."""
    from ...models.lora_names import LoraFormatError
    out = {}
    for name, (a, b) in modules.items():
        try:
            target = _diffusers_module(name)
        except KeyError:
            out[name] = (a, b)  # diffusers names (or unknown: the export's key check names it)
            continue
        if isinstance(target, tuple):
            raise LoraFormatError(f"LoRA module {name!r} is FLUX.2's fused q/k/v layer (original/ComfyUI names): "
                                  "splitting it needs the base model; export with the pipeline's export stage "
                                  "(dvc repro export), which loads the DiT")
        out[target] = (a, _swap_halves(b) if name == _SWAPPED else b)
    return out
