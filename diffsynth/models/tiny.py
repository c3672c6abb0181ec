"""Tiny presets: random-initialised tiny models of the real architectures, written in the real repository
layouts (folder and file names, sharded safetensors with index, config.json, tokenizer).

They exist so that the fetch -> detect -> load path that serves a real checkpoint runs in tests and in the
offline demo. A tiny preset learns nothing useful; every folder carries ``TINY_PRESET.md`` saying so.
"""
from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import torch

from ..files import staged_dir, write_json, write_text
from .model_config import ModelConfigError
from .safetensors_io import save_sharded

TINY_NOTE = ("# Tiny preset ({family})\n\nRandom-initialised tiny model in the real `{repo}` layout, written by "
             "`diffsynth tiny-model`. It is a test/demo device, not a trained model: results from it mean nothing.\n")


def _write_config(folder: Path, config: dict) -> None:
    write_json(folder / "config.json", config)


# Sizes of the tiny Qwen-Image twin; benchmarks pass real widths (e.g. one DiT block at 3072 = 24 x 128).
QWEN_TINY_SIZES = {"dit_layers": 2, "dit_head_dim": 16, "dit_heads": 4, "rope_axes": (4, 6, 6), "text_hidden": 32,
                   "text_ffn": 64, "text_layers": 2, "text_heads": 2, "text_kv_heads": 2, "mrope": [2, 3, 3],
                   "vae_base_dim": 8, "vae_dim_mult": [1, 1, 1, 1], "vae_res_blocks": 1}


