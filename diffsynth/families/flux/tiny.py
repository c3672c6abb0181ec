"""FLUX.1's tiny twins: random tiny models in the ``black-forest-labs/FLUX.1-*`` repository layouts."""
from __future__ import annotations

from pathlib import Path

import torch

from ...files import write_json
from ...models.components import rope_axes
from ...models.tiny import save_model
from ...models.tokenizers import train_clip_tokenizer, train_sentencepiece_tokenizer
from .convert import diffusers_to_bfl_dit, diffusers_to_bfl_vae


def write_tiny(out_dir: Path, seed: int = 0, dit_file: str = "flux1-dev", pipeline: str = "FluxPipeline") -> None:
    """``black-forest-labs/FLUX.1-dev`` layout: flux1-dev.safetensors and ae.safetensors (BFL names), the same in
    diffusers layout under transformer/ and vae/, text_encoder/ (CLIP-L), text_encoder_2/ (T5, sharded),
    tokenizer/ (byte-level BPE) and tokenizer_2/ (SentencePiece). Krea-dev and Kontext-dev ship the same layout
    and DiT architecture under their own DiT file name (``dit_file``) and pipeline class."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel


    torch.manual_seed(seed)
    clip_tok = train_clip_tokenizer(out_dir / "tokenizer")
    t5_tok = train_sentencepiece_tokenizer(out_dir / "tokenizer_2")
    hidden = 32
    dit = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2,
                                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=hidden,
                                 pooled_projection_dim=hidden, guidance_embeds=True, axes_dims_rope=rope_axes(16))
    save_model(diffusers_to_bfl_dit(dit.state_dict()), out_dir, dit_file)
    save_model(dit.state_dict(), out_dir / "transformer", "diffusion_pytorch_model", 2,
          {"_class_name": "FluxTransformer2DModel", **dict(dit.config)})
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(32, 32), layers_per_block=1, latent_channels=16, norm_num_groups=32,
                        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159)
    save_model(diffusers_to_bfl_vae(vae.state_dict()), out_dir, "ae")
    save_model(vae.state_dict(), out_dir / "vae", "diffusion_pytorch_model", 1, {"_class_name": "AutoencoderKL", **dict(vae.config)})
    clip_cfg = CLIPTextConfig(vocab_size=len(clip_tok), hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                              projection_dim=hidden, bos_token_id=clip_tok.bos_token_id,
                              eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id)
    clip = CLIPTextModel(clip_cfg)
    save_model({"text_model." + k: v for k, v in clip.state_dict().items()}, out_dir / "text_encoder", "model", 1,
          {**clip_cfg.to_dict(), "architectures": ["CLIPTextModel"]})
    t5_cfg = T5Config(vocab_size=len(t5_tok), d_model=hidden, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0)
    t5 = T5EncoderModel(t5_cfg)
    t5_state = {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}  # = shared.weight
    save_model(t5_state, out_dir / "text_encoder_2", "model", 2, {**t5_cfg.to_dict(), "architectures": ["T5EncoderModel"]})
    write_json(out_dir / "scheduler" / "scheduler_config.json", {
        "_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5,
        "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
        "use_dynamic_shifting": True})
    write_json(out_dir / "model_index.json", {
        "_class_name": pipeline, "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]})


def write_tiny_krea(out_dir: Path, seed: int = 0) -> None:
    """``black-forest-labs/FLUX.1-Krea-dev`` layout: FLUX.1-dev's, DiT file flux1-krea-dev.safetensors."""
    write_tiny(out_dir, seed, "flux1-krea-dev")


def write_tiny_kontext(out_dir: Path, seed: int = 0) -> None:
    """``black-forest-labs/FLUX.1-Kontext-dev`` layout: FLUX.1-dev's, DiT file flux1-kontext-dev.safetensors."""
    write_tiny(out_dir, seed, "flux1-kontext-dev", "FluxKontextPipeline")


