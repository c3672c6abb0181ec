"""Wan2.2-Animate's adapter, as DiffSynth holds it: ``pipe.animate_adapter`` (DiffSynth's ``WanAnimateAdapter``) beside
the DiT, loaded from the same checkpoint file, in the released names, which are also DiffSynth's and ComfyUI's
(``comfy/ldm/wan/model_animate.py``):

* ``pose_patch_embedding`` (Conv3d 16 -> dim, the DiT's patch): the pose clip's VAE latents, added to the patch
  embedding of every latent frame but the first (the reference frame);
* ``motion_encoder`` (``enc.net_app.convs.*``, ``enc.fc.*``, ``dec.direction.weight``): a StyleGAN-style encoder of
  each 512x512 face frame to a 512-d motion code (``Generator.get_motion``: appearance net, 5 equalised linears, QR
  directions);
* ``face_encoder`` (``conv1_local``, ``conv2``, ``conv3``, ``out_proj``, ``padding_tokens``): causal 1-D convolutions
  over the motion codes (frames /4, as the VAE's time axis), 4 heads + 1 padding token per latent frame;
* ``face_adapter.fuser_blocks.N``: cross-attention from the video tokens of each latent frame to that frame's face
  tokens, added after DiT block ``5·N``.

The DiT file is loaded as one model (diffusers' Wan DiT with the four adapter parts as top-level children, so the
file's adapter keys load and export unchanged), then :func:`split` hands the adapter parts to a
:class:`WanAnimateAdapter` (same tensors): DiffSynth's ``pipe.dit`` and ``pipe.animate_adapter``.

DiffSynth computes the motion codes inside a re-entrant gradient checkpoint of an input that needs no gradient, so the
motion encoder never receives a gradient when the adapter is trained; here it runs without gradient to the same end.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.nn import functional as F

PARTS = ("pose_patch_embedding", "motion_encoder", "face_encoder", "face_adapter")
ADAPTER_KEY = re.compile(r"^(model\.diffusion_model\.)?(pose_patch_embedding|motion_encoder|face_encoder|face_adapter)\.")
FACE_SIZE = 512          # DiffSynth's training loader crops and resizes every face frame to 512x512
FRAMES_SHORTER = 4       # pose and face clips are cut to len(video) - 4 frames (WanVideoUnit_AnimateVideoSplit)
BLOCK_EVERY = 5          # a face block after every 5th DiT block
# the motion encoder's channels per level, 512x512 down to 4x4 (StyleGAN's table for size 512)
REAL_CHANNELS = (32, 64, 128, 256, 512, 512, 512, 512)
MOTION_BATCH = 8         # DiffSynth encodes face frames 8 at a time


# ------------------------------------------------------------------------------------------------ motion encoder
class EqualConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.scale, self.stride, self.padding = 1 / math.sqrt(cin * kernel ** 2), stride, padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, self.stride, self.padding)


class EqualLinear(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = 1 / math.sqrt(cin)

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias)


class LeakyBias(nn.Module):
    """StyleGAN's fused leaky ReLU: leaky_relu(x + bias, 0.2) * sqrt(2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        return F.leaky_relu(x + self.bias, 0.2) * math.sqrt(2)


class Blur(nn.Module):
    """FIR low-pass before a stride-2 convolution: pad, then each channel convolved with the flipped 4x4 kernel (a
    parameter in DiffSynth's model, so it is in the checkpoint)."""

    def __init__(self, pad: tuple[int, int]):
        super().__init__()
        k = torch.tensor([1.0, 3.0, 3.0, 1.0])
        k = k[None, :] * k[:, None]
        self.kernel = nn.Parameter(k / k.sum())
        self.pad = pad

    def forward(self, x):
        c = x.shape[1]
        x = F.pad(x, (self.pad[0], self.pad[1], self.pad[0], self.pad[1]))
        weight = torch.flip(self.kernel, [0, 1]).to(x.dtype).expand(c, 1, *self.kernel.shape)
        return F.conv2d(x, weight, groups=c)


