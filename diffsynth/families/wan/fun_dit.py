"""The Wan DiT with Alibaba PAI's Wan-Fun additions, which diffusers' ``WanTransformer3DModel`` lacks:

* ``ref_conv`` (Fun-V1.1 / Wan2.2-Fun Control): a 2x2 stride-2 convolution turns the reference image's latents
  into one frame of tokens put in front of the video tokens (RoPE frame 0; the video's frames move up by one)
  and dropped again before unpatchify;
* ``control_adapter`` (Fun Control-Camera): pixel-unshuffle by 8, a patch-sized convolution and one residual
  block turn the Plücker camera embedding into a tensor added to the patch embedding.

Module names are DiffSynth's (``ref_conv.*``, ``control_adapter.conv.*``, ``control_adapter.residual_blocks.0.*``),
which are also the released checkpoints' names, so conversion leaves them unchanged. Everything else is diffusers'
DiT: a model without ``reference_latents`` / ``control_camera`` runs diffusers' own forward.

``build_dit`` picks the class from the config (the checkpoint kinds' builder). ``WanMotionController`` is
DiffSynth's speed-control module (``speed.py``).
"""
from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel
from diffusers.configuration_utils import register_to_config
from torch import nn

REF_CHANNELS = 16  # the reference image's VAE latents (Wan2.1 VAE, every Fun release)
FUN_KEYS = ("has_ref_conv", "control_adapter_in_dim")


class ResidualBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class CameraAdapter(nn.Module):
    """(B, C, T', H, W) camera embedding at pixel size -> (B, dim, T', H/16, W/16) added to the patch embedding."""

    def __init__(self, in_dim: int, dim: int, patch: tuple[int, int]):
        super().__init__()
        self.pixel_unshuffle = nn.PixelUnshuffle(8)
        self.conv = nn.Conv2d(in_dim * 64, dim, kernel_size=patch, stride=patch)
        self.residual_blocks = nn.Sequential(ResidualBlock(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        x = self.residual_blocks(self.conv(self.pixel_unshuffle(x)))
        return x.reshape(b, f, *x.shape[1:]).permute(0, 2, 1, 3, 4)


class WanFunTransformer3DModel(WanTransformer3DModel):
    @register_to_config
    def __init__(self, patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                 out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None,
                 rope_max_seq_len=1024, pos_embed_seq_len=None, has_ref_conv: bool = False,
                 control_adapter_in_dim: int | None = None):
        super().__init__(patch_size, num_attention_heads, attention_head_dim, in_channels, out_channels, text_dim,
                         freq_dim, ffn_dim, num_layers, cross_attn_norm, qk_norm, eps, image_dim, added_kv_proj_dim,
                         rope_max_seq_len, pos_embed_seq_len)
        dim = num_attention_heads * attention_head_dim
        self.ref_conv = nn.Conv2d(REF_CHANNELS, dim, kernel_size=(2, 2), stride=(2, 2)) if has_ref_conv else None
        self.control_adapter = (CameraAdapter(control_adapter_in_dim, dim, tuple(patch_size[1:]))
                                if control_adapter_in_dim else None)

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image=None,
                return_dict: bool = True, attention_kwargs=None, reference_latents=None, control_camera=None):
        if reference_latents is None and control_camera is None:
            return super().forward(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image,
                                   return_dict=return_dict, attention_kwargs=attention_kwargs)
        b, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        f, h, w = frames // p_t, height // p_h, width // p_w
        x = self.patch_embedding(hidden_states)
        if control_camera is not None:
            if self.control_adapter is None:
                raise ValueError("control_camera given, but this Wan DiT has no control_adapter (not a Control-Camera "
                                 "model)")
            x = x + self.control_adapter(control_camera.to(x.dtype))
        x = x.flatten(2).transpose(1, 2).contiguous()
        ref_tokens = 0
        if reference_latents is not None:
            if self.ref_conv is None:
                raise ValueError("reference_latents given, but this Wan DiT has no ref_conv (reference_image needs a "
                                 "Fun-V1.1 / Wan2.2-Fun Control model)")
            ref = reference_latents[:, :, 0] if reference_latents.ndim == 5 else reference_latents
            ref = self.ref_conv(ref.to(x.dtype)).flatten(2).transpose(1, 2)
            ref_tokens = ref.shape[1]
            x = torch.cat([ref, x], dim=1)
        # RoPE over the video's frames plus the reference frame in front (only the shape is read)
        rotary = self.rope(torch.empty((1, 1, (f + (1 if ref_tokens else 0)) * p_t, height, width), device="meta"))
        temb, timestep_proj, context, context_image = self.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image)
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
        if context_image is not None:
            context = torch.cat([context_image, context], dim=1)
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, context, timestep_proj, rotary)
            else:
                x = block(x, context, timestep_proj, rotary)
        shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        x = (self.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
        x = self.proj_out(x)[:, ref_tokens:]
        x = x.reshape(b, f, h, w, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        out = x.flatten(6, 7).flatten(4, 5).flatten(2, 3)
        return (out,) if not return_dict else {"sample": out}


def sinusoidal_embedding(dim: int, position: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, dim): cos then sin of position · 10000^(-k/(dim/2)), in float64, cast back to the input's dtype."""
    half = dim // 2
    freqs = torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=position.device).div(half))
    angles = torch.outer(position.to(torch.float64), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).to(position.dtype)


class WanMotionController(nn.Module):
    def __init__(self, freq_dim: int = 256, dim: int = 1536):
        super().__init__()
        self.freq_dim = freq_dim
        self.linear = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU(),
                                    nn.Linear(dim, dim * 6))

    def forward(self, motion_bucket_id: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(self.freq_dim, motion_bucket_id * 10)
        return self.linear(emb.to(self.linear[0].weight.dtype))


def build_dit(config: dict) -> nn.Module:
    """diffusers' Wan DiT, or the Fun one when the config has a reference convolution or a camera adapter."""
    if any(config.get(k) for k in FUN_KEYS):
        return WanFunTransformer3DModel.from_config(config)
    return WanTransformer3DModel.from_config({k: v for k, v in config.items() if k not in FUN_KEYS})


def fun_dit_config(shapes: dict) -> dict:
    """The Fun additions' config entries from the (diffusers-named) shapes, False / None for other Wan DiTs (named
    either way, so a DiT without them is never taken for a Fun release of the same size)."""
    adapter = shapes.get("control_adapter.conv.weight")
    return {"has_ref_conv": "ref_conv.weight" in shapes,
            "control_adapter_in_dim": tuple(adapter)[1] // 64 if adapter is not None else None}
