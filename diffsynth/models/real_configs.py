"""The real architectures of every supported checkpoint, as data.

Each entry names the diffusers/transformers class, its real config (as published next to the weights, or as
the original code hard-codes it when the weights ship without a config.json) and where the weights live.
Tests build these on the meta device (no memory, no download) to check detection and key matching against
the full-size key lists; the loader uses the Wan2.2 VAE statistics, which its `.pth`/`.safetensors` lacks.
"""
from __future__ import annotations

# Wan2.2 VAE latent statistics (hard-coded in Wan2.2's vae2_2.py; the checkpoint file has no config).
WAN22_VAE_LATENTS_MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667]
WAN22_VAE_LATENTS_STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744]

WAN21_VAE = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
             "temperal_downsample": [False, True, True]}
WAN22_VAE = {"base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
             "attn_scales": [], "temperal_downsample": [False, True, True], "is_residual": True,
             "in_channels": 12, "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 16,
             "scale_factor_temporal": 4, "latents_mean": WAN22_VAE_LATENTS_MEAN, "latents_std": WAN22_VAE_LATENTS_STD}


def _wan_dit(heads, ffn, layers, in_ch=16, out_ch=16, image_dim=None, added_kv=None):
    return {"patch_size": [1, 2, 2], "num_attention_heads": heads, "attention_head_dim": 128, "in_channels": in_ch,
            "out_channels": out_ch, "text_dim": 4096, "freq_dim": 256, "ffn_dim": ffn, "num_layers": layers,
            "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": image_dim,
            "added_kv_proj_dim": added_kv, "rope_max_seq_len": 1024}


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

# name -> (class path, config, family, component, where the weights live in the real repositories)
def _t5_xxl(model_type: str, vocab_size: int) -> dict:
    """The XXL encoder of FLUX (T5 v1.1) and Wan (UMT5): same sizes, different vocabulary and type."""
    return {"model_type": model_type, "vocab_size": vocab_size, "d_model": 4096, "d_kv": 64, "d_ff": 10240,
            "num_layers": 24, "num_heads": 64, "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
            "is_gated_act": True, "dense_act_fn": "gelu_new", "tie_word_embeddings": False}