def conv_layer(cin: int, cout: int, kernel: int, downsample: bool = False, activate: bool = True) -> nn.Sequential:
    """StyleGAN's ConvLayer: [Blur,] EqualConv2d[, LeakyBias] (child names 0, 1, 2 as DiffSynth's)."""
    layers: list[nn.Module] = []
    if downsample:
        p = 2 + (kernel - 1)
        layers.append(Blur(((p + 1) // 2, p // 2)))
        layers.append(EqualConv2d(cin, cout, kernel, stride=2, padding=0, bias=False))
    else:
        layers.append(EqualConv2d(cin, cout, kernel, padding=kernel // 2, bias=False))
    if activate:
        layers.append(LeakyBias(cout))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = conv_layer(cin, cin, 3)
        self.conv2 = conv_layer(cin, cout, 3, downsample=True)
        self.skip = conv_layer(cin, cout, 1, downsample=True, activate=False)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class _Namespace(nn.Module):
    """A named level of the module tree (``enc``, ``dec``) that only holds children."""


class MotionEncoder(nn.Module):
    """DiffSynth's ``Generator``: ``get_motion`` (N, 3, S, S) face frames in [-1, 1] -> (N, style_dim) motion codes."""

    def __init__(self, channels=REAL_CHANNELS, style_dim: int = 512, motion_dim: int = 20):
        super().__init__()
        self.enc, self.dec = _Namespace(), _Namespace()
        self.enc.net_app = _Namespace()
        convs = [conv_layer(3, channels[0], 1)]
        convs += [ResBlock(a, b) for a, b in zip(channels[:-1], channels[1:])]
        convs.append(EqualConv2d(channels[-1], style_dim, 4, padding=0, bias=False))
        self.enc.net_app.convs = nn.ModuleList(convs)
        self.enc.fc = nn.Sequential(*[EqualLinear(style_dim, style_dim) for _ in range(4)],
                                    EqualLinear(style_dim, motion_dim))
        self.dec.direction = _Namespace()
        self.dec.direction.weight = nn.Parameter(torch.randn(style_dim, motion_dim))

    def get_motion(self, faces: torch.Tensor) -> torch.Tensor:
        h = faces
        for conv in self.enc.net_app.convs:
            h = conv(h)
        alpha = self.enc.fc(h.squeeze(-1).squeeze(-1))
        weight = self.dec.direction.weight + 1e-8
        q, _ = torch.linalg.qr(weight.float())
        # DiffSynth: sum over the motion axis of diag(alpha) @ Q^T
        return torch.sum(torch.diag_embed(alpha) @ q.to(alpha.dtype).T, dim=1)


# ------------------------------------------------------------------------------------------------ face encoder
class CausalConv1d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1):
        super().__init__()
        self.pad = kernel - 1
        self.conv = nn.Conv1d(cin, cout, kernel, stride=stride)

    def forward(self, x):
        return self.conv(F.pad(x, (self.pad, 0), mode="replicate"))


class FaceEncoder(nn.Module):
    """(B, T, style_dim) motion codes -> (B, T', heads + 1, dim) face tokens (T' = T/4 rounded up, as the VAE's)."""

    def __init__(self, in_dim: int = 512, dim: int = 5120, heads: int = 4, hidden: int = 1024):
        super().__init__()
        self.heads, self.hidden = heads, hidden
        self.conv1_local = CausalConv1d(in_dim, hidden * heads, 3)
        self.conv2 = CausalConv1d(hidden, hidden, 3, stride=2)
        self.conv3 = CausalConv1d(hidden, hidden, 3, stride=2)
        self.out_proj = nn.Linear(hidden, dim)
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x):
        b = x.shape[0]
        x = self.conv1_local(x.transpose(1, 2))                         # B, heads*hidden, T
        x = x.unflatten(1, (self.heads, self.hidden)).flatten(0, 1)     # B*heads, hidden, T
        x = F.silu(F.layer_norm(x.transpose(1, 2), (self.hidden,), eps=1e-6)).transpose(1, 2)
        x = F.silu(F.layer_norm(self.conv2(x).transpose(1, 2), (self.hidden,), eps=1e-6)).transpose(1, 2)
        x = F.silu(F.layer_norm(self.conv3(x).transpose(1, 2), (self.hidden,), eps=1e-6))
        x = self.out_proj(x)                                            # B*heads, T', dim
        x = x.unflatten(0, (b, self.heads)).transpose(1, 2)             # B, T', heads, dim
        return torch.cat([x, self.padding_tokens.to(x.dtype).expand(b, x.shape[1], 1, -1)], dim=2)


# ------------------------------------------------------------------------------------------------ face adapter
class HeadRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        y = x.float()
        return (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FaceBlock(nn.Module):
    """Each latent frame's video tokens attend to that frame's face tokens (no RoPE)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.linear1_kv = nn.Linear(dim, dim * 2)
        self.linear1_q = nn.Linear(dim, dim)
        self.linear2 = nn.Linear(dim, dim)
        self.q_norm = HeadRMSNorm(dim // heads)
        self.k_norm = HeadRMSNorm(dim // heads)

    def forward(self, x: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        b, frames, tokens, dim = motion.shape
        kv = self.linear1_kv(F.layer_norm(motion, (dim,), eps=1e-6))
        q = self.linear1_q(F.layer_norm(x, (dim,), eps=1e-6))
        k, v = kv.view(b, frames, tokens, 2, self.heads, -1).unbind(3)
        q = self.q_norm(q.view(b, q.shape[1], self.heads, -1)).to(v)
        k = self.k_norm(k).to(v)
        k = k.flatten(0, 1).transpose(1, 2)                              # B*F, heads, tokens, d
        v = v.flatten(0, 1).transpose(1, 2)
        q = q.view(b * frames, -1, self.heads, q.shape[-1]).transpose(1, 2)  # B*F, heads, S, d
        out = F.scaled_dot_product_attention(q, k, v)
        return self.linear2(out.transpose(1, 2).reshape(b, -1, dim))


class FaceAdapter(nn.Module):
    def __init__(self, dim: int, heads: int, blocks: int):
        super().__init__()
        self.fuser_blocks = nn.ModuleList(FaceBlock(dim, heads) for _ in range(blocks))


# ------------------------------------------------------------------------------------------------ the adapter
class WanAnimateAdapter(nn.Module):
    """DiffSynth's ``WanAnimateAdapter``; defaults are Wan2.2-Animate-14B's (dim 5120, 40 heads, 8 face blocks)."""

    def __init__(self, dim: int = 5120, heads: int = 40, face_blocks: int = 8, pose_channels: int = 16,
                 patch_size=(1, 2, 2), motion_channels=REAL_CHANNELS, style_dim: int = 512, motion_dim: int = 20,
                 face_heads: int = 4, face_hidden: int = 1024):
        super().__init__()
        self.config = {"dim": dim, "heads": heads, "face_blocks": face_blocks, "pose_channels": pose_channels,
                       "patch_size": list(patch_size), "motion_channels": list(motion_channels),
                       "style_dim": style_dim, "motion_dim": motion_dim, "face_heads": face_heads,
                       "face_hidden": face_hidden}
        self.pose_patch_embedding = nn.Conv3d(pose_channels, dim, kernel_size=tuple(patch_size),
                                              stride=tuple(patch_size))
        self.motion_encoder = MotionEncoder(tuple(motion_channels), style_dim, motion_dim)
        self.face_adapter = FaceAdapter(dim, heads, face_blocks)
        self.face_encoder = FaceEncoder(style_dim, dim, face_heads, face_hidden)
        self.gradient_checkpointing = False

    def enable_gradient_checkpointing(self) -> None:
        """Training the adapter (the DiT frozen): the DiT's blocks are checkpointed in the animate forward, as
        DiffSynth's ``model_fn_wan_video`` checkpoints them whichever model is trained (the face blocks are not)."""
        self.gradient_checkpointing = True

    @property
    def face_size(self) -> int:
        """The face frames' side the motion encoder takes (512 for the real one: 4 * 2**levels)."""
        return 4 * 2 ** (len(self.config["motion_channels"]) - 1)

    def add_pose(self, x: torch.Tensor, pose_latents: torch.Tensor) -> torch.Tensor:
        """Patch-embedded video ``x`` (B, dim, F, h, w) + the embedded pose latents on frames 1.. (frame 0 is the
        reference frame)."""
        pose = self.pose_patch_embedding(pose_latents.to(x.dtype))
        if pose.shape[2] != x.shape[2] - 1:
            raise ValueError(f"the pose clip gives {pose.shape[2]} latent frames and the video {x.shape[2]}: the pose "
                             f"clip must have the video's frames minus {FRAMES_SHORTER} (DiffSynth cuts it so)")
        return torch.cat([x[:, :, :1], x[:, :, 1:] + pose], dim=2)

    def motion_tokens(self, face_pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, S, S) face frames in [-1, 1] -> (B, 1 + T', heads + 1, dim): a zero frame for the reference
        frame, then the face encoder's frames."""
        b, _, frames = face_pixel_values.shape[:3]
        faces = face_pixel_values.transpose(1, 2).flatten(0, 1)
        dtype = self.motion_encoder.dec.direction.weight.dtype
        with torch.no_grad():  # DiffSynth: re-entrant checkpoint of an input without gradient -> no gradient here
            codes = torch.cat([self.motion_encoder.get_motion(faces[i:i + MOTION_BATCH].to(dtype))
                               for i in range(0, faces.shape[0], MOTION_BATCH)])
        motion = self.face_encoder(codes.view(b, frames, -1))
        return torch.cat([motion.new_zeros(b, 1, *motion.shape[2:]), motion], dim=1)

    def after_block(self, index: int, x: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        if index % BLOCK_EVERY or index // BLOCK_EVERY >= len(self.face_adapter.fuser_blocks):
            return x
        return x + self.face_adapter.fuser_blocks[index // BLOCK_EVERY](x, motion)


# ------------------------------------------------------------------------------------------------ config, split
def adapter_config(shapes: dict) -> dict:
    """:class:`WanAnimateAdapter` keywords from the adapter's key shapes (either name prefix)."""
    s = {re.sub(r"^model\.diffusion_model\.", "", k): tuple(v.shape) if hasattr(v, "shape") else tuple(v)
         for k, v in shapes.items()}
    pose = s["pose_patch_embedding.weight"]
    blocks = 1 + max(int(m[1]) for k in s if (m := re.match(r"face_adapter\.fuser_blocks\.(\d+)\.", k)))
    levels = 1 + max(int(m[1]) for k in s if (m := re.match(r"motion_encoder\.enc\.net_app\.convs\.(\d+)\.", k)))
    channels = [s["motion_encoder.enc.net_app.convs.0.0.weight"][0]]
    channels += [s[f"motion_encoder.enc.net_app.convs.{i}.conv2.1.weight"][0] for i in range(1, levels - 1)]
    hidden = s["face_encoder.conv2.conv.weight"][0]
    return {"dim": pose[0], "heads": pose[0] // s["face_adapter.fuser_blocks.0.q_norm.weight"][0],
            "face_blocks": blocks, "pose_channels": pose[1], "patch_size": list(pose[2:]),
            "motion_channels": channels, "style_dim": s[f"motion_encoder.enc.net_app.convs.{levels - 1}.weight"][0],
            "motion_dim": s["motion_encoder.dec.direction.weight"][1],
            "face_heads": s["face_encoder.conv1_local.conv.weight"][0] // hidden, "face_hidden": hidden}


def attach(dit: nn.Module, config: dict) -> nn.Module:
    """The loaded form of an Animate DiT file: the DiT with the adapter's four parts as its own children."""
    adapter = WanAnimateAdapter(**config)
    for part in PARTS:
        dit.add_module(part, getattr(adapter, part))
    dit.animate_config = dict(config)
    return dit


def is_animate(dit) -> bool:
    return dit is not None and hasattr(dit, "face_adapter") and hasattr(dit, "pose_patch_embedding")


def split(dit: nn.Module) -> tuple[nn.Module, WanAnimateAdapter]:
    """An Animate DiT as loaded -> (the DiT alone, :class:`WanAnimateAdapter`) holding the same tensors (no copy; meta
    stays meta). The DiT object itself loses the four parts."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        adapter = WanAnimateAdapter(**dit.animate_config)
    for part in PARTS:
        setattr(adapter, part, dit._modules.pop(part))
    del dit.animate_config
    return dit, adapter.eval()


def forward_with_animate(dit, adapter: WanAnimateAdapter, hidden_states: torch.Tensor, timestep: torch.Tensor,
                         encoder_hidden_states: torch.Tensor, pose_latents: torch.Tensor,
                         face_pixel_values: torch.Tensor,
                         encoder_hidden_states_image: torch.Tensor | None = None) -> torch.Tensor:
    """diffusers' ``WanTransformer3DModel.forward`` with DiffSynth's animate branch of ``model_fn_wan_video``: pose
    latents added after the patch embedding, a face block after every 5th DiT block (outside the blocks' gradient
    checkpointing, as DiffSynth). ``hidden_states`` already holds ``y`` on the channel axis."""
    b, _, frames, height, width = hidden_states.shape
    p_t, p_h, p_w = dit.config.patch_size
    rotary = dit.rope(hidden_states)
    x = adapter.add_pose(dit.patch_embedding(hidden_states), pose_latents)
    x = x.flatten(2).transpose(1, 2).contiguous()
    motion = adapter.motion_tokens(face_pixel_values).to(x.dtype)
    if motion.shape[1] != frames // p_t:
        raise ValueError(f"the face clip gives {motion.shape[1]} latent frames and the video {frames // p_t}: the face "
                         f"clip must have the video's frames minus {FRAMES_SHORTER}")
    temb, proj, context, image = dit.condition_embedder(timestep, encoder_hidden_states, encoder_hidden_states_image)
    proj = proj.unflatten(1, (6, -1))
    if image is not None:
        context = torch.cat([image, context], dim=1)
    checkpointing = torch.is_grad_enabled() and (dit.gradient_checkpointing or adapter.gradient_checkpointing)
    for i, block in enumerate(dit.blocks):
        if checkpointing and dit.gradient_checkpointing:
            x = dit._gradient_checkpointing_func(block, x, context, proj, rotary)
        elif checkpointing:
            x = torch.utils.checkpoint.checkpoint(block, x, context, proj, rotary, use_reentrant=False)
        else:
            x = block(x, context, proj, rotary)
        x = adapter.after_block(i, x, motion)
    shift, scale = (dit.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
    x = (dit.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
    x = dit.proj_out(x).reshape(b, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1)
    return x.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)


class WanAnimateDiT:
    """Builder of the loaded Animate DiT (the checkpoint kinds' and REAL_MODELS' ``cls``): the Wan DiT of the config
    (diffusers' ``WanTransformer3DModel``) with the adapter parts of ``config["animate_adapter"]`` attached."""

    @staticmethod
    def from_config(config: dict) -> nn.Module:
        from .fun_dit import build_dit

        dit = build_dit({k: v for k, v in dict(config).items() if k != "animate_adapter"})
        return attach(dit, config["animate_adapter"])
