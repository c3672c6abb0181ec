"""Wan's DiT blocks for the memory plan: what a block is called with, and the text tokens it sees."""
from __future__ import annotations

import torch

from ...models.block_shapes import linear_in

CLIP_IMAGE_TOKENS = 257  # Wan2.1 image-to-video: CLIP ViT-H tokens appended to the text context


def _text_tokens(dit) -> int:
    """UMT5 context padded to 512, plus the CLIP image context of Wan2.1 I2V / Fun (257 tokens), or of FLF2V's two
    images (its image embedder's positions: 514)."""
    config = getattr(dit, "config", None)
    if not getattr(config, "image_dim", None):
        return 512
    return 512 + (getattr(config, "pos_embed_seq_len", None) or CLIP_IMAGE_TOKENS)


# the Wan-Fun DiT (fun_dit.py) is diffusers' with a reference convolution / camera adapter: the same context
TEXT_TOKENS = {"WanTransformer3DModel": _text_tokens, "WanFunTransformer3DModel": _text_tokens}


def _block(block, batch: int, image_tokens: int, txt_tokens: int, rand, index: int = 0) -> dict:
    dim = block.norm2.normalized_shape[0] if hasattr(block.norm2, "normalized_shape") else linear_in(block.ffn)
    hd = dim // block.attn1.heads
    return {"hidden_states": rand(batch, image_tokens, dim), "encoder_hidden_states": rand(batch, txt_tokens, dim),
            "temb": rand(batch, 6, dim),
            "rotary_emb": (rand(1, image_tokens, 1, hd, dt=torch.float32), rand(1, image_tokens, 1, hd, dt=torch.float32))}


def _vace_block(block, batch: int, image_tokens: int, txt_tokens: int, rand, index: int = 0) -> dict:
    """A VACE block (vace_model.py): its stream ``c`` beside the DiT's patch tokens ``x``, on the video tokens."""
    dim = block.norm3.normalized_shape[0]
    hd = dim // block.self_attn.heads
    return {"c": rand(batch, image_tokens, dim), "x": rand(batch, image_tokens, dim),
            "context": rand(batch, txt_tokens, dim), "temb": rand(batch, 6, dim),
            "rotary": (rand(1, image_tokens, 1, hd, dt=torch.float32), rand(1, image_tokens, 1, hd, dt=torch.float32))}


def _face_block(block, batch: int, image_tokens: int, txt_tokens: int, rand, index: int = 0) -> dict:
    """Wan2.2-Animate's face block (animate_model.py): the DiT's video tokens attend to the face tokens (heads + 1
    per latent frame; one frame here, as the bytes do not depend on the split)."""
    dim = block.linear2.in_features
    return {"x": rand(batch, image_tokens, dim), "motion": rand(batch, 1, block.heads + 1, dim)}


BLOCK_INPUTS = {"WanTransformerBlock": _block, "VaceBlock": _vace_block, "FaceBlock": _face_block}
# DiffSynth's model_fn_wan_video runs the Animate face blocks between the checkpointed DiT blocks, unchecked
UNCHECKED = ("FaceBlock",)
