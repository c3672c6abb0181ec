"""Qwen-Image's real architectures, as data (schema: diffsynth/models/real_configs.py), and where their weights live."""
from __future__ import annotations

# The Qwen-Image VAE has the Wan 2.1 video VAE's architecture (diffusers' AutoencoderKLQwenImage).
VAE = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
       "temperal_downsample": [False, True, True]}

QWEN25_VL_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
    "hidden_size": 3584, "vocab_size": 152064, "tie_word_embeddings": False,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
    "image_token_id": 151655, "video_token_id": 151656,
    "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                    "max_position_embeddings": 128000, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                    "rope_scaling": {"type": "mrope", "rope_type": "default", "mrope_section": [16, 24, 24]},
                    "tie_word_embeddings": False, "bos_token_id": 151643, "eos_token_id": 151645},
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                      "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                      "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "in_chans": 3},
}


REAL_MODELS: dict[str, dict] = {
    "qwen-image-dit": {
        "cls": "diffusers.QwenImageTransformer2DModel", "family": "qwen_image", "component": "dit",
        "files": "Qwen/Qwen-Image:transformer/diffusion_pytorch_model*.safetensors",
        "config": {"patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60,
                   "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 3584,
                   "guidance_embeds": False, "axes_dims_rope": [16, 56, 56]}},
    "qwen-image-vae": {
        "cls": "diffusers.AutoencoderKLQwenImage", "family": "qwen_image", "component": "vae",
        "files": "Qwen/Qwen-Image:vae/diffusion_pytorch_model.safetensors", "config": dict(VAE)},
    "qwen-image-text-encoder": {
        "cls": "transformers.Qwen2_5_VLForConditionalGeneration", "family": "qwen_image",
        "component": "text_encoder", "files": "Qwen/Qwen-Image:text_encoder/model*.safetensors",
        "config": QWEN25_VL_7B},
}

# Where each architecture's weights live (models/real_configs.py WEIGHT_FILES)
WEIGHT_FILES: dict[str, tuple[str, ...]] = {
    # the Edit releases have Qwen-Image's DiT architecture (the shard count is not checked, only the name pattern)
    "qwen-image-dit": ("Qwen/Qwen-Image:transformer/diffusion_pytorch_model-00001-of-00009.safetensors",
                       "Qwen/Qwen-Image-Edit:transformer/diffusion_pytorch_model-00001-of-00009.safetensors",
                       "Qwen/Qwen-Image-Edit-2509:transformer/diffusion_pytorch_model-00001-of-00005.safetensors",
                       "Qwen/Qwen-Image-Edit-2511:transformer/diffusion_pytorch_model-00001-of-00005.safetensors",
                       "Qwen/Qwen-Image-2512:transformer/diffusion_pytorch_model-00001-of-00009.safetensors"),
    "qwen-image-vae": ("Qwen/Qwen-Image:vae/diffusion_pytorch_model.safetensors",
                       "Qwen/Qwen-Image-Edit:vae/diffusion_pytorch_model.safetensors",
                       "Qwen/Qwen-Image-Edit-2509:vae/diffusion_pytorch_model.safetensors"),
    "qwen-image-text-encoder": ("Qwen/Qwen-Image:text_encoder/model-00001-of-00004.safetensors",
                                "Qwen/Qwen-Image-Edit:text_encoder/model-00001-of-00004.safetensors",
                                "Qwen/Qwen-Image-Edit-2509:text_encoder/model-00001-of-00004.safetensors"),
}
