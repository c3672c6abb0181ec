"""Z-Image's checkpoint files: how each kind is recognised, its architecture inferred and its keys converted.

The DiT is diffusers' ZImageTransformer2DModel (the released ``transformer/`` names, which are also DiffSynth's
ZImageDiT names) or the original single-file names (``attention.qkv``, optionally under ``model.diffusion_model.``,
as ComfyUI's files are); the VAE is a FLUX-style AutoencoderKL; the text encoder is Qwen3-4B (a Qwen3ForCausalLM
checkpoint, loaded as Qwen3Model as DiffSynth's ZImageTextEncoder does); Z-Image-Omni-Base adds a SigLIP2 vision
tower (``siglip/``) for its edit images; PAI's Z-Image-Turbo Fun-ControlNet 2.x files (Union, Union-8steps, Tile) are
diffusers' ZImageControlNetModel under its own names (diffusers' single-file converter keeps them as they are).
"""
from __future__ import annotations

from ...models.components import ComponentKind, beside_or, diffusers_class, is_4d, transformers_class
from . import convert

FAMILY = "z_image"


def _original_dit_config(shapes: dict, beside: dict | None) -> dict:
    return convert.dit_config(_dit_shapes(shapes))


def shapes_as_tensors(shapes: dict) -> dict:
    """Shapes as meta tensors, so the state-dict converter (which splits the fused qkv) also converts shapes."""
    import torch
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


def _dit_shapes(shapes: dict) -> dict:
    return {k: tuple(v.shape) for k, v in convert.original_to_diffusers(shapes_as_tensors(shapes)).items()}


def _text_encoder_config(shapes: dict, beside: dict | None) -> dict:
    config = dict(beside) if beside is not None else convert.text_encoder_config(shapes)
    return {k: v for k, v in config.items() if k not in ("architectures", "torch_dtype", "dtype", "transformers_version")}


def _siglip_config(shapes: dict, beside: dict | None) -> dict:
    if beside is not None:
        return {k: v for k, v in beside.get("vision_config", beside).items() if k != "transformers_version"}
    shapes = _siglip_keys(shapes)
    hidden, patch_in = shapes["embeddings.patch_embedding.weight"]
    layers = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("encoder.layers."))
    return {"hidden_size": hidden, "intermediate_size": shapes["encoder.layers.0.mlp.fc1.weight"][0],
            "num_hidden_layers": layers, "num_attention_heads": max(1, hidden // 72), "num_channels": 3,
            "patch_size": int(round((patch_in / 3) ** 0.5)),
            "num_patches": shapes["embeddings.position_embedding.weight"][0],
            "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}


def _siglip_keys(sd: dict) -> dict:
    """SigLIP2 files name the tower ``vision_model.*`` or (transformers 5's Siglip2VisionModel) without it."""
    return {k[len("vision_model."):] if k.startswith("vision_model.") else k: v for k, v in sd.items()}


def controlnet_config(shapes: dict, beside: dict | None) -> dict:
    """PAI's Fun-ControlNet 2.x layout, as DiffSynth's ZImageControlNet builds it: control blocks beside every
    second DiT layer (0, 2, 4, ...: its ``control_layers_mapping``), one control refiner block per noise refiner
    layer (each with ``before_proj``: diffusers' ``add_control_noise_refiner="control_noise_refiner"``), control
    latents + inpaint mask + inpaint latents (33 channels) in 2x2 patches."""
    from ...errors import ConfigError
    if beside is not None:
        return beside
    count = lambda prefix: len({k.split(".")[1] for k in shapes if k.startswith(prefix)})  # noqa: E731
    layers, refiners = count("control_layers."), count("control_noise_refiner.")
    if not refiners or "control_noise_refiner.0.before_proj.weight" not in shapes:
        raise ConfigError("This Z-Image ControlNet file has no control refiner blocks with before_proj: it is the "
                          "Fun-ControlNet 1.0 layout, which DiffSynth's ZImageControlNet does not load; use PAI's "
                          "Z-Image-Turbo-Fun-Controlnet-Union-2.1 files")
    dim, patch_in = shapes["control_all_x_embedder.2-1.weight"]
    head_dim = shapes["control_layers.0.attention.norm_q.weight"][0]
    return {"control_layers_places": [2 * i for i in range(layers)],
            "control_refiner_layers_places": list(range(refiners)), "control_in_dim": patch_in // 4,
            "add_control_noise_refiner": "control_noise_refiner", "all_patch_size": [2], "all_f_patch_size": [1],
            "dim": dim, "n_refiner_layers": refiners, "n_heads": dim // head_dim, "n_kv_heads": dim // head_dim,
            "norm_eps": 1e-5, "qk_norm": True}


CONTROLNET_KIND = ComponentKind(
    "z_image_controlnet", FAMILY, "controlnet", "diffusers",
    (r"^control_all_x_embedder\.", r"^control_layers\.\d+\.after_proj\."),
    controlnet_config, diffusers_class("ZImageControlNetModel"))

KINDS = (
    ComponentKind("z_image_dit", FAMILY, "dit", "diffusers",
                  (r"^noise_refiner\.\d+\.attention\.to_q\.", r"^context_refiner\.\d+\.attention\.to_q\.",
                   r"^all_x_embedder\."),
                  beside_or(convert.dit_config), diffusers_class("ZImageTransformer2DModel")),
    ComponentKind("z_image_dit_original", FAMILY, "dit", "original",
                  (r"^(model\.diffusion_model\.)?noise_refiner\.\d+\.attention\.qkv\.",
                   r"^(model\.diffusion_model\.)?layers\.\d+\.attention\.qkv\."),
                  _original_dit_config, diffusers_class("ZImageTransformer2DModel"),
                  lambda sd, c: convert.original_to_diffusers(sd)),
    ComponentKind("z_image_text_encoder", FAMILY, "text_encoder", "transformers",
                  (r"^(model\.)?layers\.\d+\.self_attn\.q_norm\.",),
                  _text_encoder_config, transformers_class("Qwen3Model", "Qwen3Config"),
                  lambda sd, c: convert.text_encoder_to_model(sd)),
    ComponentKind("z_image_vae", FAMILY, "vae", "diffusers",
                  (r"^(en|de)coder\.(down|up)_blocks\.\d+\.resnets\.\d+\.norm1\.weight", r"^(en|de)coder\.conv_norm_out\.",
                   r"^(en|de)coder\.mid_block\.attentions\.0\.group_norm\."),
                  beside_or(convert.vae_config), diffusers_class("AutoencoderKL"),
                  accepts=is_4d("encoder.conv_in.weight")),
    # Z-Image-Omni-Base's siglip/: it embeds edit images only (no training recipe uses them: loaded, unused)
    ComponentKind("z_image_siglip", FAMILY, "image_encoder", "transformers",
                  (r"^(vision_model\.)?encoder\.layers\.\d+\.layer_norm1\.", r"^(vision_model\.)?embeddings\.patch_embedding\."),
                  _siglip_config, transformers_class("Siglip2VisionModel", "Siglip2VisionConfig"),
                  lambda sd, c: _siglip_keys(sd)),
    CONTROLNET_KIND,
)
