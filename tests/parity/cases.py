"""Parity cases shared by both sides (plain data: imported by our venv and by the DiffSynth-Studio venv).

Real width, reduced depth: every DiT below has the published hidden size, head size and input/output channels of
the release named, with one block per block list. Inputs are small (a few latent tokens, a short prompt
embedding), so a case runs on a CPU in seconds.
"""
SEED = 0
RANK = 4
DISTILL_STEPS = 2  # student steps of the direct_distill row (DiffSynth's DirectDistillLoss)
# the families whose direct_distill recipes (and train.py tasks) the row covers
DISTILL_FAMILIES = ("qwen_image", "flux", "wan")
TIMESTEP_ID = 437  # one grid point of the 1000-step training grid, away from both ends

FLUX2_KLEIN_4B_1_BLOCK = {"patch_size": 1, "in_channels": 128, "out_channels": None, "num_layers": 1,
                          "num_single_layers": 1, "attention_head_dim": 128, "num_attention_heads": 24,
                          "joint_attention_dim": 7680, "timestep_guidance_channels": 256, "mlp_ratio": 3.0,
                          "axes_dims_rope": [32, 32, 32, 32], "rope_theta": 2000, "eps": 1e-6, "guidance_embeds": False}
FLUX2_GUIDANCE_1_BLOCK = {**FLUX2_KLEIN_4B_1_BLOCK, "joint_attention_dim": 15360, "guidance_embeds": True}
# DiffSynth's FLUX.2 LoRA recipe (klein-4B's list, cut to the one single block)
FLUX2_TARGETS = ("to_q,to_k,to_v,to_out.0,add_q_proj,add_k_proj,add_v_proj,to_add_out,linear_in,linear_out,"
                 "to_qkv_mlp_proj,single_transformer_blocks.0.attn.to_out")
# Tongyi-MAI/Z-Image-Turbo:transformer/config.json at one block per list
Z_IMAGE_DIT = {"all_patch_size": [2], "all_f_patch_size": [1], "in_channels": 16, "dim": 3840, "n_layers": 1,
               "n_refiner_layers": 1, "n_heads": 30, "n_kv_heads": 30, "norm_eps": 1e-5, "qk_norm": True,
               "cap_feat_dim": 2560, "rope_theta": 256.0, "t_scale": 1000.0, "axes_dims": [32, 48, 48],
               "axes_lens": [1536, 512, 512]}

