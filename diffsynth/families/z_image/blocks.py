"""Z-Image's DiT blocks for the memory plan: what a block is called with, and the text tokens it sees.

One block class serves three lists: ``noise_refiner`` (image tokens, modulated; layer ids from 1000),
``context_refiner`` (text tokens, not modulated) and ``layers`` (image + text tokens in one stream)."""
from __future__ import annotations

import torch

# a long caption: DiffSynth keeps only the prompt's real tokens (at most 512)
TEXT_TOKENS = {"ZImageTransformer2DModel": lambda dit: 256}


def _block(block, batch: int, image_tokens: int, txt_tokens: int, rand, index: int = 0) -> dict:
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


def _control_block(block, batch: int, image_tokens: int, txt_tokens: int, rand, index: int = 0) -> dict:
    """A ControlNet block (diffusers' ZImageControlTransformerBlock, controlnet.py): the control stream ``c`` beside
    the DiT's tokens ``x``; block ``index`` > 0 receives the ``index`` hints so far and the stream, stacked. The
    control refiner (layer ids from 1000) runs on the image tokens, the control layers on image + text."""
    dim, hd = block.dim, block.head_dim
    n = image_tokens if block.layer_id >= 1000 else image_tokens + txt_tokens
    angle = rand(n, hd // 2, dt=torch.float32)
    return {"c": rand(batch, n, dim) if index == 0 else rand(index + 1, batch, n, dim), "x": rand(batch, n, dim),
            "attn_mask": None,
            "freqs_cis": torch.polar(torch.ones_like(angle), angle).unsqueeze(0).expand(batch, n, hd // 2),
            "adaln_input": rand(batch, block.adaLN_modulation[0].in_features)}


BLOCK_INPUTS = {"ZImageTransformerBlock": _block, "ZImageControlTransformerBlock": _control_block}
