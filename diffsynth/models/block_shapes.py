"""What one transformer block of each DiT class is called with during training, as tensors of the right shapes
(a model table, like real_configs.py): the memory plan runs a block on the meta device with these to count the
activations it saves, and the benchmarks run a real-width block with them.

Token counts come from the caller (resolution, frames, VAE and patch factors); the text-token counts below are
assumptions about the prompts, stated so the plan can print them.
"""
from __future__ import annotations

import torch
from torch import nn

# Text tokens the DiT attends to, per DiT class: Qwen-Image's prompt after DiffSynth drops the 34 template tokens
# (a long caption; DiffSynth does not pad), FLUX's T5 padded to 512, Wan's UMT5 context padded to 512.
TEXT_TOKENS = {"QwenImageTransformer2DModel": 256, "FluxTransformer2DModel": 512, "WanTransformer3DModel": 512}
CLIP_IMAGE_TOKENS = 257  # Wan2.1 image-to-video: CLIP ViT-H tokens appended to the text context
# Extra inputs whose images join the image tokens (one image's worth each): Qwen-Image-Edit, FLUX.1 Kontext
REFERENCE_IMAGE_INPUTS = ("edit_image", "kontext_images")


def text_tokens(dit: nn.Module) -> int:
    n = TEXT_TOKENS.get(type(dit).__name__, 512)
    if getattr(getattr(dit, "config", None), "image_dim", None):  # Wan2.1 I2V's CLIP image context
        n += CLIP_IMAGE_TOKENS
    return n


def _linear_in(module: nn.Module) -> int:
    return next(m for m in module.modules() if isinstance(m, nn.Linear)).in_features


def block_inputs(block: nn.Module, batch: int, image_tokens: int, txt_tokens: int, dtype: torch.dtype,
                 device="meta", generator: torch.Generator | None = None) -> dict:
    """Keyword arguments for ``block(**kwargs)``: hidden states of ``image_tokens`` (video tokens for Wan),
    ``txt_tokens`` of text context, the timestep embedding and the rotary tables, as the DiT passes them."""
    name = type(block).__name__

    def rand(*shape, dt=dtype):
        if device == "meta":
            return torch.empty(*shape, dtype=dt, device="meta")
        return torch.randn(*shape, dtype=dt, device=device, generator=generator)

    if name == "QwenImageTransformerBlock":
        dim, heads = block.dim, block.num_attention_heads
        hd = block.attention_head_dim

        def freqs(n):  # unit complex rotations [n, hd/2], as QwenEmbedRope returns
            angle = rand(n, hd // 2, dt=torch.float32)
            return torch.polar(torch.ones_like(angle), angle)
        return {"hidden_states": rand(batch, image_tokens, dim), "encoder_hidden_states": rand(batch, txt_tokens, dim),
                "encoder_hidden_states_mask": None, "temb": rand(batch, dim),
                "image_rotary_emb": (freqs(image_tokens), freqs(txt_tokens))}
    if name in ("FluxTransformerBlock", "FluxSingleTransformerBlock"):
        dim = block.norm.linear.in_features if name == "FluxSingleTransformerBlock" else block.norm1.linear.in_features
        hd = dim // block.attn.heads
        n = image_tokens + txt_tokens
        return {"hidden_states": rand(batch, image_tokens, dim), "encoder_hidden_states": rand(batch, txt_tokens, dim),
                "temb": rand(batch, dim),
                "image_rotary_emb": (rand(n, hd, dt=torch.float32), rand(n, hd, dt=torch.float32))}
    if name == "WanTransformerBlock":
        dim = block.norm2.normalized_shape[0] if hasattr(block.norm2, "normalized_shape") else _linear_in(block.ffn)
        hd = dim // block.attn1.heads
        return {"hidden_states": rand(batch, image_tokens, dim), "encoder_hidden_states": rand(batch, txt_tokens, dim),
                "temb": rand(batch, 6, dim),
                "rotary_emb": (rand(1, image_tokens, 1, hd, dt=torch.float32),
                               rand(1, image_tokens, 1, hd, dt=torch.float32))}
    raise KeyError(f"no block input table for {name}")
