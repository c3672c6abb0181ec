"""FLUX.1's real architectures, as data (schema: diffsynth/models/real_configs.py), and where their weights live."""
from __future__ import annotations

from ...models.real_configs import t5_xxl

REAL_MODELS: dict[str, dict] = {
    "flux.1-dev-dit": {
        "cls": "diffusers.FluxTransformer2DModel", "family": "flux", "component": "dit",
        "files": "black-forest-labs/FLUX.1-dev:flux1-dev.safetensors (BFL names) or transformer/ (diffusers)",
        "config": {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
                   "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
                   "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]}},
    "flux.1-dev-vae": {
        "cls": "diffusers.AutoencoderKL", "family": "flux", "component": "vae",
        "files": "black-forest-labs/FLUX.1-dev:ae.safetensors (BFL names) or vae/ (diffusers)",
        "config": {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
                   "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
                   "layers_per_block": 2, "act_fn": "silu", "latent_channels": 16, "norm_num_groups": 32,
                   "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
                   "use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": True}},
    "flux.1-dev-clip": {
        "cls": "transformers.CLIPTextModel", "family": "flux", "component": "text_encoder",
        "files": "black-forest-labs/FLUX.1-dev:text_encoder/model.safetensors",
        "config": {"model_type": "clip_text_model", "vocab_size": 49408, "hidden_size": 768,
                   "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768,
                   "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}},
    "flux.1-dev-t5": {
        "cls": "transformers.T5EncoderModel", "family": "flux", "component": "text_encoder_2",
        "files": "black-forest-labs/FLUX.1-dev:text_encoder_2/model-0000?-of-00002.safetensors",
        "config": t5_xxl("t5", 32128)},
}

# Where each architecture's weights live (models/real_configs.py WEIGHT_FILES)
WEIGHT_FILES: dict[str, tuple[str, ...]] = {
    # Kontext and Krea have FLUX.1-dev's DiT architecture
    "flux.1-dev-dit": ("black-forest-labs/FLUX.1-dev:flux1-dev.safetensors",
                       "black-forest-labs/FLUX.1-dev:transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
                       "black-forest-labs/FLUX.1-Kontext-dev:flux1-kontext-dev.safetensors",
                       "black-forest-labs/FLUX.1-Krea-dev:flux1-krea-dev.safetensors"),
    "flux.1-dev-vae": ("black-forest-labs/FLUX.1-dev:ae.safetensors",
                       "black-forest-labs/FLUX.1-dev:vae/diffusion_pytorch_model.safetensors"),
    "flux.1-dev-clip": ("black-forest-labs/FLUX.1-dev:text_encoder/model.safetensors",),
    "flux.1-dev-t5": ("black-forest-labs/FLUX.1-dev:text_encoder_2/model-00001-of-00002.safetensors",),
}
