"""FLUX.1's checkpoint files: how each kind is recognised (BFL's original names or diffusers'), its architecture
inferred and its keys converted (``convert.py``)."""
from __future__ import annotations

from ...models.components import (ComponentKind, beside_or, clip_text_config, diffusers_class, is_4d, is_umt5,
                                  t5_config, transformers_class)
from . import convert

FAMILY = "flux"


def _strip_bfl_prefix(shapes: dict) -> dict:
    return {k.replace("model.diffusion_model.", ""): v for k, v in shapes.items()}


KINDS = (
    ComponentKind("flux_dit_bfl", FAMILY, "dit", "bfl",
                  (r"^(model\.diffusion_model\.)?double_blocks\.\d+\.", r"^(model\.diffusion_model\.)?single_blocks\.\d+\."),
                  lambda s, b: convert.flux_dit_config(_strip_bfl_prefix(s)),
                  diffusers_class("FluxTransformer2DModel"), lambda sd, c: convert.bfl_dit_to_diffusers(sd)),
    ComponentKind("flux_dit", FAMILY, "dit", "diffusers",
                  (r"^single_transformer_blocks\.\d+\.", r"^transformer_blocks\.\d+\.norm1_context\.", r"^x_embedder\.",
                   r"^time_text_embed\."),
                  beside_or(convert.flux_dit_config), diffusers_class("FluxTransformer2DModel")),
    ComponentKind("flux_vae_bfl", FAMILY, "vae", "bfl",
                  (r"^(en|de)coder\.(down|up)\.\d+\.block\.", r"^(en|de)coder\.mid\.(attn_1|block_\d)\."),
                  lambda s, b: convert.flux_vae_config(s, bfl=True), diffusers_class("AutoencoderKL"),
                  lambda sd, c: convert.bfl_vae_to_diffusers(sd), accepts=is_4d("encoder.conv_in.weight")),
    ComponentKind("flux_vae", FAMILY, "vae", "diffusers",
                  (r"^(en|de)coder\.(down|up)_blocks\.\d+\.resnets\.\d+\.norm1\.weight", r"^(en|de)coder\.conv_norm_out\.",
                   r"^(en|de)coder\.mid_block\.attentions\.0\.group_norm\."),
                  beside_or(lambda s: convert.flux_vae_config(s, bfl=False)), diffusers_class("AutoencoderKL"),
                  accepts=is_4d("encoder.conv_in.weight")),
    ComponentKind("clip_text", FAMILY, "text_encoder", "transformers", (r"^text_model\.",),
                  beside_or(clip_text_config), transformers_class("CLIPTextModel", "CLIPTextConfig"),
                  lambda sd, c: {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in sd.items()}),
    ComponentKind("t5_encoder", FAMILY, "text_encoder_2", "transformers",
                  (r"^encoder\.block\.\d+\.layer\.\d+\.", r"^shared\.weight$"),
                  beside_or(t5_config), transformers_class("T5EncoderModel", "T5Config"),
                  accepts=lambda s, b: not is_umt5(s)),
)
