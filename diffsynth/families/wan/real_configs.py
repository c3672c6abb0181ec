"""Wan2.1/2.2's real architectures, as data (schema: diffsynth/models/real_configs.py), where their weights
live, and the files DiffSynth fetches as safetensors from its converted repository."""
from __future__ import annotations

from ...models.real_configs import t5_xxl

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


def _wan_dit(heads, ffn, layers, in_ch=16, out_ch=16, image_dim=None, added_kv=None, pos_embed_seq_len=None):
    # pos_embed_seq_len (FLF2V's two-image positions) is named in every entry, so an I2V DiT is never taken for
    # FLF2V's or the other way round (detection names every entry whose keys agree)
    return {"patch_size": [1, 2, 2], "num_attention_heads": heads, "attention_head_dim": 128, "in_channels": in_ch,
            "out_channels": out_ch, "text_dim": 4096, "freq_dim": 256, "ffn_dim": ffn, "num_layers": layers,
            "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": image_dim,
            "added_kv_proj_dim": added_kv, "rope_max_seq_len": 1024, "pos_embed_seq_len": pos_embed_seq_len}


FUN_DIT = "diffsynth.families.wan.fun_dit.WanFunTransformer3DModel"


def _fun_dit(size: str, in_ch: int, clip: bool = True, ref_conv: bool = False, camera: int | None = None):
    """A Wan-Fun DiT (PAI's releases; DiffSynth's model_configs.py): the 1.3B or 14B Wan DiT on ``in_ch`` channels,
    with CLIP image cross-attention (Wan2.1-Fun) or without (Wan2.2-Fun-A14B), the reference convolution
    (Fun-V1.1 / Wan2.2-Fun Control) and the camera adapter (Control-Camera, 24 Plücker channels)."""
    heads, ffn, layers = (12, 8960, 30) if size == "1.3b" else (40, 13824, 40)
    dim = heads * 128
    return {**_wan_dit(heads, ffn, layers, in_ch=in_ch, image_dim=1280 if clip else None,
                       added_kv=dim if clip else None),
            "has_ref_conv": ref_conv, "control_adapter_in_dim": camera}


def _fun(files: str, config: dict) -> dict:
    return {"cls": FUN_DIT, "family": "wan", "component": "dit", "files": files, "config": config}



