"""FLUX.2's real architectures, as data (schema: diffsynth/models/real_configs.py), and where their weights live.

DiT sizes as DiffSynth-Studio 2.1.12 registers them (configs/model_configs.py ``flux2_series``; the klein DiTs as
its ``extra_kwargs``), the text encoders as the repositories' config.json (Mistral-Small-3.x for FLUX.2-dev,
Qwen3-4B / Qwen3-8B for klein 4B / 9B)."""
from __future__ import annotations

DIT_COMMON = {"patch_size": 1, "in_channels": 128, "out_channels": None, "attention_head_dim": 128,
              "timestep_guidance_channels": 256, "mlp_ratio": 3.0, "axes_dims_rope": [32, 32, 32, 32],
              "rope_theta": 2000, "eps": 1e-6}
DEV_DIT = {**DIT_COMMON, "num_layers": 8, "num_single_layers": 48, "num_attention_heads": 48,
           "joint_attention_dim": 15360, "guidance_embeds": True}
KLEIN_4B_DIT = {**DIT_COMMON, "num_layers": 5, "num_single_layers": 20, "num_attention_heads": 24,
                "joint_attention_dim": 7680, "guidance_embeds": False}
KLEIN_9B_DIT = {**DIT_COMMON, "num_layers": 8, "num_single_layers": 24, "num_attention_heads": 32,
                "joint_attention_dim": 12288, "guidance_embeds": False}

VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
       "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
       "layers_per_block": 2, "act_fn": "silu", "latent_channels": 32, "norm_num_groups": 32, "sample_size": 1024,
       "use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True,
       "batch_norm_eps": 1e-4, "batch_norm_momentum": 0.1, "patch_size": [2, 2]}

MISTRAL_SMALL = {
    "architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3", "image_token_index": 10,
    "multimodal_projector_bias": False, "projector_hidden_act": "gelu", "spatial_merge_size": 2,
    "vision_feature_layer": -1,
    "text_config": {"model_type": "mistral", "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120,
                    "intermediate_size": 32768, "max_position_embeddings": 131072, "num_attention_heads": 32,
                    "num_hidden_layers": 40, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
                    "rope_theta": 1000000000.0, "sliding_window": None, "vocab_size": 131072,
                    "tie_word_embeddings": False},
    "vision_config": {"model_type": "pixtral", "head_dim": 64, "hidden_act": "silu", "hidden_size": 1024,
                      "image_size": 1540, "intermediate_size": 4096, "num_attention_heads": 16, "num_channels": 3,
                      "num_hidden_layers": 24, "patch_size": 14, "rope_theta": 10000.0},
}


def qwen3(hidden: int, ffn: int, tie: bool) -> dict:
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False, "head_dim": 128,
            "hidden_act": "silu", "hidden_size": hidden, "intermediate_size": ffn, "max_position_embeddings": 40960,
            "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000, "tie_word_embeddings": tie, "vocab_size": 151936,
            "bos_token_id": 151643, "eos_token_id": 151645}


QWEN3_4B = qwen3(2560, 9728, True)
QWEN3_8B = qwen3(4096, 12288, False)

_DIT = {"cls": "diffusers.Flux2Transformer2DModel", "family": "flux2", "component": "dit"}
REAL_MODELS: dict[str, dict] = {
    "flux.2-dev-dit": {**_DIT, "files": "black-forest-labs/FLUX.2-dev:transformer/*.safetensors", "config": DEV_DIT},
    "flux.2-klein-4b-dit": {**_DIT, "files": "black-forest-labs/FLUX.2-klein-4B:transformer/*.safetensors",
                            "config": KLEIN_4B_DIT},
    "flux.2-klein-9b-dit": {**_DIT, "files": "black-forest-labs/FLUX.2-klein-9B:transformer/*.safetensors",
                            "config": KLEIN_9B_DIT},
    "flux.2-vae": {"cls": "diffusers.AutoencoderKLFlux2", "family": "flux2", "component": "vae",
                   "files": "black-forest-labs/FLUX.2-dev:vae/diffusion_pytorch_model.safetensors", "config": VAE},
    "flux.2-dev-mistral": {"cls": "transformers.Mistral3ForConditionalGeneration", "family": "flux2",
                           "component": "text_encoder", "files": "black-forest-labs/FLUX.2-dev:text_encoder/*.safetensors",
                           "config": MISTRAL_SMALL},
    "flux.2-klein-4b-qwen3": {"cls": "transformers.Qwen3Model", "family": "flux2", "component": "text_encoder_qwen3",
                              "files": "black-forest-labs/FLUX.2-klein-4B:text_encoder/*.safetensors",
                              "config": QWEN3_4B},
    "flux.2-klein-9b-qwen3": {"cls": "transformers.Qwen3Model", "family": "flux2", "component": "text_encoder_qwen3",
                              "files": "black-forest-labs/FLUX.2-klein-9B:text_encoder/*.safetensors",
                              "config": QWEN3_8B},
}

# Where each architecture's weights live (models/real_configs.py WEIGHT_FILES); the klein-base releases have their
# klein sibling's DiT architecture and take the text encoder and VAE from it (DiffSynth's recipes)
WEIGHT_FILES: dict[str, tuple[str, ...]] = {
    "flux.2-dev-dit": ("black-forest-labs/FLUX.2-dev:transformer/diffusion_pytorch_model-00001-of-00007.safetensors",),
    "flux.2-klein-4b-dit": ("black-forest-labs/FLUX.2-klein-4B:transformer/diffusion_pytorch_model.safetensors",
                            "black-forest-labs/FLUX.2-klein-base-4B:transformer/diffusion_pytorch_model.safetensors"),
    "flux.2-klein-9b-dit": ("black-forest-labs/FLUX.2-klein-9B:transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
                            "black-forest-labs/FLUX.2-klein-base-9B:transformer/diffusion_pytorch_model-00001-of-00002.safetensors"),
    "flux.2-vae": ("black-forest-labs/FLUX.2-*:vae/diffusion_pytorch_model.safetensors",),
    "flux.2-dev-mistral": ("black-forest-labs/FLUX.2-dev:text_encoder/model-00001-of-00010.safetensors",),
    "flux.2-klein-4b-qwen3": ("black-forest-labs/FLUX.2-klein-4B:text_encoder/model-00001-of-00002.safetensors",),
    "flux.2-klein-9b-qwen3": ("black-forest-labs/FLUX.2-klein-9B:text_encoder/model-00001-of-00004.safetensors",),
}
