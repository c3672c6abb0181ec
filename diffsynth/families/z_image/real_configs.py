"""Z-Image's real architectures, as data (schema: diffsynth/models/real_configs.py), and where their weights live."""
from __future__ import annotations

# Tongyi-MAI/Z-Image-Turbo:transformer/config.json (Z-Image and Z-Image-Omni-Base share it; Omni adds SigLIP input)
DIT = {"all_patch_size": [2], "all_f_patch_size": [1], "in_channels": 16, "dim": 3840, "n_layers": 30,
       "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "norm_eps": 1e-5, "qk_norm": True,
       "cap_feat_dim": 2560, "rope_theta": 256.0, "t_scale": 1000.0, "axes_dims": [32, 48, 48],
       "axes_lens": [1536, 512, 512]}

# Qwen3-4B (DiffSynth's ZImageTextEncoder "4B" config)
QWEN3_4B = {"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728,
            "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
            "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000, "hidden_act": "silu",
            "attention_bias": False, "tie_word_embeddings": True, "bos_token_id": 151643, "eos_token_id": 151645}

# the FLUX.1 VAE architecture (AutoencoderKL, 16 latent channels, shift/scale normalisation)
VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
       "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
       "layers_per_block": 2, "act_fn": "silu", "latent_channels": 16, "norm_num_groups": 32,
       "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
       "use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": True}

# DiffSynth's Siglip2ImageEncoder428M (Z-Image-Omni-Base:siglip/model.safetensors)
SIGLIP2 = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
           "num_channels": 3, "num_patches": 256, "patch_size": 16, "hidden_act": "gelu_pytorch_tanh",
           "layer_norm_eps": 1e-6}

# PAI/Z-Image-Turbo-Fun-Controlnet-Union-2.1's three files (Union, Union-8steps, Tile-8steps: one architecture), as
# DiffSynth's ZImageControlNet builds it (control blocks beside DiT layers 0, 2, ..., 28; two control refiner blocks)
CONTROLNET = {"control_layers_places": list(range(0, 30, 2)), "control_refiner_layers_places": [0, 1],
              "control_in_dim": 33, "add_control_noise_refiner": "control_noise_refiner", "all_patch_size": [2],
              "all_f_patch_size": [1], "dim": 3840, "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30,
              "norm_eps": 1e-5, "qk_norm": True}
CONTROLNET_REPO = "PAI/Z-Image-Turbo-Fun-Controlnet-Union-2.1"

REAL_MODELS: dict[str, dict] = {
    "z-image-dit": {
        "cls": "diffusers.ZImageTransformer2DModel", "family": "z_image", "component": "dit",
        "files": "Tongyi-MAI/Z-Image-Turbo:transformer/diffusion_pytorch_model*.safetensors", "config": dict(DIT)},
    "z-image-omni-base-dit": {
        "cls": "diffusers.ZImageTransformer2DModel", "family": "z_image", "component": "dit",
        "files": "Tongyi-MAI/Z-Image-Omni-Base:transformer/diffusion_pytorch_model*.safetensors",
        "config": {**DIT, "siglip_feat_dim": 1152}},
    "z-image-text-encoder": {
        "cls": "transformers.Qwen3Model", "family": "z_image", "component": "text_encoder",
        "files": "Tongyi-MAI/Z-Image-Turbo:text_encoder/model*.safetensors", "config": QWEN3_4B},
    "z-image-vae": {
        "cls": "diffusers.AutoencoderKL", "family": "z_image", "component": "vae",
        "files": "Tongyi-MAI/Z-Image-Turbo:vae/diffusion_pytorch_model.safetensors", "config": dict(VAE)},
    "z-image-siglip2": {
        "cls": "transformers.Siglip2VisionModel", "family": "z_image", "component": "image_encoder",
        "files": "Tongyi-MAI/Z-Image-Omni-Base:siglip/model.safetensors", "config": SIGLIP2},
    "z-image-turbo-fun-controlnet-2.1": {
        "cls": "diffusers.ZImageControlNetModel", "family": "z_image", "component": "controlnet",
        "files": f"{CONTROLNET_REPO}:Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors", "config": CONTROLNET},
}

# Where each architecture's weights live (models/real_configs.py WEIGHT_FILES); shard counts are not checked
WEIGHT_FILES: dict[str, tuple[str, ...]] = {
    "z-image-dit": ("Tongyi-MAI/Z-Image-Turbo:transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
                    "Tongyi-MAI/Z-Image:transformer/diffusion_pytorch_model-00001-of-00002.safetensors"),
    "z-image-omni-base-dit": (
        "Tongyi-MAI/Z-Image-Omni-Base:transformer/diffusion_pytorch_model-00001-of-00002.safetensors",),
    "z-image-text-encoder": ("Tongyi-MAI/Z-Image-Turbo:text_encoder/model-00001-of-00003.safetensors",),
    "z-image-vae": ("Tongyi-MAI/Z-Image-Turbo:vae/diffusion_pytorch_model.safetensors",),
    "z-image-siglip2": ("Tongyi-MAI/Z-Image-Omni-Base:siglip/model.safetensors",),
    "z-image-turbo-fun-controlnet-2.1": tuple(
        f"{CONTROLNET_REPO}:Z-Image-Turbo-Fun-Controlnet-{name}.safetensors"
        for name in ("Union-2.1", "Union-2.1-8steps", "Tile-2.1-8steps")),
}
