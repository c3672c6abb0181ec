"""Z-Image's DiT blocks for the memory plan: what a block is called with, and the text tokens it sees.

One block class serves three lists: ``noise_refiner`` (image tokens, modulated; layer ids from 1000),
``context_refiner`` (text tokens, not modulated) and ``layers`` (image + text tokens in one stream)."""
from __future__ import annotations

import torch

# a long caption: DiffSynth keeps only the prompt's real tokens (at most 512)
TEXT_TOKENS = {"ZImageTransformer2DModel": lambda dit: 256}


def _block(block, batch: int, image_tokens: int, txt_tokens: int, rand) -> dict:
    dim, hd = block.dim, block.head_dim
    if not block.modulation:
        n = txt_tokens  # context refiner
    elif block.layer_id >= 1000:
        n = image_tokens  # noise refiner
    else:
        n = image_tokens + txt_tokens
    angle = rand(n, hd // 2, dt=torch.float32)
    inputs = {"x": rand(batch, n, dim), "attn_mask": None,
              "freqs_cis": torch.polar(torch.ones_like(angle), angle).unsqueeze(0).expand(batch, n, hd // 2)}
    if block.modulation:
        inputs["adaln_input"] = rand(batch, block.adaLN_modulation[0].in_features)
    return inputs


BLOCK_INPUTS = {"ZImageTransformerBlock": _block}
