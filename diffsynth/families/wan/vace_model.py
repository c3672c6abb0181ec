"""The VACE branch of Wan2.1-VACE / Wan2.2-VACE-Fun DiTs, as DiffSynth holds it: a model of its own (``pipe.vace``)
beside the DiT, loaded from the same checkpoint file, in the original Wan-AI names (``vace_blocks.N.self_attn.q``,
``vace_blocks.0.before_proj``, ``vace_blocks.N.after_proj``, ``vace_patch_embedding``), so its trainable tensors,
LoRA targets (``q,k,v,o,ffn.0,ffn.2``) and checkpoints read as DiffSynth's.

A VACE block is a Wan DiT block (computed as diffusers' ``WanTransformerBlock`` computes it, so the DiT and its
branch share one numerical path) plus ``before_proj`` (block 0: the VACE tokens + the DiT's patch tokens) and
``after_proj`` (the hint added after DiT block ``vace_layers[n]``, times ``vace_scale``).

The DiT file holds both; it is detected and loaded as diffusers' ``WanVACETransformer3DModel`` (so exports and the
memory plan see diffusers' VACE model), and the VACE pipeline splits it (:func:`split`, same tensors) into
``pipe.dit`` and ``pipe.vace``.
"""
from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

from . import convert

VACE_KEY = re.compile(r"^(model\.diffusion_model\.)?vace_(blocks\.\d+\.|patch_embedding\.)")


class _Attention(nn.Module):
    """Wan attention in the original names: q, k, v, o and RMS norms over the whole width (across heads)."""

    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = nn.RMSNorm(dim, eps=eps, elementwise_affine=True)
        self.norm_k = nn.RMSNorm(dim, eps=eps, elementwise_affine=True)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, rotary=None) -> torch.Tensor:
        source = x if context is None else context
        q = self.norm_q(self.q(x)).unflatten(2, (self.heads, -1))
        k = self.norm_k(self.k(source)).unflatten(2, (self.heads, -1))
        v = self.v(source).unflatten(2, (self.heads, -1))
        if rotary is not None:
            q, k = _rotate(q, *rotary), _rotate(k, *rotary)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o(out.transpose(1, 2).flatten(2, 3).type_as(q))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on interleaved pairs, with the (cos, sin) tables of diffusers' ``WanRotaryPosEmbed``."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).type_as(x)