DIT_CASES = {
    "qwen_image": {
        "family": "qwen_image",
        "ours": {"cls": "QwenImageTransformer2DModel",
                 "config": {"patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 1,
                            "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 3584,
                            "guidance_embeds": False, "axes_dims_rope": [16, 56, 56]}},
        "latents": [1, 16, 8, 8], "prompt": [1, 7, 3584],
        "targets": "to_q,to_k,to_v,add_q_proj,add_k_proj,add_v_proj,to_out.0,to_add_out,img_mlp.net.2,img_mod.1,"
                   "txt_mlp.net.2,txt_mod.1",
    },
    "flux": {
        "family": "flux",
        "ours": {"cls": "FluxTransformer2DModel",
                 "config": {"patch_size": 1, "in_channels": 64, "num_layers": 1, "num_single_layers": 1,
                            "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
                            "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]}},
        "latents": [1, 16, 8, 8], "prompt": [1, 7, 4096], "pooled": [1, 768],
        "targets": "a_to_qkv,b_to_qkv,ff_a.0,ff_a.2,ff_b.0,ff_b.2,a_to_out,b_to_out,proj_out,norm.linear,"
                   "norm1_a.linear,norm1_b.linear,to_qkv_mlp",
    },
    "wan2.1": {  # Wan2.1-T2V-1.3B
        "family": "wan",
        "ours": {"cls": "WanTransformer3DModel",
                 "config": {"patch_size": [1, 2, 2], "num_attention_heads": 12, "attention_head_dim": 128,
                            "in_channels": 16, "out_channels": 16, "text_dim": 4096, "freq_dim": 256,
                            "ffn_dim": 8960, "num_layers": 1, "cross_attn_norm": True,
                            "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": None,
                            "added_kv_proj_dim": None, "rope_max_seq_len": 1024}},
        "reference": {"has_image_input": False, "patch_size": [1, 2, 2], "in_dim": 16, "dim": 1536, "ffn_dim": 8960,
                      "freq_dim": 256, "text_dim": 4096, "out_dim": 16, "num_heads": 12, "num_layers": 1,
                      "eps": 1e-6},
        "latents": [1, 16, 3, 4, 4], "prompt": [1, 7, 4096],
        "targets": "q,k,v,o,ffn.0,ffn.2",
    },
    "wan2.2": {  # Wan2.2-TI2V-5B: 48-channel latents, clean first frame with its own timestep
        "family": "wan",
        "ours": {"cls": "WanTransformer3DModel",
                 "config": {"patch_size": [1, 2, 2], "num_attention_heads": 24, "attention_head_dim": 128,
                            "in_channels": 48, "out_channels": 48, "text_dim": 4096, "freq_dim": 256,
                            "ffn_dim": 14336, "num_layers": 1, "cross_attn_norm": True,
                            "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": None,
                            "added_kv_proj_dim": None, "rope_max_seq_len": 1024}},
        "reference": {"has_image_input": False, "patch_size": [1, 2, 2], "in_dim": 48, "dim": 3072, "ffn_dim": 14336,
                      "freq_dim": 256, "text_dim": 4096, "out_dim": 48, "num_heads": 24, "num_layers": 1,
                      "eps": 1e-6, "seperated_timestep": True, "require_clip_embedding": False,
                      "require_vae_embedding": False, "fuse_vae_embedding_in_latents": True},
        "latents": [1, 48, 3, 4, 4], "prompt": [1, 7, 4096], "first_frame": True,
        "targets": "q,k,v,o,ffn.0,ffn.2",
    },
    "flux2": {  # FLUX.2-klein-4B's width (3072 = 24 x 128) and text width (3 x Qwen3-4B's 2560)
        "family": "flux2",
        "ours": {"cls": "Flux2Transformer2DModel", "config": FLUX2_KLEIN_4B_1_BLOCK},
        "reference": FLUX2_KLEIN_4B_1_BLOCK,
        "latents": [1, 128, 4, 4], "prompt": [1, 7, 7680],
        "targets": FLUX2_TARGETS,
    },
    # FLUX.2-dev's guidance embedding and text width (3 x Mistral's 5120) at klein-4B's width: dev's own 6144-wide
    # block pair is 1.5B parameters, too large for the CPU this suite runs on
    "flux2-guidance": {
        "family": "flux2",
        "ours": {"cls": "Flux2Transformer2DModel", "config": FLUX2_GUIDANCE_1_BLOCK},
        "reference": FLUX2_GUIDANCE_1_BLOCK,
        "latents": [1, 128, 4, 4], "prompt": [1, 7, 15360],
        "targets": FLUX2_TARGETS,
    },
    "z_image": {  # Z-Image / Z-Image-Turbo: one block per list (noise refiner, context refiner, layers)
        "family": "z_image",
        "ours": {"cls": "ZImageTransformer2DModel", "config": dict(Z_IMAGE_DIT)},
        "reference": {"n_layers": 1, "n_refiner_layers": 1},
        # 6x6 image tokens and 7 prompt tokens: both padded to 32 (the DiT's pad tokens take part)
        "latents": [1, 16, 12, 12], "prompt": [1, 7, 2560],
        "targets": "to_q,to_k,to_v,to_out.0,w1,w2,w3",
    },
    "z_image_omni": {  # Z-Image-Omni-Base: the omni path (the target as the only, noisy image; no SigLIP input)
        "family": "z_image",
        "ours": {"cls": "ZImageTransformer2DModel", "config": {**Z_IMAGE_DIT, "siglip_feat_dim": 1152}},
        "reference": {"n_layers": 1, "n_refiner_layers": 1, "siglip_feat_dim": 1152},
        "latents": [1, 16, 12, 12], "prompt": [1, 7, 2560], "omni": True,
        "targets": "to_q,to_k,to_v,to_out.0,w1,w2,w3",
    },
    # Z-Image-Turbo + PAI's Fun-ControlNet 2.1 (control blocks at the real width): two noise refiner layers, each
    # with its control refiner hint, and a control block beside layer 0; a random 33-channel control context (its
    # ZImageUnit_PAIControlNet output: control latents, inpaint mask, inpaint latents); LoRA on the DiT (the recipe's)
    "z_image_controlnet": {
        "family": "z_image", "variant": "controlnet_image",
        "ours": {"cls": "ZImageTransformer2DModel", "config": {**Z_IMAGE_DIT, "n_refiner_layers": 2}},
        "reference": {"n_layers": 1, "n_refiner_layers": 2},
        "controlnet": {"control_layers_places": [0], "control_refiner_layers_places": [0, 1], "control_in_dim": 33,
                       "add_control_noise_refiner": "control_noise_refiner", "dim": 3840, "n_refiner_layers": 2,
                       "n_heads": 30, "n_kv_heads": 30},
        "controlnet_reference": {"control_layers_places": [0], "control_in_dim": 33, "dim": 3840,
                                 "n_refiner_layers": 2},
        "latents": [1, 16, 12, 12], "prompt": [1, 7, 2560], "control_context": [1, 33, 12, 12],
        "targets": "to_q,to_k,to_v,to_out.0,w1,w2,w3",
    },
}


def _wan(heads, ffn, in_ch, image=False, **extra):
    return {"patch_size": [1, 2, 2], "num_attention_heads": heads, "attention_head_dim": 128, "in_channels": in_ch,
            "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": ffn, "num_layers": 1,
            "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
            "image_dim": 1280 if image else None, "added_kv_proj_dim": heads * 128 if image else None,
            "rope_max_seq_len": 1024, **extra}


def _wan_ref(heads, ffn, in_ch, image=False, **extra):
    return {"has_image_input": image, "patch_size": [1, 2, 2], "in_dim": in_ch, "dim": heads * 128, "ffn_dim": ffn,
            "freq_dim": 256, "text_dim": 4096, "out_dim": 16, "num_heads": heads, "num_layers": 1, "eps": 1e-6, **extra}


# Wan's conditioning variants (a DiT with CLIP features splits its context as image tokens + 512 prompt tokens, so
# those cases give a full-length prompt) (diffsynth/families/wan/fun.py, speed.py): the DiT gets its extra inputs (``y``, CLIP
# features, reference latents, a camera move, a motion bucket) as random tensors of the real shapes; DiffSynth's
# side loads the weights in the original Wan names (our converter), as its loader reads the released files.
DIT_CASES.update({
    "wan2.1-flf2v": {  # Wan2.1-FLF2V-14B-720P: two images' CLIP features with positions (514 tokens)
        "family": "wan", "variant": "end_image", "original_names": True,
        "ours": {"cls": "WanTransformer3DModel", "config": _wan(40, 13824, 36, image=True, pos_embed_seq_len=514)},
        "reference": _wan_ref(40, 13824, 36, image=True, has_image_pos_emb=True),
        # DiffSynth's cross-attention takes the first 257 context tokens as the image's (one image), the official Wan
        # code and diffusers all but the last 512 (both images); its side runs with the official split (see run.py)
        "official_image_split": True,
        "latents": [1, 16, 3, 4, 4], "prompt": [1, 512, 4096], "y": [1, 20, 3, 4, 4], "clip_feature": [1, 514, 1280],
        "targets": "q,k,v,o,ffn.0,ffn.2",
    },
    "wan2.1-fun-v1.1-control": {  # Wan2.1-Fun-V1.1-1.3B-Control: control latents in y, a reference image
        "family": "wan", "variant": "control_video", "original_names": True,
        "ours": {"cls": "WanFunTransformer3DModel", "config": _wan(12, 8960, 48, image=True, has_ref_conv=True)},
        "reference": _wan_ref(12, 8960, 48, image=True, has_ref_conv=True),
        "latents": [1, 16, 3, 4, 4], "prompt": [1, 512, 4096], "y": [1, 32, 3, 4, 4], "clip_feature": [1, 257, 1280],
        "reference_latents": [1, 16, 1, 4, 4], "targets": "q,k,v,o,ffn.0,ffn.2",
    },
    "wan2.1-fun-v1.1-control-camera": {  # Wan2.1-Fun-V1.1-1.3B-Control-Camera: a camera move through its adapter
        "family": "wan", "variant": "camera_control_direction", "original_names": True,
        "ours": {"cls": "WanFunTransformer3DModel",
                 "config": _wan(12, 8960, 32, image=True, control_adapter_in_dim=24)},
        "reference": _wan_ref(12, 8960, 32, image=True, has_ref_conv=False, add_control_adapter=True,
                              in_dim_control_adapter=24),
        "latents": [1, 16, 3, 4, 4], "prompt": [1, 512, 4096], "y": [1, 16, 3, 4, 4], "clip_feature": [1, 257, 1280],
        "camera": ["LeftUp", 0.03], "targets": "q,k,v,o,ffn.0,ffn.2",
    },
    "wan2.1-speedcontrol": {  # Wan2.1-T2V-1.3B + DiffSynth's motion controller
        "family": "wan", "variant": "motion_bucket_id", "original_names": True,
        "ours": {"cls": "WanTransformer3DModel", "config": _wan(12, 8960, 16)},
        "reference": _wan_ref(12, 8960, 16),
        "latents": [1, 16, 3, 4, 4], "prompt": [1, 7, 4096], "motion_bucket_id": 7.0,
        "targets": "q,k,v,o,ffn.0,ffn.2",
    },
})

# VAEs at their real configs (diffusers classes on our side); small inputs in [-1, 1]
WAN21_VAE = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
             "temperal_downsample": [False, True, True]}
VAE_CASES = {
    "qwen_image": {"family": "qwen_image", "cls": "AutoencoderKLQwenImage", "config": WAN21_VAE, "layout": "diffusers",
                   "pixels": [1, 3, 32, 32]},
    "flux": {"family": "flux", "cls": "AutoencoderKL", "layout": "bfl", "pixels": [1, 3, 32, 32],
             "config": {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
                        "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
                        "layers_per_block": 2, "act_fn": "silu", "latent_channels": 16, "norm_num_groups": 32,
                        "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
                        "use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": True}},
    # Z-Image ships the FLUX VAE architecture in diffusers names (vae/diffusion_pytorch_model.safetensors)
    "z_image": {"family": "z_image", "cls": "AutoencoderKL", "layout": "diffusers", "pixels": [1, 3, 32, 32],
                "config": {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
                           "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
                           "layers_per_block": 2, "act_fn": "silu", "latent_channels": 16, "norm_num_groups": 32,
                           "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
                           "use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": True}},
    "wan2.1": {"family": "wan", "cls": "AutoencoderKLWan", "config": WAN21_VAE, "layout": "wan",
               "pixels": [1, 3, 5, 32, 32]},
    "wan2.2": {"family": "wan", "cls": "AutoencoderKLWan", "layout": "wan", "pixels": [1, 3, 5, 32, 32],
               "config": {"base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "dim_mult": [1, 2, 4, 4],
                          "num_res_blocks": 2, "attn_scales": [], "temperal_downsample": [False, True, True],
                          "is_residual": True, "in_channels": 12, "out_channels": 12, "patch_size": 2,
                          "scale_factor_spatial": 16, "scale_factor_temporal": 4}},
    "flux2": {"family": "flux2", "cls": "AutoencoderKLFlux2", "layout": "diffusers", "pixels": [1, 3, 32, 32],
              "config": {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
                         "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
                         "layers_per_block": 2, "act_fn": "silu", "latent_channels": 32, "norm_num_groups": 32,
                         "sample_size": 1024, "use_quant_conv": True, "use_post_quant_conv": True,
                         "mid_block_add_attention": True, "batch_norm_eps": 1e-4, "patch_size": [2, 2]}},
}

# Wan VACE (Wan2.1-VACE-1.3B): the DiT at real width with two blocks, the VACE branch with two blocks (hints after DiT
# blocks 0 and 1), the Wan2.1 VAE at its real config for the conditioning tensors; 5-frame 32x32 clips
VACE_CASES = {
    "wan2.1-vace-1.3b": {
        "ours": {"patch_size": [1, 2, 2], "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
                 "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 2,
                 "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": None,
                 "added_kv_proj_dim": None, "rope_max_seq_len": 1024, "vace_layers": [0, 1], "vace_in_channels": 96},
        "reference": {"has_image_input": False, "patch_size": [1, 2, 2], "in_dim": 16, "dim": 1536, "ffn_dim": 8960,
                      "freq_dim": 256, "text_dim": 4096, "out_dim": 16, "num_heads": 12, "num_layers": 2,
                      "eps": 1e-6},
        "vace": {"vace_layers": [0, 1], "vace_in_dim": 96, "patch_size": [1, 2, 2], "has_image_input": False,
                 "dim": 1536, "num_heads": 12, "ffn_dim": 8960, "eps": 1e-6},
        "frames": 5, "size": 32, "prompt": [1, 7, 4096], "targets": "q,k,v,o,ffn.0,ffn.2",
    },
}


# The conditioning tensors of Wan's Fun / first-last-frame variants, built by each side from the same PNG clips
# through the Wan2.1 VAE at its real config (random weights): ``y`` (masks, control latents, image latents), the
# Fun reference latents and the camera embedding. The DiT only decides which path runs (its input channels, a
# reference convolution, a camera adapter): a tiny one on our side, its attributes on DiffSynth's. CLIP features are
# not compared (see docs/parity.md).
CONDITIONING_CASES = {
    # family variant, our tiny DiT's channels and extras, the extra inputs of the recipe
    "flf2v": {"variant": "end_image", "in_dim": 36, "image": True, "dit": {"pos_embed_seq_len": 514},
              "inputs": ["input_image", "end_image"]},          # Wan2.1-FLF2V-14B-720P
    "fun-inp": {"variant": "end_image", "in_dim": 36, "image": True, "dit": {},
                "inputs": ["input_image", "end_image"]},        # Wan2.1-Fun(-V1.1)-*-InP, Wan2.2-Fun-A14B-InP
    "fun-v1.1-control": {"variant": "control_video", "in_dim": 48, "image": True, "dit": {"has_ref_conv": True},
                         "inputs": ["control_video", "reference_image"]},
    "fun-a14b-control": {"variant": "control_video", "in_dim": 52, "image": False, "dit": {"has_ref_conv": True},
                         "inputs": ["control_video", "reference_image"]},  # Wan2.2-Fun-A14B-Control
    "fun-v1.1-control-camera": {"variant": "camera_control_direction", "in_dim": 32, "image": True,
                                "dit": {"control_adapter_in_dim": 24},
                                "inputs": ["input_image", "camera_control_direction", "camera_control_speed"]},
    "fun-a14b-control-camera": {"variant": "camera_control_direction", "in_dim": 36, "image": False,
                                "dit": {"control_adapter_in_dim": 24},
                                "inputs": ["input_image", "camera_control_direction", "camera_control_speed"]},
}
CONDITIONING_CLIP = {"frames": 5, "size": 32, "camera": ["LeftUp", 0.03]}

# The FLUX.2 prompt path: text -> the DiT's text input, on the tiny twins' tokenizers and text encoders (their
# chat templates and layer picks are the real ones; the hub's tokenizers cannot be downloaded here)
PROMPT_FLUX2 = {"klein": "flux.2-klein-4b", "dev": "flux.2-dev"}
PROMPT_TEXT = "a red cube on a table [IMG]"


# Z-Image's prompt path: Qwen3-4B's width and heads at two layers, the tiny twin's tokenizer (its chat template is
# Qwen3's for one user turn); vocabulary cut to that tokenizer's
Z_IMAGE_TEXT_ENCODER = {"vocab_size": 512, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 2,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                        "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000,
                        "tie_word_embeddings": True}
Z_IMAGE_PROMPTS = ["a red cube", "A watercolour fox, sitting in tall grass at dusk; soft light."]


# Qwen-Image-Edit's image preprocessing (the `edit` case): DiffSynth's EditImageEmbedder resize and VAE input
# (`preprocess_image`, float32 and bfloat16), its dataset resize (`ImageCropAndResize`), and what its
# `Qwen2VLProcessor` (transformers' torchvision image processor) hands the text encoder, for one edit image and for
# a list of them (2509 style: each resized to 384² area).
# The real processor config: Qwen/Qwen-Image-Edit's processor/preprocessor_config.json, which is Qwen2.5-VL's
# (Qwen/Qwen2.5-VL-7B-Instruct's preprocessor_config.json, the same values), written here as data (no hub access).
QWEN25_VL_PREPROCESSOR = {
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
}
# random-noise RGB images (the hardest case for resampling) of these (width, height); none a multiple of 28 or 32
EDIT_IMAGE_SIZES = [(333, 250), (250, 333), (333, 250), (97, 61)]
EDIT_PROMPT = "make the cube blue"
EDIT_DATA_MAX_PIXELS = 128 * 128  # the dataset-resize rows: dynamic under this area (sides multiples of 16)
EDIT_DATA_FIXED = (96, 160)       # and fixed (height, width)
# trajectory_imitation (Z-Image-Turbo's distillation, DiffSynth's TrajectoryImitationLoss): the loss runs the DiT
# 124 times (teacher 50 steps x CFG 2, student 8 + 8 for LPIPS, and the backward), so its DiT keeps Z-Image's
# structure and head size at a reduced width (2 heads of 128) to run on a CPU; the VAE decoder is the real one
# (FLUX's, Z-Image's config) and the LPIPS AlexNet has its real widths, all with random weights
TRAJECTORY = {
    "dit": {**Z_IMAGE_DIT, "dim": 256, "n_heads": 2, "n_kv_heads": 2, "cap_feat_dim": 64},
    "latents": [1, 16, 4, 4],  # a 32x32 image: the smallest AlexNet's pooling takes
    "prompt": [1, 5, 64], "negative": [1, 3, 64],
}


# Wan2.2-Animate-14B: the image-to-video DiT at real width with one block (so one face block, after DiT block 0), the
# animate adapter at its real sizes (DiffSynth's WanAnimateAdapter hard-codes them; its face blocks are cut to that
# one), the Wan2.1 VAE at its real config for the conditioning tensors; a 9-frame 32x32 clip (pose and face clips cut
# to 5 frames), 512x512 face frames; random CLIP features and prompt embedding of the real shapes
ANIMATE_ADAPTER = {"dim": 5120, "heads": 40, "face_blocks": 1, "pose_channels": 16, "patch_size": [1, 2, 2],
                   "motion_channels": [32, 64, 128, 256, 512, 512, 512, 512], "style_dim": 512, "motion_dim": 20,
                   "face_heads": 4, "face_hidden": 1024}
ANIMATE_CASES = {
    "wan2.2-animate-14b": {
        "ours": {**_wan(40, 13824, 36, image=True), "animate_adapter": ANIMATE_ADAPTER},
        "reference": _wan_ref(40, 13824, 36, image=True),
        "frames": 9, "size": 32, "face_size": 512, "prompt": [1, 512, 4096], "clip_feature": [1, 257, 1280],
        "targets": "q,k,v,o,ffn.0,ffn.2",
    },
}


# Wan2.2-Animate-2-14B: DiffSynth's WanAnimate2Transformer at the real width with two blocks (the reference stream's
# tokens go from block 0 to block 1, as through the 40), the Wan2.1 VAE at its real config, the open-clip ViT-H/14
# image tower at its real width with two blocks (DiffSynth's WanImageEncoder runs all but the last: one), random
# prompt embeddings (UMT5 is not part of these rows). A 5-frame 32x48 clip (3 latent frames of 4x6 with the reference
# image's), a 9-frame reference video at another size (cut to 5 and resized by both sides), a reference image at
# another size; the short-reference rows give a 1-frame reference video (one of the two reference slots empty)
ANIMATE2_DIT = {"patch_size": [1, 2, 2], "in_dim": 36, "dim": 5120, "ffn_dim": 13824, "freq_dim": 256,
                "text_dim": 4096, "out_dim": 16, "num_heads": 40, "num_layers": 2, "cross_attn_norm": True,
                "eps": 1e-6, "use_img_emb": True}
# open-clip xlm-roberta-large-vit-huge-14's image tower (transformers' CLIPVisionConfig), cut to two blocks
ANIMATE2_CLIP = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 2, "num_attention_heads": 16,
                 "patch_size": 14, "image_size": 224, "projection_dim": 1024, "hidden_act": "gelu",
                 "layer_norm_eps": 1e-5}
ANIMATE2_CASES = {
    "wan2.2-animate-2-14b": {
        "ours": {**ANIMATE2_DIT, "image_dim": 1280},
        "reference": ANIMATE2_DIT,  # its img_emb hard-codes the 1280 CLIP width
        "clip": ANIMATE2_CLIP,
        "frames": 5, "height": 32, "width": 48,
        "reference_video": {"frames": 9, "size": (24, 16)},  # (width, height) of its PNGs
        "reference_image": (64, 40),
        "short_reference_frames": 1,
        "prompt": [1, 512, 4096], "prompt_ref": [1, 512, 4096],
        # the LoRA recipes' lora_target_modules, and the full recipes' trainable_models at this depth
        "targets": "self_attn.q,self_attn.k,self_attn.v",
        "trainable_models": ",".join(f"dit.blocks.{i}.block.self_attn.{m}" for i in range(2) for m in "qkv"),
    },
}
