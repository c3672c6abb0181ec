"""FLUX.2's DiT blocks for the memory plan: what a block is called with, and the text tokens it sees."""
from __future__ import annotations

import torch

TEXT_TOKENS = {"Flux2Transformer2DModel": lambda dit: 512}  # the prompt is padded to 512 tokens (DiffSynth)


def _block(block, batch: int, image_tokens: int, txt_tokens: int, rand, index: int = 0) -> dict:
    single = type(block).__name__ == "Flux2SingleTransformerBlock"
    dim = block.attn.to_qkv_mlp_proj.in_features if single else block.attn.to_q.in_features
    hd = dim // block.attn.heads
    n = image_tokens + txt_tokens
    rope = (rand(n, hd, dt=torch.float32), rand(n, hd, dt=torch.float32))
    if single:
        return {"hidden_states": rand(batch, n, dim), "encoder_hidden_states": None, "temb_mod": rand(batch, 3 * dim),
                "image_rotary_emb": rope}
    return {"hidden_states": rand(batch, image_tokens, dim), "encoder_hidden_states": rand(batch, txt_tokens, dim),
            "temb_mod_img": rand(batch, 6 * dim), "temb_mod_txt": rand(batch, 6 * dim), "image_rotary_emb": rope}


BLOCK_INPUTS = {"Flux2TransformerBlock": _block, "Flux2SingleTransformerBlock": _block}
