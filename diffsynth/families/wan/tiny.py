"""Wan's tiny twins: random tiny models in the ``Wan-AI/Wan2.1-*`` and ``Wan2.2-*`` repository layouts."""
from __future__ import annotations

from pathlib import Path

import torch

from ...models.tiny import save_model
from ...models.tokenizers import train_sentencepiece_tokenizer
from .convert import diffusers_to_wan_dit, diffusers_to_wan_vae, hf_to_wan_clip, hf_to_wan_t5


def tiny_dit(in_ch: int = 16, out_ch: int = 16, image_dim: int | None = None):
    from diffusers import WanTransformer3DModel
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=in_ch,
                                 out_channels=out_ch, text_dim=32, freq_dim=256, ffn_dim=64, num_layers=2,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=image_dim,
                                 added_kv_proj_dim=32 if image_dim else None, rope_max_seq_len=32)


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


def write_tiny_i2v(out_dir: Path, seed: int = 0) -> None:
    """``Wan-AI/Wan2.1-I2V-14B-480P`` layout: as T2V, DiT with image conditioning, plus the CLIP image encoder."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection


    torch.manual_seed(seed)
    save_dit(tiny_dit(in_ch=36, image_dim=32), out_dir, "i2v")
    write_common(out_dir, "2.1")
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