REAL_MODELS: dict[str, dict] = {
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
    # (its config names the Fun additions as absent, as Wan2.2-Fun-A14B-Control-Camera is this DiT plus a camera
    # adapter; our Fun class, which builds exactly diffusers' DiT without them, takes those keys)
    "wan2.2-i2v-a14b-dit": {
        "cls": FUN_DIT, "family": "wan", "component": "dit",
        "files": "Wan-AI/Wan2.2-I2V-A14B:high_noise_model/diffusion_pytorch_model*.safetensors",
        "config": {**_wan_dit(40, 13824, 40, in_ch=36), "has_ref_conv": False, "control_adapter_in_dim": None}},
    # first-last-frame: the I2V-14B DiT whose image embedder has positions for two images (2 x 257 tokens)
    "wan2.1-flf2v-14b-dit": {
        "cls": "diffusers.WanTransformer3DModel", "family": "wan", "component": "dit",
        "files": "Wan-AI/Wan2.1-FLF2V-14B-720P:diffusion_pytorch_model*.safetensors",
        "config": _wan_dit(40, 13824, 40, in_ch=36, image_dim=1280, added_kv=5120, pos_embed_seq_len=514)},
    # Wan-Fun (PAI): InP is the I2V architecture (the 14B InP releases are wan2.1-i2v-14b-dit's; Wan2.2-Fun-A14B-InP
    # is wan2.2-i2v-a14b-dit's), Control adds 16 control-latent channels, V1.1 the reference convolution,
    # Control-Camera the camera adapter; Wan2.2-Fun-A14B has no CLIP image encoder
    "wan2.1-fun-1.3b-inp-dit": _fun("PAI/Wan2.1-Fun-1.3B-InP:diffusion_pytorch_model*.safetensors",
                                    _fun_dit("1.3b", 36)),
    "wan2.1-fun-1.3b-control-dit": _fun("PAI/Wan2.1-Fun-1.3B-Control:diffusion_pytorch_model*.safetensors",
                                        _fun_dit("1.3b", 48)),
    "wan2.1-fun-14b-control-dit": _fun("PAI/Wan2.1-Fun-14B-Control:diffusion_pytorch_model*.safetensors",
                                       _fun_dit("14b", 48)),
    "wan2.1-fun-v1.1-1.3b-control-dit": _fun(
        "PAI/Wan2.1-Fun-V1.1-1.3B-Control:diffusion_pytorch_model*.safetensors",
        _fun_dit("1.3b", 48, ref_conv=True)),
    "wan2.1-fun-v1.1-14b-control-dit": _fun(
        "PAI/Wan2.1-Fun-V1.1-14B-Control:diffusion_pytorch_model*.safetensors",
        _fun_dit("14b", 48, ref_conv=True)),
    "wan2.1-fun-v1.1-1.3b-control-camera-dit": _fun(
        "PAI/Wan2.1-Fun-V1.1-1.3B-Control-Camera:diffusion_pytorch_model*.safetensors",
        _fun_dit("1.3b", 32, camera=24)),
    "wan2.1-fun-v1.1-14b-control-camera-dit": _fun(
        "PAI/Wan2.1-Fun-V1.1-14B-Control-Camera:diffusion_pytorch_model*.safetensors",
        _fun_dit("14b", 32, camera=24)),
    "wan2.2-fun-a14b-control-dit": _fun(
        "PAI/Wan2.2-Fun-A14B-Control:high_noise_model/diffusion_pytorch_model*.safetensors",
        _fun_dit("14b", 52, clip=False, ref_conv=True)),
    "wan2.2-fun-a14b-control-camera-dit": _fun(
        "PAI/Wan2.2-Fun-A14B-Control-Camera:high_noise_model/diffusion_pytorch_model*.safetensors",
        _fun_dit("14b", 36, clip=False, camera=24)),
    # speed control: DiffSynth's motion controller (three Linear layers, 256 -> 1536 -> 1536 -> 6 x 1536)
    "wan2.1-speedcontrol-motion-controller": {
        "cls": "diffsynth.families.wan.fun_dit.WanMotionController", "family": "wan",
        "component": "motion_controller", "files": "DiffSynth-Studio/Wan2.1-1.3b-speedcontrol-v1:model.safetensors",
        "config": {"freq_dim": 256, "dim": 1536}},
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
        "config": t5_xxl("umt5", 256384)},
    "wan2.1-clip": {
        "cls": "transformers.CLIPVisionModelWithProjection", "family": "wan", "component": "image_encoder",
        "files": "Wan-AI/Wan2.1-I2V-14B-480P:models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth -> converted safetensors",
        "config": {"model_type": "clip_vision_model", "hidden_size": 1280, "intermediate_size": 5120,
                   "num_hidden_layers": 32, "num_attention_heads": 16, "patch_size": 14, "image_size": 224,
                   "projection_dim": 1024, "hidden_act": "gelu", "layer_norm_eps": 1e-5}},
}

