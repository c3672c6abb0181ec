"""Tiny presets: random-initialised tiny models of the real architectures, written in the real repository
layouts (folder and file names, sharded safetensors with index, config.json, tokenizer).

They exist so that the fetch -> detect -> load path that serves a real checkpoint runs in tests and in the
offline demo. A tiny preset learns nothing useful; every folder carries ``TINY_PRESET.md`` saying so.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..files import write_json, write_text
from .safetensors_io import save_sharded

TINY_NOTE = ("# Tiny preset ({family})\n\nRandom-initialised tiny model in the real `{repo}` layout, written by "
             "`diffsynth tiny-model`. It is a test/demo device, not a trained model: results from it mean nothing.\n")


def _write_config(folder: Path, config: dict) -> None:
    write_json(folder / "config.json", config)


def write_tiny_qwen_image(out_dir: Path, seed: int = 0) -> None:
    """``Qwen/Qwen-Image`` layout: transformer/ (sharded), text_encoder/ (sharded), vae/, tokenizer/, scheduler/."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from .components import qwen_vl_model_to_checkpoint
    from .tokenizers import train_qwen_tokenizer

    torch.manual_seed(seed)
    tokenizer = train_qwen_tokenizer(out_dir / "tokenizer")
    special = {t: tokenizer.convert_tokens_to_ids(t) for t in
               ("<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")}
    text_hidden = 32
    vocab = 512
    assert len(tokenizer) <= vocab

    dit = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                                      attention_head_dim=16, num_attention_heads=4, joint_attention_dim=text_hidden,
                                      axes_dims_rope=(4, 6, 6))
    folder = out_dir / "transformer"
    save_sharded(dit.state_dict(), folder, "diffusion_pytorch_model", num_shards=3)
    _write_config(folder, {"_class_name": "QwenImageTransformer2DModel", **dict(dit.config)})

    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 temperal_downsample=[False, True, True],
                                 latents_mean=[0.0] * 16, latents_std=[1.0] * 16)
    folder = out_dir / "vae"
    save_sharded(vae.state_dict(), folder, "diffusion_pytorch_model", num_shards=1)
    _write_config(folder, {"_class_name": "AutoencoderKLQwenImage", **dict(vae.config)})

    te_config = Qwen2_5_VLConfig(
        text_config={"hidden_size": text_hidden, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": vocab,
                     "rope_scaling": {"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
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


TINY_PRESETS = {
    # preset name -> (family, real repository it mirrors, writer)
    "qwen-image": ("qwen_image", "Qwen/Qwen-Image", write_tiny_qwen_image),
}


def write_tiny_model(preset: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny ``preset`` into ``out_dir`` (rebuilt in a temporary sibling, then swapped in)."""
    if preset not in TINY_PRESETS:
        raise ValueError(f"Unknown tiny preset {preset!r}; available: {sorted(TINY_PRESETS)}")
    family, repo, writer = TINY_PRESETS[preset]
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writer(tmp, seed=seed)
    write_text(tmp / "TINY_PRESET.md", TINY_NOTE.format(family=family, repo=repo))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def is_tiny_preset(folder: str | Path) -> bool:
    return (Path(folder) / "TINY_PRESET.md").exists()


__all__ = ["write_tiny_model", "TINY_PRESETS", "is_tiny_preset"]