REAL_MODELS: dict[str, dict] = {
    "qwen-image-dit": {
        "cls": "diffusers.QwenImageTransformer2DModel", "family": "qwen_image", "component": "dit",
        "files": "Qwen/Qwen-Image:transformer/diffusion_pytorch_model*.safetensors",
        "config": {"patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60,
                   "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 3584,
                   "guidance_embeds": False, "axes_dims_rope": [16, 56, 56]}},
    "qwen-image-vae": {
        "cls": "diffusers.AutoencoderKLQwenImage", "family": "qwen_image", "component": "vae",
        "files": "Qwen/Qwen-Image:vae/diffusion_pytorch_model.safetensors", "config": dict(WAN21_VAE)},
    "qwen-image-text-encoder": {
        "cls": "transformers.Qwen2_5_VLForConditionalGeneration", "family": "qwen_image",
        "component": "text_encoder", "files": "Qwen/Qwen-Image:text_encoder/model*.safetensors",
        "config": QWEN25_VL_7B},
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
        "config": _t5_xxl("t5", 32128)},
    "wan2.1-t2v-1.3b-dit": {
        "cls": "diffusers.WanTransformer3DModel", "family": "wan", "component": "dit",
        "files": "Wan-AI/Wan2.1-T2V-1.3B:diffusion_pytorch_model*.safetensors", "config": _wan_dit(12, 8960, 30)},
    "wan2.1-t2v-14b-dit": {
        "cls": "diffusers.WanTransformer3DModel", "family": "wan", "component": "dit",
        "files": "Wan-AI/Wan2.1-T2V-14B:diffusion_pytorch_model*.safetensors", "config": _wan_dit(40, 13824, 40)},
    "wan2.1-i2v-14b-dit": {
        "cls": "diffusers.WanTransformer3DModel", "family": "wan", "component": "dit",
        "files": "Wan-AI/Wan2.1-I2V-14B-480P:diffusion_pytorch_model*.safetensors",
        "config": _wan_dit(40, 13824, 40, in_ch=36, image_dim=1280, added_kv=5120)},
    "wan2.2-ti2v-5b-dit": {
        "cls": "diffusers.WanTransformer3DModel", "family": "wan", "component": "dit",
        "files": "Wan-AI/Wan2.2-TI2V-5B:diffusion_pytorch_model*.safetensors",
        "config": _wan_dit(24, 14336, 30, in_ch=48, out_ch=48)},
    "wan2.2-t2v-a14b-dit": {
        "cls": "diffusers.WanTransformer3DModel", "family": "wan", "component": "dit",
        "files": "Wan-AI/Wan2.2-T2V-A14B:high_noise_model/diffusion_pytorch_model*.safetensors",
        "config": _wan_dit(40, 13824, 40)},
    # image-to-video experts: the A14B DiT with the mask + first-frame latents concatenated (36 channels), no CLIP
    "wan2.2-i2v-a14b-dit": {
        "cls": "diffusers.WanTransformer3DModel", "family": "wan", "component": "dit",
        "files": "Wan-AI/Wan2.2-I2V-A14B:high_noise_model/diffusion_pytorch_model*.safetensors",
        "config": _wan_dit(40, 13824, 40, in_ch=36)},
    "wan2.1-vae": {
        "cls": "diffusers.AutoencoderKLWan", "family": "wan", "component": "vae",
        "files": "Wan-AI/Wan2.1-T2V-1.3B:Wan2.1_VAE.pth -> DiffSynth-Studio/Wan-Series-Converted-Safetensors:Wan2.1_VAE.safetensors",
        "config": dict(WAN21_VAE)},
    "wan2.2-vae": {
        "cls": "diffusers.AutoencoderKLWan", "family": "wan", "component": "vae",
        "files": "Wan-AI/Wan2.2-TI2V-5B:Wan2.2_VAE.pth -> DiffSynth-Studio/Wan-Series-Converted-Safetensors:Wan2.2_VAE.safetensors",
        "config": dict(WAN22_VAE)},
    "umt5-xxl": {
        "cls": "transformers.UMT5EncoderModel", "family": "wan", "component": "text_encoder",
        "files": "Wan-AI/Wan2.1-T2V-1.3B:models_t5_umt5-xxl-enc-bf16.pth -> DiffSynth-Studio/Wan-Series-Converted-Safetensors:models_t5_umt5-xxl-enc-bf16.safetensors",
        "config": _t5_xxl("umt5", 256384)},
    "wan2.1-clip": {
        "cls": "transformers.CLIPVisionModelWithProjection", "family": "wan", "component": "image_encoder",
        "files": "Wan-AI/Wan2.1-I2V-14B-480P:models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth -> converted safetensors",
        "config": {"model_type": "clip_vision_model", "hidden_size": 1280, "intermediate_size": 5120,
                   "num_hidden_layers": 32, "num_attention_heads": 16, "patch_size": 14, "image_size": 224,
                   "projection_dim": 1024, "hidden_act": "gelu", "layer_norm_eps": 1e-5}},
}


