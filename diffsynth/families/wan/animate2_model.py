"""Wan2.2-Animate-2-14B's DiT as DiffSynth-Studio holds it (``WanAnimate2Transformer``,
``diffsynth/models/wan_animate_2_dit.py``), in the released file's names (``wan_animate_2/*.safetensors``:
``blocks.N.block.self_attn.q``, ...), which are DiffSynth's too, so its LoRA targets (``self_attn.q,k,v``) and the
full recipes' dotted ``dit.blocks.N.block.self_attn.q`` name these modules unchanged.

Two token streams go through every block:

* the **reference** stream: the reference (driving) video's VAE latents + an all-ones mask (20 channels) beside its
  own 16, patch-embedded with the DiT's patch embedding, at timestep 1 (``t*0+1``), with the reference prompt and the
  CLIP features of the reference video's first frame as context; RoPE positions shifted by ``refer_offset``
  (t + 1, w + the generation grid's width); plain self-attention over its tokens;
* the **generation** stream: the noisy latents (reference image frame first) + ``y``; its self-attention sees every
  generation token plus, for latent frame ``f``, the reference tokens of reference frame ``f - 1`` (their keys and
  values from the same block's reference pass, before RoPE, then rotated with the reference positions).

DiffSynth writes that pattern as a flex-attention block mask over 128-padded buffers; here it is a boolean mask over
``[generation | reference]`` keys for ``scaled_dot_product_attention``. The reference slots DiffSynth reserves for
``num_frames // 4 + 1`` reference frames are kept: a shorter reference video leaves zero keys there, as in DiffSynth.
Training runs both streams block by block (DiffSynth's ``forward_origin``, one gradient checkpoint per block);
sampling runs the reference stream once and keeps each block's reference keys and values (its K/V cache), since
they do not depend on the denoising step.
"""
from __future__ import annotations

import math
import torch
from torch import nn
from torch.nn import functional as F
from diffusers.configuration_utils import FrozenDict

REFERENCE_TIMESTEP = 1.0  # the reference stream's timestep (DiffSynth: t*0+1)
REFERENCE = {"offset": [1, 0, -1], "stride": 1}  # DiffSynth's defaults, which its model config keeps
MASK_CHANNELS = 4