class VaceBlock(nn.Module):
    """One VACE block: ``forward(c, x, context, temb, rotary) -> (hint, c)``."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, eps: float, first: bool):
        super().__init__()
        self.self_attn = _Attention(dim, heads, eps)
        self.cross_attn = _Attention(dim, heads, eps)
        self.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.norm3 = nn.LayerNorm(dim, eps=eps)  # the cross-attention norm (diffusers' norm2)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)
        if first:
            self.before_proj = nn.Linear(dim, dim)
        self.after_proj = nn.Linear(dim, dim)

    def forward(self, c, x, context, temb, rotary):
        if hasattr(self, "before_proj"):
            c = self.before_proj(c) + x
        shift, scale, gate, c_shift, c_scale, c_gate = (self.modulation + temb.float()).chunk(6, dim=1)
        h = (self.norm1(c.float()) * (1 + scale) + shift).type_as(c)
        c = (c.float() + self.self_attn(h, rotary=rotary) * gate).type_as(c)
        c = c + self.cross_attn(self.norm3(c.float()).type_as(c), context)
        h = (self.norm2(c.float()) * (1 + c_scale) + c_shift).type_as(c)
        c = (c.float() + self.ffn(h).float() * c_gate).type_as(c)
        return self.after_proj(c), c


class WanVaceModel(nn.Module):
    """DiffSynth's ``VaceWanModel``: VACE patch embedding + blocks; hints for DiT blocks ``vace_layers``."""

    def __init__(self, vace_layers=(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28), vace_in_dim: int = 96,
                 patch_size=(1, 2, 2), dim: int = 1536, num_heads: int = 12, ffn_dim: int = 8960, eps: float = 1e-6):
        super().__init__()
        self.vace_layers = tuple(int(i) for i in vace_layers)
        self.config = {"vace_layers": list(self.vace_layers), "vace_in_dim": vace_in_dim,
                       "patch_size": list(patch_size), "dim": dim, "num_heads": num_heads, "ffn_dim": ffn_dim,
                       "eps": eps}
        self.vace_blocks = nn.ModuleList(VaceBlock(dim, num_heads, ffn_dim, eps, first=n == 0)
                                         for n in range(len(self.vace_layers)))
        self.vace_patch_embedding = nn.Conv3d(vace_in_dim, dim, kernel_size=tuple(patch_size),
                                              stride=tuple(patch_size))
        self.gradient_checkpointing = False

    def enable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = True

    def hints(self, x: torch.Tensor, vace_context: torch.Tensor, context, temb, rotary) -> list[torch.Tensor]:
        """One hint per VACE layer. ``vace_context`` (B, vace_in_dim, F', H, W) is patch-embedded and zero-padded
        to the DiT's token count (a shorter control video leaves the last tokens unconditioned)."""
        c = self.vace_patch_embedding(vace_context.to(self.vace_patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        if c.shape[1] < x.shape[1]:
            c = torch.cat([c, c.new_zeros(c.shape[0], x.shape[1] - c.shape[1], c.shape[2])], dim=1)
        out = []
        for block in self.vace_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hint, c = torch.utils.checkpoint.checkpoint(block, c, x, context, temb, rotary, use_reentrant=False)
            else:
                hint, c = block(c, x, context, temb, rotary)
            out.append(hint)
        return out


def make_config(shapes: dict, beside: dict | None) -> dict:
    """diffusers ``WanVACETransformer3DModel`` config from the file's shapes (either name prefix): the DiT's, plus
    the VACE layers (Wan-AI's config.json lists them; else the blocks are spread evenly over the DiT's layers from
    layer 0, as DiffSynth's configs have them: 1.3B 15 of 30, every 2nd; 14B 8 of 40, every 5th)."""
    if beside and beside.get("_class_name") == "WanVACETransformer3DModel":  # diffusers' own config.json
        return beside
    s = {re.sub(r"^model\.diffusion_model\.", "", k): tuple(v.shape) if hasattr(v, "shape") else tuple(v)
         for k, v in shapes.items()}
    config = convert.wan_dit_config({k: v for k, v in s.items() if not VACE_KEY.match(k)},
                                    beside if beside and "num_heads" in beside else None)
    count = 1 + max(int(m[1]) for k in s if (m := re.match(r"vace_blocks\.(\d+)\.", k)))
    step = config["num_layers"] // count
    layers = list((beside or {}).get("vace_layers") or range(0, step * count, step))
    return {**config, "vace_layers": layers, "vace_in_channels": s["vace_patch_embedding.weight"][1]}


def to_model_keys(sd: dict, config: dict) -> dict:
    return convert.wan_dit_to_diffusers(sd)


def split(model) -> tuple[nn.Module, WanVaceModel]:
    """A loaded ``WanVACETransformer3DModel`` -> (``WanTransformer3DModel``, :class:`WanVaceModel`) holding the same
    tensors (no copy; meta stays meta): DiffSynth's ``pipe.dit`` and ``pipe.vace``."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    c = dict(model.config)
    dit_config = {k: v for k, v in c.items() if k not in ("vace_layers", "vace_in_channels") and not k.startswith("_")}
    with init_empty_weights(include_buffers=False):
        dit = WanTransformer3DModel.from_config(dit_config)
        vace = WanVaceModel(c["vace_layers"], c["vace_in_channels"], c["patch_size"],
                            c["num_attention_heads"] * c["attention_head_dim"], c["num_attention_heads"], c["ffn_dim"],
                            c["eps"])
    state = model.state_dict()
    dit.load_state_dict({k: v for k, v in state.items() if not k.startswith("vace_")}, strict=True, assign=True)
    vace.load_state_dict(convert.diffusers_to_wan_dit({k: v for k, v in state.items() if k.startswith("vace_")}),
                         strict=True, assign=True)
    return dit.eval(), vace.eval()


def forward_with_vace(dit, vace: WanVaceModel, hidden_states: torch.Tensor, timestep: torch.Tensor,
                      encoder_hidden_states: torch.Tensor, vace_context: torch.Tensor, vace_scale: float = 1.0,
                      encoder_hidden_states_image: torch.Tensor | None = None) -> torch.Tensor:
    """diffusers' ``WanTransformer3DModel.forward`` with DiffSynth's VACE hints: after DiT block ``vace_layers[n]``
    the n-th hint times ``vace_scale`` is added (``model_fn_wan_video``). One timestep per sample."""
    b, _, frames, height, width = hidden_states.shape
    p_t, p_h, p_w = dit.config.patch_size
    rotary = dit.rope(hidden_states)
    x = dit.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()
    temb, proj, context, image = dit.condition_embedder(timestep, encoder_hidden_states, encoder_hidden_states_image)
    proj = proj.unflatten(1, (6, -1))
    if image is not None:
        context = torch.cat([image, context], dim=1)
    hints = dict(zip(vace.vace_layers, vace.hints(x, vace_context, context, proj, rotary)))
    checkpointing = torch.is_grad_enabled() and dit.gradient_checkpointing
    for i, block in enumerate(dit.blocks):
        x = dit._gradient_checkpointing_func(block, x, context, proj, rotary) if checkpointing else \
            block(x, context, proj, rotary)
        if i in hints:
            x = x + hints[i] * vace_scale
    shift, scale = (dit.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
    x = (dit.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
    x = dit.proj_out(x).reshape(b, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1)
    return x.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
