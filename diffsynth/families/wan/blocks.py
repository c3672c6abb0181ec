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
TEXT_TOKENS = {"WanTransformer3DModel": _text_tokens, "WanFunTransformer3DModel": _text_tokens, "WanAnimate2DiT": _text_tokens}


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


def _incontext_block(block, batch: int, image_tokens: int, txt_tokens: int, rand, index: int = 0) -> dict:
    """Wan2.2-Animate-2's block (animate2_model.py): the generation stream and the reference stream (as many tokens:
    the reference video has the target's frames), the text context and the CLIP tokens split as the DiT splits them,
    and the generation stream's mask over [generation | reference] keys."""
    inner = block.block
    dim, heads = inner.norm2.normalized_shape[0], inner.self_attn.num_heads
    image = CLIP_IMAGE_TOKENS if hasattr(inner.cross_attn, "k_img") else 0
    text = txt_tokens - image

    def rope():
        return rand(image_tokens, 1, dim // heads // 2, dt=torch.complex128)
    x = rand(batch, image_tokens, dim)
    return {"x": x, "x_ref": rand(batch, image_tokens, dim), "e": rand(batch, 6, dim), "e_ref": rand(batch, 6, dim),
            "context": rand(batch, text, dim), "context_img": rand(batch, image, dim) if image else None,
            "context_ref": rand(batch, text, dim), "context_ref_img": rand(batch, image, dim) if image else None,
            "rope": rope(), "rope_ref": rope(),
            "mask": torch.ones(image_tokens, 2 * image_tokens, dtype=torch.bool, device=x.device)}


BLOCK_INPUTS = {"WanTransformerBlock": _block, "VaceBlock": _vace_block, "FaceBlock": _face_block,
                "IncontextBlock": _incontext_block}
# DiffSynth's model_fn_wan_video runs the Animate face blocks between the checkpointed DiT blocks, unchecked
UNCHECKED = ("FaceBlock",)