def sinusoidal(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding (cos, sin) in float64, as DiffSynth's ``sinusoidal_embedding_1d``."""
    freqs = torch.pow(10000, -torch.arange(dim // 2, dtype=torch.float64, device=t.device).div(dim // 2))
    angles = torch.outer(t.to(torch.float64), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_table(head_dim: int, grid: tuple[int, int, int], offset=(0, 0, 0), stride: int = 1,
               device=None) -> torch.Tensor:
    """Complex rotations (tokens, 1, head_dim/2) of a (frames, height, width) token grid: the head dimension split
    into time, height and width parts as Wan's 3-D RoPE does, positions from ``offset`` (time every ``stride``)."""
    f, h, w = grid
    dims = (head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6))
    steps = (stride, 1, 1)
    parts = []
    for n, d, start, step in zip((f, h, w), dims, offset, steps):
        positions = torch.arange(n, dtype=torch.float64, device=device) * step + start
        inverse = 1.0 / torch.pow(10000, torch.arange(0, d, 2, dtype=torch.float64, device=device).div(d))
        angles = torch.outer(positions, inverse)
        parts.append(torch.polar(torch.ones_like(angles), angles))
    table = torch.cat([parts[0].view(f, 1, 1, -1).expand(f, h, w, -1), parts[1].view(1, h, 1, -1).expand(f, h, w, -1),
                       parts[2].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1)
    return table.reshape(f * h * w, 1, -1)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(B, S, heads, head_dim) rotated by ``table`` (S, 1, head_dim/2), in float64 as DiffSynth's ``rope_apply``."""
    b, s, n, d = x.shape
    rotated = torch.view_as_complex(x.to(torch.float64).reshape(b, s, n, d // 2, 2)) * table
    return torch.view_as_real(rotated).flatten(3).to(x.dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention on (B, S, heads, head_dim) tensors."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def incontext_mask(frames: int, reference_frames: int, hw: int, device=None) -> torch.Tensor:
    """(frames*hw, (frames + reference_frames)*hw) booleans: every generation token sees all generation tokens and
    the reference tokens of reference frame ``f - 1`` (DiffSynth's ``create_mask``)."""
    query_frame = torch.arange(frames * hw, device=device) // hw
    reference_frame = torch.arange(reference_frames * hw, device=device) // hw + 1
    own = torch.ones(frames * hw, frames * hw, dtype=torch.bool, device=device)
    return torch.cat([own, query_frame[:, None] == reference_frame[None, :]], dim=1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class LayerNorm(nn.LayerNorm):
    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x):
        return super().forward(x).type_as(x)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def qkv(self, x):
        shape = (*x.shape[:2], self.num_heads, self.head_dim)
        return self.norm_q(self.q(x)).view(shape), self.norm_k(self.k(x)).view(shape), self.v(x).view(shape)


class CrossAttention(SelfAttention):
    """To the text context, plus a second attention to the CLIP image tokens, added."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6, use_img_emb: bool = True):
        super().__init__(dim, num_heads, eps)
        if use_img_emb:
            self.k_img, self.v_img = nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps)

    def forward(self, x, context, context_img=None):
        b, n, d = x.shape[0], self.num_heads, self.head_dim
        q = self.norm_q(self.q(x)).view(b, -1, n, d)
        k = self.norm_k(self.k(context)).view(b, -1, n, d)
        out = attend(q, k, self.v(context).view(b, -1, n, d)).flatten(2)
        if context_img is not None and hasattr(self, "k_img"):
            k_img = self.norm_k_img(self.k_img(context_img)).view(b, -1, n, d)
            out = out + attend(q, k_img, self.v_img(context_img).view(b, -1, n, d)).flatten(2)
        return self.o(out)


class AttentionBlock(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, num_heads: int, cross_attn_norm: bool = True, eps: float = 1e-6,
                 use_img_emb: bool = True):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps)
        self.self_attn = SelfAttention(dim, num_heads, eps)
        self.norm3 = LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, num_heads, eps, use_img_emb)
        self.norm2 = LayerNorm(dim, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def before_attention(self, x, e):
        mod = (self.modulation + e).chunk(6, dim=1)
        return (*self.self_attn.qkv(self.norm1(x) * (1 + mod[1]) + mod[0]), mod)

    def after_attention(self, x, attended, mod, context, context_img):
        x = x + self.self_attn.o(attended.flatten(2)) * mod[2]
        x = x + self.cross_attn(self.norm3(x), context, context_img)
        return x + self.ffn(self.norm2(x) * (1 + mod[4]) + mod[3]) * mod[5]


class IncontextBlock(nn.Module):
    """One DiT block run on both streams (DiffSynth's ``Incontext_AttentionBlock``; its layers under ``block.``)."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, cross_attn_norm: bool = True, eps: float = 1e-6,
                 use_img_emb: bool = True):
        super().__init__()
        self.block = AttentionBlock(dim, ffn_dim, num_heads, cross_attn_norm, eps, use_img_emb)

    def reference(self, x_ref, e_ref, context_ref, context_ref_img, rope_ref):
        """The reference stream's step: (its next tokens, its keys rotated, its values) for the generation stream."""
        q, k, v, mod = self.block.before_attention(x_ref, e_ref)
        q, k = apply_rope(q, rope_ref), apply_rope(k, rope_ref)
        return self.block.after_attention(x_ref, attend(q, k, v), mod, context_ref, context_ref_img), k, v

    def generation(self, x, k_ref, v_ref, e, context, context_img, rope, mask):
        q, k, v, mod = self.block.before_attention(x, e)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        slots = mask.shape[-1] - k.shape[1] - k_ref.shape[1]  # reference frames the video is missing: zero keys
        pad = [k_ref.new_zeros(k_ref.shape[0], slots, *k_ref.shape[2:])] if slots > 0 else []
        keys, values = torch.cat([k, k_ref, *pad], dim=1), torch.cat([v, v_ref, *pad], dim=1)
        return self.block.after_attention(x, attend(q, keys, values, mask), mod, context, context_img)

    def forward(self, x, x_ref, e, e_ref, context, context_img, context_ref, context_ref_img, rope, rope_ref, mask):
        x_ref, k_ref, v_ref = self.reference(x_ref, e_ref, context_ref, context_ref_img, rope_ref)
        return self.generation(x, k_ref, v_ref, e, context, context_img, rope, mask), x_ref


class Head(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch_size, eps: float = 1e-6):
        super().__init__()
        self.norm = LayerNorm(dim, eps)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)

    def forward(self, x, e):
        shift, scale = (self.modulation + e.unsqueeze(1)).chunk(2, dim=1)
        return self.head(self.norm(x) * (1 + scale) + shift)


class ImageEmbedding(nn.Module):
    """CLIP features -> context tokens (DiffSynth's ``MLP``, ``img_emb.proj.*``)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, dim),
                                  nn.LayerNorm(dim))

    def forward(self, x):
        return self.proj(x)


class WanAnimate2DiT(nn.Module):
    """DiffSynth's ``WanAnimate2Transformer`` (defaults: the released 14B)."""

    def __init__(self, patch_size=(1, 2, 2), text_len: int = 512, in_dim: int = 36, dim: int = 5120,
                 ffn_dim: int = 13824, freq_dim: int = 256, text_dim: int = 4096, out_dim: int = 16,
                 num_heads: int = 40, num_layers: int = 40, cross_attn_norm: bool = True, eps: float = 1e-6,
                 use_img_emb: bool = True, image_dim: int = 1280, reference: dict | None = None):
        """``reference``: the reference stream's RoPE ``offset`` (t, h, w; -1: the generation grid's size) and time
        ``stride`` (DiffSynth's refer_offset_* and refer_stride); a sub-dict, so the architecture is told apart from
        a Wan image-to-video DiT of the same sizes."""
        super().__init__()
        reference = {**REFERENCE, **(reference or {})}
        patch_size, refer_offset, refer_stride = tuple(patch_size), tuple(reference["offset"]), reference["stride"]
        # what the Wan pipeline and the memory plan read of a DiT's config (diffusers' names; a dict with attributes)
        self.config = FrozenDict(patch_size=patch_size, in_channels=in_dim, out_channels=out_dim,
                                      image_dim=image_dim if use_img_emb else None, num_attention_heads=num_heads,
                                      attention_head_dim=dim // num_heads, num_layers=num_layers, text_dim=text_dim,
                                      freq_dim=freq_dim, ffn_dim=ffn_dim, eps=eps)
        self.patch_size, self.dim, self.num_heads, self.out_dim = patch_size, dim, num_heads, out_dim
        self.freq_dim, self.text_len = freq_dim, text_len
        self.refer_offset, self.refer_stride = refer_offset, refer_stride
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=patch_size, stride=patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(IncontextBlock(dim, ffn_dim, num_heads, cross_attn_norm, eps, use_img_emb)
                                    for _ in range(num_layers))
        self.head = Head(dim, out_dim, patch_size, eps)
        if use_img_emb:
            self.img_emb = ImageEmbedding(image_dim, dim)
        self.gradient_checkpointing = False

    @classmethod
    def from_config(cls, config: dict) -> "WanAnimate2DiT":
        return cls(**config)

    def enable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = True

    # ---------------------------------------------------------------- pieces
    def _tokens(self, latents: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        x = self.patch_embedding(torch.cat([latents, y.to(latents.dtype)], dim=1).to(self.patch_embedding.weight.dtype))
        return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])

    def _time(self, t: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.time_embedding(sinusoidal(self.freq_dim, t).to(dtype))
        return e, self.time_projection(e).unflatten(1, (6, self.dim))

    def _context(self, text: torch.Tensor, clip: torch.Tensor | None):
        if text.shape[1] < self.text_len:  # DiffSynth pads every prompt to text_len tokens
            text = torch.cat([text, text.new_zeros(text.shape[0], self.text_len - text.shape[1], text.shape[2])], 1)
        context = self.text_embedding(text)
        return context, (self.img_emb(clip.to(context.dtype)) if clip is not None and hasattr(self, "img_emb")
                         else None)

    def _reference_offset(self, grid) -> tuple[int, int, int]:
        # -1: the generation grid's size on that axis (DiffSynth fixes it at its first call; here per call)
        return tuple(g if o < 0 else o for o, g in zip(self.refer_offset, grid))

    def reference_inputs(self, reference_latents, reference_y, context_ref, clip_ref, grid, dtype):
        """The reference stream's tokens, time modulation, contexts and rotations."""
        x_ref, grid_ref = self._tokens(reference_latents.to(dtype), reference_y)
        ones = torch.full((x_ref.shape[0],), REFERENCE_TIMESTEP, device=x_ref.device)
        _, e_ref = self._time(ones, x_ref.dtype)
        context_ref, context_ref_img = self._context(context_ref.to(x_ref.dtype), clip_ref)
        rope_ref = rope_table(self.dim // self.num_heads, grid_ref, self._reference_offset(grid), self.refer_stride,
                              x_ref.device)
        return x_ref, e_ref, context_ref, context_ref_img, rope_ref, grid_ref

    # ---------------------------------------------------------------- forward
    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, clip_feature, y,
                reference_latents, reference_y, context_ref, clip_ref, reference_cache: list | None = None,
                skip_blocks: tuple[int, ...] = ()) -> torch.Tensor:
        """Velocity (B, out_dim, F, H, W) for ``latents`` (B, 16, F, H, W: the reference image's frame first).

        ``reference_cache``: a list shared by the calls of one sampling run; the first fills it with each block's
        reference keys and values, the others use them (training passes none: both streams run per block).
        ``skip_blocks``: blocks the generation stream skips (DiffSynth's unconditional pass skips block 9)."""
        dtype = self.patch_embedding.weight.dtype
        x, grid = self._tokens(latents.to(dtype), y)
        e, e0 = self._time(timestep.reshape(-1).expand(x.shape[0]), x.dtype)
        context, context_img = self._context(context.to(x.dtype), clip_feature)
        frames, h, w = grid
        rope = rope_table(self.dim // self.num_heads, grid, device=x.device)
        # DiffSynth reserves num_frames // 4 + 1 reference frames: the generation's frames minus the reference image
        mask = incontext_mask(frames, frames - 1, h * w, x.device)
        cached = reference_cache is not None and len(reference_cache) == len(self.blocks)
        if not cached:
            x_ref, e_ref, ctx_ref, ctx_ref_img, rope_ref, _ = self.reference_inputs(
                reference_latents, reference_y, context_ref, clip_ref, grid, x.dtype)
        checkpointing = torch.is_grad_enabled() and self.gradient_checkpointing
        for index, block in enumerate(self.blocks):
            if cached:
                k_ref, v_ref = reference_cache[index]
            elif reference_cache is not None:  # sampling: the reference stream once, its K/V kept
                x_ref, k_ref, v_ref = block.reference(x_ref, e_ref, ctx_ref, ctx_ref_img, rope_ref)
                reference_cache.append((k_ref, v_ref))
            if index in skip_blocks:
                continue
            if reference_cache is not None:
                x = block.generation(x, k_ref, v_ref, e0, context, context_img, rope, mask)
            elif checkpointing:
                x, x_ref = torch.utils.checkpoint.checkpoint(block, x, x_ref, e0, e_ref, context, context_img, ctx_ref,
                                                             ctx_ref_img, rope, rope_ref, mask, use_reentrant=False)
            else:
                x, x_ref = block(x, x_ref, e0, e_ref, context, context_img, ctx_ref, ctx_ref_img, rope, rope_ref, mask)
        return self.unpatchify(self.head(x, e), grid)

    def unpatchify(self, x: torch.Tensor, grid) -> torch.Tensor:
        (f, h, w), (pf, ph, pw), c = grid, self.patch_size, self.out_dim
        x = x.view(x.shape[0], f, h, w, pf, ph, pw, c)
        return torch.einsum("bfhwpqrc->bcfphqwr", x).reshape(x.shape[0], c, f * pf, h * ph, w * pw)


def make_config(shapes: dict, beside: dict | None) -> dict:
    """The DiT's keywords from the file's shapes (Wan-AI's config.json beside it gives the heads; else Wan's head
    size, 128)."""
    s = {k.removeprefix("model.diffusion_model."): tuple(v.shape) if hasattr(v, "shape") else tuple(v)
         for k, v in shapes.items()}
    dim, in_dim, *patch = s["patch_embedding.weight"]
    layers = 1 + max(int(k.split(".")[1]) for k in s if k.startswith("blocks."))
    heads = int((beside or {}).get("num_heads") or dim // 128)
    out = {"patch_size": list(patch), "in_dim": in_dim, "dim": dim, "ffn_dim": s["blocks.0.block.ffn.0.weight"][0],
           "freq_dim": s["time_embedding.0.weight"][1], "text_dim": s["text_embedding.0.weight"][1],
           "out_dim": s["head.head.weight"][0] // math.prod(patch), "num_heads": heads, "num_layers": layers,
           "cross_attn_norm": "blocks.0.block.norm3.weight" in s, "use_img_emb": "img_emb.proj.1.weight" in s,
           "reference": dict(REFERENCE)}
    if out["use_img_emb"]:
        out["image_dim"] = s["img_emb.proj.1.weight"][1]
    for key in ("text_len", "eps"):
        if beside and key in beside:
            out[key] = beside[key]
    return out


# diffusers' WanAnimate2Transformer3DModel names the same layers without the in-context wrapper and with its
# attention names (diffusers/loaders/single_file_utils.py convert_wan_animate_2_transformer_to_diffusers)
_ATTENTION_TO_DIFFUSERS = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "k_img": "add_k_proj",
                           "v_img": "add_v_proj", "norm_k_img": "norm_added_k"}
_ATTENTION_FROM_DIFFUSERS = {v: k for k, v in _ATTENTION_TO_DIFFUSERS.items()}


def to_diffusers_name(name: str) -> str:
    """``blocks.N.block.self_attn.q[.weight]`` -> ``blocks.N.self_attn.to_q[.weight]``; other names unchanged."""
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[2] == "block":
        parts = parts[:2] + parts[3:]
        if len(parts) > 3 and parts[2] in ("self_attn", "cross_attn") and parts[3] in _ATTENTION_TO_DIFFUSERS:
            parts = parts[:3] + _ATTENTION_TO_DIFFUSERS[parts[3]].split(".") + parts[4:]
    return ".".join(parts)


def from_diffusers_name(name: str) -> str:
    """The inverse of :func:`to_diffusers_name`."""
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] != "block":
        rest = parts[2:]
        if len(rest) > 1 and rest[0] in ("self_attn", "cross_attn"):
            joined = ".".join(rest[1:3]) if rest[1] == "to_out" else rest[1]
            if joined in _ATTENTION_FROM_DIFFUSERS:
                rest = [rest[0], _ATTENTION_FROM_DIFFUSERS[joined], *rest[1 + len(joined.split(".")):]]
        parts = parts[:2] + ["block"] + rest
    return ".".join(parts)


def state_dict_to_diffusers(state: dict) -> dict:
    return {to_diffusers_name(k): v for k, v in state.items()}


def state_dict_from_diffusers(state: dict, config=None) -> dict:
    return {from_diffusers_name(k.removeprefix("model.diffusion_model.")): v for k, v in state.items()}


def original_keys(state: dict, config=None) -> dict:
    return {k.removeprefix("model.diffusion_model."): v for k, v in state.items()}


def lora_to_diffusers(modules: dict, shapes=None) -> dict:
    """LoRA modules in diffusers' ``WanAnimate2Transformer3DModel`` names (what its LoRA loader addresses)."""
    return {to_diffusers_name(name): ab for name, ab in modules.items()}
