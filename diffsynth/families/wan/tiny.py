"""Wan's tiny twins: random tiny models in the ``Wan-AI/Wan2.1-*`` and ``Wan2.2-*`` repository layouts."""
from __future__ import annotations

from pathlib import Path

import torch

from ...models.tiny import save_model
from ...models.tokenizers import train_sentencepiece_tokenizer
from .convert import diffusers_to_wan_dit, diffusers_to_wan_vae, hf_to_wan_clip, hf_to_wan_t5


def tiny_dit(in_ch: int = 16, out_ch: int = 16, image_dim: int | None = None, **fun):
    """``fun``: ``pos_embed_seq_len`` (FLF2V), ``has_ref_conv`` / ``control_adapter_in_dim`` (Wan-Fun)."""
    from .fun_dit import build_dit
    return build_dit(dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=in_ch,
                          out_channels=out_ch, text_dim=32, freq_dim=256, ffn_dim=64, num_layers=2,
                          cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=image_dim,
                          added_kv_proj_dim=32 if image_dim else None, rope_max_seq_len=32, **fun))


def save_dit(dit, folder: Path, model_type: str) -> None:
    """Wan-AI layout: diffusion_pytorch_model.safetensors in the original names + Wan's own config.json."""
    c = dit.config
    save_model(diffusers_to_wan_dit(dit.state_dict()), folder, "diffusion_pytorch_model", 1, {
        "_class_name": "WanModel", "model_type": model_type, "dim": c.num_attention_heads * c.attention_head_dim,
        "num_heads": c.num_attention_heads, "ffn_dim": c.ffn_dim, "freq_dim": c.freq_dim, "in_dim": c.in_channels,
        "out_dim": c.out_channels, "num_layers": c.num_layers, "text_len": 512, "eps": c.eps})


def write_common(out_dir: Path, vae: str) -> None:
    """The files every Wan repo shares: UMT5 encoder, VAE (as the converted-safetensors repo ships them), tokenizer."""
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel


    tok = train_sentencepiece_tokenizer(out_dir / "google" / "umt5-xxl")
    t5 = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                     feed_forward_proj="gated-gelu", tie_word_embeddings=False))
    save_model(hf_to_wan_t5(t5.state_dict()), out_dir, "models_t5_umt5-xxl-enc-bf16")
    if vae == "2.1":
        model = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 temperal_downsample=[False, True, True])
    else:
        model = AutoencoderKLWan(base_dim=8, decoder_base_dim=16, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
                                 out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                                 latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
    save_model(diffusers_to_wan_vae(model.state_dict(), num_res_blocks=1), out_dir, f"Wan{vae}_VAE")


def write_tiny_t2v(out_dir: Path, seed: int = 0) -> None:
    """``Wan-AI/Wan2.1-T2V-1.3B`` layout (DiT in original names, UMT5, Wan2.1 VAE, google/umt5-xxl tokenizer)."""
    torch.manual_seed(seed)
    save_dit(tiny_dit(), out_dir, "t2v")
    write_common(out_dir, "2.1")


def write_tiny_krea(out_dir: Path, seed: int = 0) -> None:
    """The Krea Realtime recipes' files in one folder: ``krea/krea-realtime-video``'s single DiT file (Wan2.1-T2V-14B's
    architecture, its Self-Forcing wrapper's ``model.`` before Wan-AI's names, no config beside it) plus the
    Wan2.1-T2V-14B encoder and VAE files the recipes take from Wan-AI."""
    torch.manual_seed(seed)
    state = diffusers_to_wan_dit(tiny_dit().state_dict())
    save_model({f"model.{k}": v for k, v in state.items()}, out_dir, "krea-realtime-video-14b")
    write_common(out_dir, "2.1")


def write_tiny_i2v(out_dir: Path, seed: int = 0, in_ch: int = 36, **fun) -> None:
    """``Wan-AI/Wan2.1-I2V-14B-480P`` layout: as T2V, DiT with image conditioning, plus the CLIP image encoder
    (also the Wan2.1-Fun and FLF2V layouts: ``in_ch`` and ``fun`` as :func:`tiny_dit` takes them)."""
    torch.manual_seed(seed)
    save_dit(tiny_dit(in_ch=in_ch, image_dim=32, **fun), out_dir, "i2v")
    write_common(out_dir, "2.1")
    write_tiny_clip(out_dir)


def write_tiny_clip(out_dir: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                          num_attention_heads=2, patch_size=14, image_size=28,
                                                          projection_dim=16, hidden_act="gelu", layer_norm_eps=1e-5))
    state = hf_to_wan_clip(clip.state_dict())
    # the real file also holds open-clip's XLM-RoBERTa text tower, which Wan does not use
    state.update({"log_scale": torch.zeros(()), "textual.token_embedding.weight": torch.randn(16, 8),
                  "textual.norm.weight": torch.ones(8)})
    save_model(state, out_dir, "models_clip_open-clip-xlm-roberta-large-vit-huge-14")


