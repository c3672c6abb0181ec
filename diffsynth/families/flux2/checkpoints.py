"""FLUX.2's checkpoint files: how each kind is recognised, its architecture inferred and its keys named.

The DiT (``transformer/``) and VAE (``vae/``) ship in diffusers names, which DiffSynth-Studio's own Flux2DiT and
Flux2VAE use unchanged. The text encoder is Mistral-Small-3.x (FLUX.2-dev, ``text_encoder/`` in the older
``language_model.model.*`` layout transformers 5 renames) or Qwen3 (klein, a ``Qwen3ForCausalLM`` checkpoint of
which only the ``Qwen3Model`` is loaded: DiffSynth drops ``lm_head`` too).
"""
from __future__ import annotations

import re

from ...models.components import ComponentKind, DetectionError, beside_or, diffusers_class, is_4d, transformers_class
from .real_configs import MISTRAL_SMALL, QWEN3_4B, QWEN3_8B

FAMILY = "flux2"


def _count(shapes: dict, pattern: str) -> int:
    found = [int(m.group(1)) for k in shapes if (m := re.match(pattern, k))]
    return 1 + max(found) if found else 0


def dit_config(shapes: dict) -> dict:
    inner, in_channels = shapes["x_embedder.weight"]
    head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0] if "transformer_blocks.0.attn.norm_q.weight" in \
        shapes else shapes["single_transformer_blocks.0.attn.norm_q.weight"][0]
    ffn = shapes["transformer_blocks.0.ff.linear_in.weight"][0] if "transformer_blocks.0.ff.linear_in.weight" in \
        shapes else None
    return {"patch_size": 1, "in_channels": in_channels, "out_channels": None,
            "num_layers": _count(shapes, r"transformer_blocks\.(\d+)\."),
            "num_single_layers": _count(shapes, r"single_transformer_blocks\.(\d+)\."),
            "attention_head_dim": head_dim, "num_attention_heads": inner // head_dim,
            "joint_attention_dim": shapes["context_embedder.weight"][1],
            "timestep_guidance_channels": shapes["time_guidance_embed.timestep_embedder.linear_1.weight"][1],
            "mlp_ratio": ffn / 2 / inner if ffn else 3.0,
            "axes_dims_rope": [head_dim // 4] * 4, "rope_theta": 2000, "eps": 1e-6,
            "guidance_embeds": "time_guidance_embed.guidance_embedder.linear_1.weight" in shapes}


def vae_config(shapes: dict) -> dict:
    n = _count(shapes, r"encoder\.down_blocks\.(\d+)\.")
    channels = [shapes[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"][0] for i in range(n)]
    up = _count(shapes, r"decoder\.up_blocks\.(\d+)\.")
    decoder = [shapes[f"decoder.up_blocks.{i}.resnets.0.conv2.weight"][0] for i in range(up)][::-1]
    return {"in_channels": shapes["encoder.conv_in.weight"][1], "out_channels": shapes["decoder.conv_out.weight"][0],
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * up,
            "block_out_channels": channels, "decoder_block_out_channels": None if decoder == channels else decoder,
            "layers_per_block": _count(shapes, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."), "act_fn": "silu",
            "latent_channels": shapes["decoder.conv_in.weight"][1], "norm_num_groups": 32,
            "use_quant_conv": "quant_conv.weight" in shapes, "use_post_quant_conv": "post_quant_conv.weight" in shapes,
            "mid_block_add_attention": "encoder.mid_block.attentions.0.to_q.weight" in shapes,
            "batch_norm_eps": 1e-4, "batch_norm_momentum": 0.1, "patch_size": [2, 2]}


# ------------------------------------------------------------------ Mistral-Small-3.x (FLUX.2-dev's text encoder)
_MISTRAL_RENAMES = (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
                    ("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector."))


def mistral_checkpoint_to_model(sd: dict) -> dict:
    """The repository's names (``language_model.model.*``, ``vision_tower.*``) -> transformers 5's; names
    already in the model's layout pass unchanged."""
    out = {}
    for k, v in sd.items():
        if not k.startswith(("model.", "lm_head.")):
            for old, new in _MISTRAL_RENAMES:
                if k.startswith(old):
                    k = new + k[len(old):]
                    break
        out[k] = v
    return out


def mistral_model_to_checkpoint(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        for old, new in _MISTRAL_RENAMES:
            if k.startswith(new):
                k = old + k[len(new):]
                break
        out[k] = v
    return out


def mistral_config(shapes: dict, beside: dict | None) -> dict:
    if beside is not None:
        return beside
    emb = shapes.get("language_model.model.embed_tokens.weight") or shapes.get("model.language_model.embed_tokens.weight")
    if tuple(emb or ()) == (131072, 5120):
        return MISTRAL_SMALL
    raise DetectionError("A Mistral3 text encoder other than FLUX.2-dev's (Mistral-Small-3.x, 24B) needs its "
                         "config.json beside it (text_encoder/config.json of the repository)")


# ------------------------------------------------------------------------------- Qwen3 (klein's text encoder)
def qwen3_checkpoint_to_model(sd: dict) -> dict:
    """A ``Qwen3ForCausalLM`` checkpoint -> ``Qwen3Model`` names (``lm_head`` dropped, as DiffSynth does)."""
    return {k[len("model."):] if k.startswith("model.") else k: v for k, v in sd.items() if not k.startswith("lm_head.")}


def qwen3_config(shapes: dict, beside: dict | None) -> dict:
    if beside is not None:
        return beside
    emb = tuple(shapes.get("model.embed_tokens.weight") or shapes.get("embed_tokens.weight") or ())
    known = {(151936, 2560): QWEN3_4B, (151936, 4096): QWEN3_8B}
    if emb in known:
        return known[emb]
    raise DetectionError("A Qwen3 text encoder other than Qwen3-4B / Qwen3-8B (FLUX.2-klein 4B / 9B) needs its "
                         "config.json beside it (text_encoder/config.json of the repository)")


KINDS = (
    ComponentKind("flux2_dit", FAMILY, "dit", "diffusers",
                  (r"^single_transformer_blocks\.\d+\.attn\.to_qkv_mlp_proj\.", r"^double_stream_modulation_img\.",
                   r"^time_guidance_embed\."),
                  beside_or(dit_config), diffusers_class("Flux2Transformer2DModel")),
    ComponentKind("flux2_vae", FAMILY, "vae", "diffusers", (r"^bn\.running_(mean|var)$",),
                  beside_or(vae_config), diffusers_class("AutoencoderKLFlux2"), accepts=is_4d("encoder.conv_in.weight")),
    ComponentKind("flux2_mistral", FAMILY, "text_encoder", "transformers",
                  (r"^language_model\.model\.layers\.", r"^model\.language_model\.layers\.", r"^vision_tower\.",
                   r"^model\.vision_tower\.", r"^(model\.)?multi_modal_projector\."),
                  mistral_config, transformers_class("Mistral3ForConditionalGeneration", "Mistral3Config"),
                  lambda sd, c: mistral_checkpoint_to_model(sd)),
    ComponentKind("flux2_qwen3", FAMILY, "text_encoder_qwen3", "transformers",
                  (r"^(model\.)?layers\.\d+\.self_attn\.q_norm\.",),
                  qwen3_config, transformers_class("Qwen3Model", "Qwen3Config"),
                  lambda sd, c: qwen3_checkpoint_to_model(sd)),
)