# Where each architecture's weights live, as data the memory plan matches model entries against: "repository:file"
# with a real file name (the first shard of a sharded set); the repository may be a glob, for files that every
# repository of a series ships (Wan's UMT5, CLIP and VAE). A model entry `model_id:pattern` is this architecture
# when its model id matches the repository and its pattern matches the file.
WEIGHT_FILES: dict[str, tuple[str, ...]] = {
    # the Edit releases have Qwen-Image's DiT architecture (the shard count is not checked, only the name pattern)
    "qwen-image-dit": ("Qwen/Qwen-Image:transformer/diffusion_pytorch_model-00001-of-00009.safetensors",
                       "Qwen/Qwen-Image-Edit:transformer/diffusion_pytorch_model-00001-of-00009.safetensors",
                       "Qwen/Qwen-Image-Edit-2509:transformer/diffusion_pytorch_model-00001-of-00005.safetensors",
                       "Qwen/Qwen-Image-Edit-2511:transformer/diffusion_pytorch_model-00001-of-00005.safetensors"),
    "qwen-image-vae": ("Qwen/Qwen-Image:vae/diffusion_pytorch_model.safetensors",
                       "Qwen/Qwen-Image-Edit:vae/diffusion_pytorch_model.safetensors"),
    "qwen-image-text-encoder": ("Qwen/Qwen-Image:text_encoder/model-00001-of-00004.safetensors",
                                "Qwen/Qwen-Image-Edit:text_encoder/model-00001-of-00004.safetensors"),
    # Kontext and Krea have FLUX.1-dev's DiT architecture
    "flux.1-dev-dit": ("black-forest-labs/FLUX.1-dev:flux1-dev.safetensors",
                       "black-forest-labs/FLUX.1-dev:transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
                       "black-forest-labs/FLUX.1-Kontext-dev:flux1-kontext-dev.safetensors",
                       "black-forest-labs/FLUX.1-Krea-dev:flux1-krea-dev.safetensors"),
    "flux.1-dev-vae": ("black-forest-labs/FLUX.1-dev:ae.safetensors",
                       "black-forest-labs/FLUX.1-dev:vae/diffusion_pytorch_model.safetensors"),
    "flux.1-dev-clip": ("black-forest-labs/FLUX.1-dev:text_encoder/model.safetensors",),
    "flux.1-dev-t5": ("black-forest-labs/FLUX.1-dev:text_encoder_2/model-00001-of-00002.safetensors",),
    "wan2.1-t2v-1.3b-dit": ("Wan-AI/Wan2.1-T2V-1.3B:diffusion_pytorch_model.safetensors",),
    "wan2.1-t2v-14b-dit": ("Wan-AI/Wan2.1-T2V-14B:diffusion_pytorch_model-00001-of-00006.safetensors",),
    "wan2.1-i2v-14b-dit": ("Wan-AI/Wan2.1-I2V-14B-480P:diffusion_pytorch_model-00001-of-00007.safetensors",
                           "Wan-AI/Wan2.1-I2V-14B-720P:diffusion_pytorch_model-00001-of-00007.safetensors"),
    "wan2.2-ti2v-5b-dit": ("Wan-AI/Wan2.2-TI2V-5B:diffusion_pytorch_model-00001-of-00003.safetensors",),
    # the two experts of Wan2.2-T2V-A14B share one architecture
    "wan2.2-t2v-a14b-dit": ("Wan-AI/Wan2.2-T2V-A14B:high_noise_model/diffusion_pytorch_model-00001-of-00006.safetensors",
                            "Wan-AI/Wan2.2-T2V-A14B:low_noise_model/diffusion_pytorch_model-00001-of-00006.safetensors"),
    "wan2.2-i2v-a14b-dit": ("Wan-AI/Wan2.2-I2V-A14B:high_noise_model/diffusion_pytorch_model-00001-of-00006.safetensors",
                            "Wan-AI/Wan2.2-I2V-A14B:low_noise_model/diffusion_pytorch_model-00001-of-00006.safetensors"),
    "wan2.1-vae": ("Wan-AI/*:Wan2.1_VAE.pth", "DiffSynth-Studio/Wan-Series-Converted-Safetensors:Wan2.1_VAE.safetensors"),
    "wan2.2-vae": ("Wan-AI/*:Wan2.2_VAE.pth", "DiffSynth-Studio/Wan-Series-Converted-Safetensors:Wan2.2_VAE.safetensors"),
    "umt5-xxl": ("Wan-AI/*:models_t5_umt5-xxl-enc-bf16.pth",
                 "DiffSynth-Studio/Wan-Series-Converted-Safetensors:models_t5_umt5-xxl-enc-bf16.safetensors"),
    "wan2.1-clip": ("Wan-AI/*:models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
                    "DiffSynth-Studio/Wan-Series-Converted-Safetensors:"
                    "models_clip_open-clip-xlm-roberta-large-vit-huge-14.safetensors"),
}

def build_class(path: str):
    module, name = path.rsplit(".", 1)
    import importlib
    return getattr(importlib.import_module(module), name)


# DiffSynth's `redirect_common_files`: Wan's pickled .pth files are fetched as safetensors from its converted repo.
CONVERTED_REPO = "DiffSynth-Studio/Wan-Series-Converted-Safetensors"
REDIRECTED_FILES = ("models_t5_umt5-xxl-enc-bf16.pth", "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
                    "Wan2.1_VAE.pth", "Wan2.2_VAE.pth")