def write_tiny_ti2v(out_dir: Path, seed: int = 0) -> None:
    """``Wan-AI/Wan2.2-TI2V-5B`` layout: DiT on 48-channel latents, Wan2.2 VAE."""
    torch.manual_seed(seed)
    save_dit(tiny_dit(in_ch=48, out_ch=48), out_dir, "ti2v")
    write_common(out_dir, "2.2")


def write_tiny_a14b(out_dir: Path, seed: int = 0) -> None:
    """``Wan-AI/Wan2.2-T2V-A14B`` layout: high_noise_model/ and low_noise_model/ DiTs, Wan2.1 VAE."""
    torch.manual_seed(seed)
    save_dit(tiny_dit(), out_dir / "high_noise_model", "t2v")
    save_dit(tiny_dit(), out_dir / "low_noise_model", "t2v")
    write_common(out_dir, "2.1")


def write_tiny_i2v_a14b(out_dir: Path, seed: int = 0) -> None:
    """``Wan-AI/Wan2.2-I2V-A14B`` layout: two image-to-video DiTs (VAE-embedded first frame, no CLIP image
    encoder) in high_noise_model/ and low_noise_model/, Wan2.1 VAE."""
    torch.manual_seed(seed)
    save_dit(tiny_dit(in_ch=36), out_dir / "high_noise_model", "i2v")
    save_dit(tiny_dit(in_ch=36), out_dir / "low_noise_model", "i2v")
    write_common(out_dir, "2.1")




# the tiny CLIP gives (28/14)^2 + 1 = 5 tokens; FLF2V's image embedder has positions for two images
TINY_CLIP_TOKENS = 5


def write_tiny_flf2v(out_dir: Path, seed: int = 0) -> None:
    """``Wan-AI/Wan2.1-FLF2V-14B-720P`` layout: the I2V layout, image embedder with positions for two images."""
    write_tiny_i2v(out_dir, seed, pos_embed_seq_len=2 * TINY_CLIP_TOKENS)


def write_tiny_fun_control(out_dir: Path, seed: int = 0) -> None:
    """``PAI/Wan2.1-Fun-1.3B-Control`` layout: DiT on latents + control latents + 16 more channels, CLIP."""
    write_tiny_i2v(out_dir, seed, in_ch=48)


def write_tiny_fun_control_v11(out_dir: Path, seed: int = 0) -> None:
    """``PAI/Wan2.1-Fun-V1.1-1.3B-Control`` layout: as V1.0 plus the reference-image convolution."""
    write_tiny_i2v(out_dir, seed, in_ch=48, has_ref_conv=True)


def write_tiny_fun_camera(out_dir: Path, seed: int = 0) -> None:
    """``PAI/Wan2.1-Fun-V1.1-1.3B-Control-Camera`` layout: 32-channel DiT with the camera adapter, CLIP."""
    write_tiny_i2v(out_dir, seed, in_ch=32, control_adapter_in_dim=24)


def _write_fun_a14b(out_dir: Path, seed: int, in_ch: int, **fun) -> None:
    torch.manual_seed(seed)
    save_dit(tiny_dit(in_ch=in_ch, **fun), out_dir / "high_noise_model", "i2v")
    save_dit(tiny_dit(in_ch=in_ch, **fun), out_dir / "low_noise_model", "i2v")
    write_common(out_dir, "2.1")


def write_tiny_fun_control_a14b(out_dir: Path, seed: int = 0) -> None:
    """``PAI/Wan2.2-Fun-A14B-Control`` layout: two experts on 52 channels with the reference convolution, no CLIP."""
    _write_fun_a14b(out_dir, seed, 52, has_ref_conv=True)


def write_tiny_fun_camera_a14b(out_dir: Path, seed: int = 0) -> None:
    """``PAI/Wan2.2-Fun-A14B-Control-Camera`` layout: two 36-channel experts with the camera adapter, no CLIP."""
    _write_fun_a14b(out_dir, seed, 36, control_adapter_in_dim=24)


def write_tiny_speed(out_dir: Path, seed: int = 0) -> None:
    """The speed-control recipe's files in one folder: the Wan2.1-T2V-1.3B layout plus ``model.safetensors``, the
    motion controller (DiffSynth's ``linear.{0,2,4}``; random, so its effect shows)."""
    from .fun_dit import WanMotionController
    write_tiny_t2v(out_dir, seed)
    controller = WanMotionController(freq_dim=256, dim=32)
    save_model(controller.state_dict(), out_dir, "model")
