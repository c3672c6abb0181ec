"""Qwen-Image's tiny twins: random tiny models in the ``Qwen/Qwen-Image`` (and ``-Edit``) repository layouts."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ...files import write_json
from ...models.safetensors_io import save_sharded
from ...models.tiny import write_config
from ...models.tokenizers import train_bpe_tokenizer
from .checkpoints import vl_model_to_checkpoint

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]

# Sizes of the tiny Qwen-Image twin; benchmarks pass real widths (e.g. one DiT block at 3072 = 24 x 128).
TINY_SIZES = {"dit_layers": 2, "dit_head_dim": 16, "dit_heads": 4, "rope_axes": (4, 6, 6), "text_hidden": 32,
                   "text_ffn": 64, "text_layers": 2, "text_heads": 2, "text_kv_heads": 2, "mrope": [2, 3, 3],
                   "vae_base_dim": 8, "vae_dim_mult": [1, 1, 1, 1], "vae_res_blocks": 1}


def write_tiny(out_dir: Path, seed: int = 0, sizes: dict | None = None) -> None:
    """``Qwen/Qwen-Image`` layout: transformer/ (sharded), text_encoder/ (sharded), vae/, tokenizer/, scheduler/."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration


    z = {**TINY_SIZES, **(sizes or {})}
    torch.manual_seed(seed)
    tokenizer = train_bpe_tokenizer(out_dir / "tokenizer", "Qwen2TokenizerFast", SPECIAL_TOKENS, "<|endoftext|>")
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
    write_config(folder, {"_class_name": "QwenImageTransformer2DModel", **dict(dit.config)})

    vae = AutoencoderKLQwenImage(base_dim=z["vae_base_dim"], z_dim=16, dim_mult=z["vae_dim_mult"],
                                 num_res_blocks=z["vae_res_blocks"], temperal_downsample=[False, True, True],
                                 latents_mean=[0.0] * 16, latents_std=[1.0] * 16)
    folder = out_dir / "vae"
    save_sharded(vae.state_dict(), folder, "diffusion_pytorch_model", num_shards=1)
    write_config(folder, {"_class_name": "AutoencoderKLQwenImage", **dict(vae.config)})

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
    save_sharded(vl_model_to_checkpoint(text_encoder.state_dict()), folder, "model", num_shards=2)
    config = te_config.to_dict()
    config["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
    write_config(folder, config)

    write_json(out_dir / "scheduler" / "scheduler_config.json", {
        "_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5,
        "max_image_seq_len": 8192, "max_shift": 0.9, "num_train_timesteps": 1000, "shift": 1.0,
        "shift_terminal": 0.02, "use_dynamic_shifting": True, "time_shift_type": "exponential"})
    write_json(out_dir / "model_index.json", {
        "_class_name": "QwenImagePipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "QwenImageTransformer2DModel"], "vae": ["diffusers", "AutoencoderKLQwenImage"]})


def write_tiny_edit(out_dir: Path, seed: int = 0) -> None:
    """``Qwen/Qwen-Image-Edit`` layout: the Qwen-Image folders plus processor/ (image processor + tokenizer)."""
    import json

    write_tiny(out_dir, seed)
    processor = out_dir / "processor"
    shutil.copytree(out_dir / "tokenizer", processor)
    write_processor_config(processor)
    index = json.loads((out_dir / "model_index.json").read_text())
    index.update({"_class_name": "QwenImageEditPipeline", "processor": ["transformers", "Qwen2VLProcessor"]})
    write_json(out_dir / "model_index.json", index)


def write_processor_config(folder: Path) -> None:
    """The twin's ``preprocessor_config.json``: Qwen2-VL's defaults with a small pixel range (32² to 256²)."""
    from transformers import Qwen2VLImageProcessor

    Qwen2VLImageProcessor(min_pixels=32 * 32, max_pixels=256 * 256).save_pretrained(str(folder))