def write_tiny_qwen_image(out_dir: Path, seed: int = 0, sizes: dict | None = None) -> None:
    """``Qwen/Qwen-Image`` layout: transformer/ (sharded), text_encoder/ (sharded), vae/, tokenizer/, scheduler/."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from .components import qwen_vl_model_to_checkpoint
    from .tokenizers import train_qwen_tokenizer

    z = {**QWEN_TINY_SIZES, **(sizes or {})}
    torch.manual_seed(seed)
    tokenizer = train_qwen_tokenizer(out_dir / "tokenizer")
    special = {t: tokenizer.convert_tokens_to_ids(t) for t in
               ("<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")}
    text_hidden = z["text_hidden"]
    vocab = 512
    assert len(tokenizer) <= vocab

    dit = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=z["dit_layers"],
                                      attention_head_dim=z["dit_head_dim"], num_attention_heads=z["dit_heads"],
                                      joint_attention_dim=text_hidden, axes_dims_rope=tuple(z["rope_axes"]))
    folder = out_dir / "transformer"
    save_sharded(dit.state_dict(), folder, "diffusion_pytorch_model", num_shards=3)
    _write_config(folder, {"_class_name": "QwenImageTransformer2DModel", **dict(dit.config)})

    vae = AutoencoderKLQwenImage(base_dim=z["vae_base_dim"], z_dim=16, dim_mult=z["vae_dim_mult"],
                                 num_res_blocks=z["vae_res_blocks"], temperal_downsample=[False, True, True],
                                 latents_mean=[0.0] * 16, latents_std=[1.0] * 16)
    folder = out_dir / "vae"
    save_sharded(vae.state_dict(), folder, "diffusion_pytorch_model", num_shards=1)
    _write_config(folder, {"_class_name": "AutoencoderKLQwenImage", **dict(vae.config)})

    te_config = Qwen2_5_VLConfig(
        text_config={"hidden_size": text_hidden, "intermediate_size": z["text_ffn"], "num_hidden_layers": z["text_layers"],
                     "num_attention_heads": z["text_heads"], "num_key_value_heads": z["text_kv_heads"],
                     "vocab_size": vocab,
                     "rope_scaling": {"mrope_section": z["mrope"], "rope_type": "default", "type": "default"},
                     "rope_theta": 1e6, "bos_token_id": special["<|endoftext|>"],
                     "eos_token_id": special["<|endoftext|>"], "pad_token_id": special["<|endoftext|>"],
                     "tie_word_embeddings": False},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                       "out_hidden_size": text_hidden},
        hidden_size=text_hidden, vocab_size=vocab, tie_word_embeddings=False,
        vision_start_token_id=special["<|vision_start|>"], vision_end_token_id=special["<|vision_end|>"],
        vision_token_id=special["<|image_pad|>"], image_token_id=special["<|image_pad|>"],
        video_token_id=special["<|video_pad|>"])
    text_encoder = Qwen2_5_VLForConditionalGeneration(te_config)
    folder = out_dir / "text_encoder"
    save_sharded(qwen_vl_model_to_checkpoint(text_encoder.state_dict()), folder, "model", num_shards=2)
    config = te_config.to_dict()
    config["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
    _write_config(folder, config)

    write_json(out_dir / "scheduler" / "scheduler_config.json", {
        "_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5,
        "max_image_seq_len": 8192, "max_shift": 0.9, "num_train_timesteps": 1000, "shift": 1.0,
        "shift_terminal": 0.02, "use_dynamic_shifting": True, "time_shift_type": "exponential"})
    write_json(out_dir / "model_index.json", {
        "_class_name": "QwenImagePipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "QwenImageTransformer2DModel"], "vae": ["diffusers", "AutoencoderKLQwenImage"]})


def _save(state: dict, folder: Path, stem: str, shards: int = 1, config: dict | None = None) -> None:
    save_sharded(state, folder, stem, num_shards=shards)
    if config is not None:
        _write_config(folder, config)


def write_tiny_qwen_image_edit(out_dir: Path, seed: int = 0) -> None:
    """``Qwen/Qwen-Image-Edit`` layout: the Qwen-Image folders plus processor/ (image processor + tokenizer)."""
    import json

    from transformers import Qwen2VLImageProcessor

    write_tiny_qwen_image(out_dir, seed)
    processor = out_dir / "processor"
    shutil.copytree(out_dir / "tokenizer", processor)
    Qwen2VLImageProcessor(min_pixels=32 * 32, max_pixels=256 * 256).save_pretrained(str(processor))
    index = json.loads((out_dir / "model_index.json").read_text())
    index.update({"_class_name": "QwenImageEditPipeline", "processor": ["transformers", "Qwen2VLProcessor"]})
    write_json(out_dir / "model_index.json", index)


def write_tiny_flux(out_dir: Path, seed: int = 0, dit_file: str = "flux1-dev", pipeline: str = "FluxPipeline") -> None:
    """``black-forest-labs/FLUX.1-dev`` layout: flux1-dev.safetensors and ae.safetensors (BFL names), the same in
    diffusers layout under transformer/ and vae/, text_encoder/ (CLIP-L), text_encoder_2/ (T5, sharded),
    tokenizer/ (byte-level BPE) and tokenizer_2/ (SentencePiece). Krea-dev and Kontext-dev ship the same layout
    and DiT architecture under their own DiT file name (``dit_file``) and pipeline class."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from .convert_flux import diffusers_to_bfl_dit, diffusers_to_bfl_vae, rope_axes
    from .tokenizers import train_clip_tokenizer, train_sentencepiece_tokenizer

    torch.manual_seed(seed)
    clip_tok = train_clip_tokenizer(out_dir / "tokenizer")
    t5_tok = train_sentencepiece_tokenizer(out_dir / "tokenizer_2")
    hidden = 32
    dit = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2,
                                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=hidden,
                                 pooled_projection_dim=hidden, guidance_embeds=True, axes_dims_rope=rope_axes(16))
    _save(diffusers_to_bfl_dit(dit.state_dict()), out_dir, dit_file)
    _save(dit.state_dict(), out_dir / "transformer", "diffusion_pytorch_model", 2,
          {"_class_name": "FluxTransformer2DModel", **dict(dit.config)})
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(32, 32), layers_per_block=1, latent_channels=16, norm_num_groups=32,
                        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159)
    _save(diffusers_to_bfl_vae(vae.state_dict()), out_dir, "ae")
    _save(vae.state_dict(), out_dir / "vae", "diffusion_pytorch_model", 1, {"_class_name": "AutoencoderKL", **dict(vae.config)})
    clip_cfg = CLIPTextConfig(vocab_size=len(clip_tok), hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                              projection_dim=hidden, bos_token_id=clip_tok.bos_token_id,
                              eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id)
    clip = CLIPTextModel(clip_cfg)
    _save({"text_model." + k: v for k, v in clip.state_dict().items()}, out_dir / "text_encoder", "model", 1,
          {**clip_cfg.to_dict(), "architectures": ["CLIPTextModel"]})
    t5_cfg = T5Config(vocab_size=len(t5_tok), d_model=hidden, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0)
    t5 = T5EncoderModel(t5_cfg)
    t5_state = {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}  # = shared.weight
    _save(t5_state, out_dir / "text_encoder_2", "model", 2, {**t5_cfg.to_dict(), "architectures": ["T5EncoderModel"]})
    write_json(out_dir / "scheduler" / "scheduler_config.json", {
        "_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5,
        "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
        "use_dynamic_shifting": True})
    write_json(out_dir / "model_index.json", {
        "_class_name": pipeline, "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]})


def write_tiny_flux_krea(out_dir: Path, seed: int = 0) -> None:
    """``black-forest-labs/FLUX.1-Krea-dev`` layout: FLUX.1-dev's, DiT file flux1-krea-dev.safetensors."""
    write_tiny_flux(out_dir, seed, "flux1-krea-dev")


def write_tiny_flux_kontext(out_dir: Path, seed: int = 0) -> None:
    """``black-forest-labs/FLUX.1-Kontext-dev`` layout: FLUX.1-dev's, DiT file flux1-kontext-dev.safetensors."""
    write_tiny_flux(out_dir, seed, "flux1-kontext-dev", "FluxKontextPipeline")


def _tiny_wan_dit(in_ch: int = 16, out_ch: int = 16, image_dim: int | None = None):
    from diffusers import WanTransformer3DModel
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=in_ch,
                                 out_channels=out_ch, text_dim=32, freq_dim=256, ffn_dim=64, num_layers=2,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=image_dim,
                                 added_kv_proj_dim=32 if image_dim else None, rope_max_seq_len=32)


def _save_wan_dit(dit, folder: Path, model_type: str) -> None:
    """Wan-AI layout: diffusion_pytorch_model.safetensors in the original names + Wan's own config.json."""
    from .convert_wan import diffusers_to_wan_dit
    c = dit.config
    _save(diffusers_to_wan_dit(dit.state_dict()), folder, "diffusion_pytorch_model", 1, {
        "_class_name": "WanModel", "model_type": model_type, "dim": c.num_attention_heads * c.attention_head_dim,
        "num_heads": c.num_attention_heads, "ffn_dim": c.ffn_dim, "freq_dim": c.freq_dim, "in_dim": c.in_channels,
        "out_dim": c.out_channels, "num_layers": c.num_layers, "text_len": 512, "eps": c.eps})


def _write_wan_common(out_dir: Path, vae: str) -> None:
    """The files every Wan repo shares: UMT5 encoder, VAE (as the converted-safetensors repo ships them), tokenizer."""
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    from .convert_wan import diffusers_to_wan_vae, hf_to_wan_t5
    from .tokenizers import train_sentencepiece_tokenizer

    tok = train_sentencepiece_tokenizer(out_dir / "google" / "umt5-xxl")
    t5 = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                     feed_forward_proj="gated-gelu", tie_word_embeddings=False))
    _save(hf_to_wan_t5(t5.state_dict()), out_dir, "models_t5_umt5-xxl-enc-bf16")
    if vae == "2.1":
        model = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 temperal_downsample=[False, True, True])
    else:
        model = AutoencoderKLWan(base_dim=8, decoder_base_dim=16, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
                                 out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                                 latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
    _save(diffusers_to_wan_vae(model.state_dict(), num_res_blocks=1), out_dir, f"Wan{vae}_VAE")


def write_tiny_wan_t2v(out_dir: Path, seed: int = 0) -> None:
    """``Wan-AI/Wan2.1-T2V-1.3B`` layout (DiT in original names, UMT5, Wan2.1 VAE, google/umt5-xxl tokenizer)."""
    torch.manual_seed(seed)
    _save_wan_dit(_tiny_wan_dit(), out_dir, "t2v")
    _write_wan_common(out_dir, "2.1")


def write_tiny_wan_i2v(out_dir: Path, seed: int = 0) -> None:
    """``Wan-AI/Wan2.1-I2V-14B-480P`` layout: as T2V, DiT with image conditioning, plus the CLIP image encoder."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from .convert_wan import hf_to_wan_clip

    torch.manual_seed(seed)
    _save_wan_dit(_tiny_wan_dit(in_ch=36, image_dim=32), out_dir, "i2v")
    _write_wan_common(out_dir, "2.1")
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                          num_attention_heads=2, patch_size=14, image_size=28,
                                                          projection_dim=16, hidden_act="gelu", layer_norm_eps=1e-5))
    state = hf_to_wan_clip(clip.state_dict())
    # the real file also holds open-clip's XLM-RoBERTa text tower, which Wan does not use
    state.update({"log_scale": torch.zeros(()), "textual.token_embedding.weight": torch.randn(16, 8),
                  "textual.norm.weight": torch.ones(8)})
    _save(state, out_dir, "models_clip_open-clip-xlm-roberta-large-vit-huge-14")


def write_tiny_wan22_ti2v(out_dir: Path, seed: int = 0) -> None:
    """``Wan-AI/Wan2.2-TI2V-5B`` layout: DiT on 48-channel latents, Wan2.2 VAE."""
    torch.manual_seed(seed)
    _save_wan_dit(_tiny_wan_dit(in_ch=48, out_ch=48), out_dir, "ti2v")
    _write_wan_common(out_dir, "2.2")


def write_tiny_wan22_a14b(out_dir: Path, seed: int = 0) -> None:
    """``Wan-AI/Wan2.2-T2V-A14B`` layout: high_noise_model/ and low_noise_model/ DiTs, Wan2.1 VAE."""
    torch.manual_seed(seed)
    _save_wan_dit(_tiny_wan_dit(), out_dir / "high_noise_model", "t2v")
    _save_wan_dit(_tiny_wan_dit(), out_dir / "low_noise_model", "t2v")
    _write_wan_common(out_dir, "2.1")


def write_tiny_wan22_i2v_a14b(out_dir: Path, seed: int = 0) -> None:
    """``Wan-AI/Wan2.2-I2V-A14B`` layout: two image-to-video DiTs (VAE-embedded first frame, no CLIP image
    encoder) in high_noise_model/ and low_noise_model/, Wan2.1 VAE."""
    torch.manual_seed(seed)
    _save_wan_dit(_tiny_wan_dit(in_ch=36), out_dir / "high_noise_model", "i2v")
    _save_wan_dit(_tiny_wan_dit(in_ch=36), out_dir / "low_noise_model", "i2v")
    _write_wan_common(out_dir, "2.1")


TINY_PRESETS = {
    # preset name -> (family, real repository it mirrors, writer)
    "qwen-image": ("qwen_image", "Qwen/Qwen-Image", write_tiny_qwen_image),
    "qwen-image-edit": ("qwen_image", "Qwen/Qwen-Image-Edit", write_tiny_qwen_image_edit),
    "flux.1-dev": ("flux", "black-forest-labs/FLUX.1-dev", write_tiny_flux),
    "flux.1-krea-dev": ("flux", "black-forest-labs/FLUX.1-Krea-dev", write_tiny_flux_krea),
    "flux.1-kontext-dev": ("flux", "black-forest-labs/FLUX.1-Kontext-dev", write_tiny_flux_kontext),
    "wan2.1-t2v-1.3b": ("wan", "Wan-AI/Wan2.1-T2V-1.3B", write_tiny_wan_t2v),
    "wan2.1-t2v-14b": ("wan", "Wan-AI/Wan2.1-T2V-14B", write_tiny_wan_t2v),  # the 1.3B architecture, other sizes
    "wan2.1-i2v-14b": ("wan", "Wan-AI/Wan2.1-I2V-14B-480P", write_tiny_wan_i2v),
    "wan2.2-ti2v-5b": ("wan", "Wan-AI/Wan2.2-TI2V-5B", write_tiny_wan22_ti2v),
    "wan2.2-a14b": ("wan", "Wan-AI/Wan2.2-T2V-A14B", write_tiny_wan22_a14b),
    "wan2.2-i2v-a14b": ("wan", "Wan-AI/Wan2.2-I2V-A14B", write_tiny_wan22_i2v_a14b),
}


def _key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


def resolve_tiny_preset(name: str) -> str:
    """A tiny preset name in any spelling (``qwen_image`` = ``qwen-image``), or a family name or alias, which means
    its default twin (the first one its spec lists). An unknown name is a ModelConfigError naming the choices."""
    presets = {_key(p): p for p in TINY_PRESETS}
    if _key(name) in presets:
        return presets[_key(name)]
    from ..families import UnknownFamilyError, get_spec
    try:
        return get_spec(name).tiny_presets[0]
    except UnknownFamilyError:
        close = difflib.get_close_matches(_key(name), presets, n=1)
        raise ModelConfigError(f"Unknown tiny preset {name!r} (model.tiny_preset / --family)"
                               + (f"; did you mean {presets[close[0]]!r}?" if close else "")
                               + f" Available: {', '.join(sorted(TINY_PRESETS))} (or a family name, for its default "
                               "twin); \"\" uses real weights.") from None


def tiny_preset(name: str) -> tuple:
    """(family, real repository, writer) of a tiny preset (any name :func:`resolve_tiny_preset` takes)."""
    return TINY_PRESETS[resolve_tiny_preset(name)]


def write_tiny_model(preset: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny ``preset`` (any name :func:`resolve_tiny_preset` takes) into ``out_dir`` (rebuilt in a
    temporary sibling, then swapped in)."""
    family, repo, writer = tiny_preset(preset)
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as tmp:
        writer(tmp, seed=seed)
        write_text(tmp / "TINY_PRESET.md", TINY_NOTE.format(family=family, repo=repo))
    return out_dir


def is_tiny_preset(folder: str | Path) -> bool:
    return (Path(folder) / "TINY_PRESET.md").exists()


__all__ = ["write_tiny_model", "resolve_tiny_preset", "tiny_preset", "TINY_PRESETS", "is_tiny_preset"]
