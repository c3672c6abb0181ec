"""Qwen-Image's DiT blocks for the memory plan: what a block is called with, and the text tokens it sees."""
from __future__ import annotations

import torch

# the prompt after DiffSynth drops the 34 template tokens (a long caption; DiffSynth does not pad)
TEXT_TOKENS = {"QwenImageTransformer2DModel": lambda dit: 256}


def _block(block, batch: int, image_tokens: int, txt_tokens: int, rand, index: int = 0) -> dict:
    dim, hd = block.dim, block.attention_head_dim

    def freqs(n):  # unit complex rotations [n, hd/2], as QwenEmbedRope returns
        angle = rand(n, hd // 2, dt=torch.float32)
        return torch.polar(torch.ones_like(angle), angle)
    return {"hidden_states": rand(batch, image_tokens, dim), "encoder_hidden_states": rand(batch, txt_tokens, dim),
            "encoder_hidden_states_mask": None, "temb": rand(batch, dim),
            "image_rotary_emb": (freqs(image_tokens), freqs(txt_tokens))}


BLOCK_INPUTS = {"QwenImageTransformerBlock": _block}
