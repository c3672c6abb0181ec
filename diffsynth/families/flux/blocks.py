"""FLUX.1's DiT blocks for the memory plan: what a block is called with, and the text tokens it sees."""
from __future__ import annotations

import torch

TEXT_TOKENS = {"FluxTransformer2DModel": lambda dit: 512}  # T5 padded to 512


def _block(block, batch: int, image_tokens: int, txt_tokens: int, rand, index: int = 0) -> dict:
    single = type(block).__name__ == "FluxSingleTransformerBlock"
    dim = block.norm.linear.in_features if single else block.norm1.linear.in_features
    hd = dim // block.attn.heads
    n = image_tokens + txt_tokens
    return {"hidden_states": rand(batch, image_tokens, dim), "encoder_hidden_states": rand(batch, txt_tokens, dim),
            "temb": rand(batch, dim), "image_rotary_emb": (rand(n, hd, dt=torch.float32), rand(n, hd, dt=torch.float32))}


BLOCK_INPUTS = {"FluxTransformerBlock": _block, "FluxSingleTransformerBlock": _block}