# Where each architecture's weights live (models/real_configs.py WEIGHT_FILES)
WEIGHT_FILES: dict[str, tuple[str, ...]] = {
    "wan2.1-t2v-1.3b-dit": ("Wan-AI/Wan2.1-T2V-1.3B:diffusion_pytorch_model.safetensors",),
    "wan2.1-t2v-14b-dit": ("Wan-AI/Wan2.1-T2V-14B:diffusion_pytorch_model-00001-of-00006.safetensors",
                           # Krea Realtime 14B: Wan2.1-T2V-14B distilled by Self-Forcing, one file
                           "krea/krea-realtime-video:krea-realtime-video-14b.safetensors"),
    "wan2.1-i2v-14b-dit": ("Wan-AI/Wan2.1-I2V-14B-480P:diffusion_pytorch_model-00001-of-00007.safetensors",
                           "Wan-AI/Wan2.1-I2V-14B-720P:diffusion_pytorch_model-00001-of-00007.safetensors",
                           # the Fun-InP 14B releases: the I2V-14B architecture
                           "PAI/Wan2.1-Fun-14B-InP:diffusion_pytorch_model*.safetensors",
                           "PAI/Wan2.1-Fun-V1.1-14B-InP:diffusion_pytorch_model*.safetensors"),
    "wan2.2-ti2v-5b-dit": ("Wan-AI/Wan2.2-TI2V-5B:diffusion_pytorch_model-00001-of-00003.safetensors",),
    # the two experts of Wan2.2-T2V-A14B share one architecture
    "wan2.2-t2v-a14b-dit": ("Wan-AI/Wan2.2-T2V-A14B:high_noise_model/diffusion_pytorch_model-00001-of-00006.safetensors",
                            "Wan-AI/Wan2.2-T2V-A14B:low_noise_model/diffusion_pytorch_model-00001-of-00006.safetensors"),
    "wan2.2-i2v-a14b-dit": ("Wan-AI/Wan2.2-I2V-A14B:high_noise_model/diffusion_pytorch_model-00001-of-00006.safetensors",
                            "Wan-AI/Wan2.2-I2V-A14B:low_noise_model/diffusion_pytorch_model-00001-of-00006.safetensors",
                            # Wan2.2-Fun-A14B-InP: the I2V-A14B experts' architecture
                            "PAI/Wan2.2-Fun-A14B-InP:high_noise_model/diffusion_pytorch_model*.safetensors",
                            "PAI/Wan2.2-Fun-A14B-InP:low_noise_model/diffusion_pytorch_model*.safetensors"),
    # FLF2V and PAI's Wan-Fun releases: each repository's DiT files as the recipes select them (their shard names
    # are not recorded here)
    "wan2.1-flf2v-14b-dit": ("Wan-AI/Wan2.1-FLF2V-14B-720P:diffusion_pytorch_model*.safetensors",),
    "wan2.1-fun-1.3b-inp-dit": ("PAI/Wan2.1-Fun-1.3B-InP:diffusion_pytorch_model*.safetensors",
                                "PAI/Wan2.1-Fun-V1.1-1.3B-InP:diffusion_pytorch_model*.safetensors"),
    "wan2.1-fun-1.3b-control-dit": ("PAI/Wan2.1-Fun-1.3B-Control:diffusion_pytorch_model*.safetensors",),
    "wan2.1-fun-14b-control-dit": ("PAI/Wan2.1-Fun-14B-Control:diffusion_pytorch_model*.safetensors",),
    "wan2.1-fun-v1.1-1.3b-control-dit": ("PAI/Wan2.1-Fun-V1.1-1.3B-Control:diffusion_pytorch_model*.safetensors",),
    "wan2.1-fun-v1.1-14b-control-dit": ("PAI/Wan2.1-Fun-V1.1-14B-Control:diffusion_pytorch_model*.safetensors",),
    "wan2.1-fun-v1.1-1.3b-control-camera-dit": (
        "PAI/Wan2.1-Fun-V1.1-1.3B-Control-Camera:diffusion_pytorch_model*.safetensors",),
    "wan2.1-fun-v1.1-14b-control-camera-dit": (
        "PAI/Wan2.1-Fun-V1.1-14B-Control-Camera:diffusion_pytorch_model*.safetensors",),
    "wan2.2-fun-a14b-control-dit": (
        "PAI/Wan2.2-Fun-A14B-Control:high_noise_model/diffusion_pytorch_model*.safetensors",
        "PAI/Wan2.2-Fun-A14B-Control:low_noise_model/diffusion_pytorch_model*.safetensors"),
    "wan2.2-fun-a14b-control-camera-dit": (
        "PAI/Wan2.2-Fun-A14B-Control-Camera:high_noise_model/diffusion_pytorch_model*.safetensors",
        "PAI/Wan2.2-Fun-A14B-Control-Camera:low_noise_model/diffusion_pytorch_model*.safetensors"),
    "wan2.1-speedcontrol-motion-controller": ("DiffSynth-Studio/Wan2.1-1.3b-speedcontrol-v1:model.safetensors",),
    "wan2.1-vae": ("Wan-AI/*:Wan2.1_VAE.pth", "PAI/*:Wan2.1_VAE.pth",
                   "DiffSynth-Studio/Wan-Series-Converted-Safetensors:Wan2.1_VAE.safetensors",
                   "iic/*:Wan2.1_VAE.pth"),  # iic/VACE-Wan2.1-1.3B-Preview ships the same files
    "wan2.2-vae": ("Wan-AI/*:Wan2.2_VAE.pth", "DiffSynth-Studio/Wan-Series-Converted-Safetensors:Wan2.2_VAE.safetensors"),
    "umt5-xxl": ("Wan-AI/*:models_t5_umt5-xxl-enc-bf16.pth", "PAI/*:models_t5_umt5-xxl-enc-bf16.pth",
                 "DiffSynth-Studio/Wan-Series-Converted-Safetensors:models_t5_umt5-xxl-enc-bf16.safetensors",
                 "iic/*:models_t5_umt5-xxl-enc-bf16.pth",
                 "Wan-AI/*:videomodel/Wan-AI/models_t5_umt5-xxl-enc-bf16.pth"),  # Wan2.2-Animate-2-14B's folder
    "wan2.1-clip": ("Wan-AI/*:models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
                    "PAI/*:models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
                    "DiffSynth-Studio/Wan-Series-Converted-Safetensors:"
                    "models_clip_open-clip-xlm-roberta-large-vit-huge-14.safetensors",
                    "Wan-AI/*:videomodel/Wan-AI/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"),
}

# DiffSynth's `redirect_common_files`: Wan's pickled .pth files are fetched as safetensors from its converted repo.
CONVERTED_REPO = "DiffSynth-Studio/Wan-Series-Converted-Safetensors"
REDIRECTED_FILES = ("models_t5_umt5-xxl-enc-bf16.pth", "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
                    "Wan2.1_VAE.pth", "Wan2.2_VAE.pth")
