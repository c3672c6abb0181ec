"""Z-Image's tiny twins: random tiny models in the ``Tongyi-MAI/Z-Image-Turbo`` (and ``Z-Image``,
``Z-Image-Omni-Base``) repository layouts: transformer/ (sharded), text_encoder/ (sharded Qwen3ForCausalLM
checkpoint), vae/, tokenizer/ (with a chat template), scheduler/; Omni-Base adds siglip/."""
from __future__ import annotations

from pathlib import Path

import torch

from ...files import write_json
from ...models.safetensors_io import save_sharded
from ...models.tiny import write_config
from ...models.tokenizers import train_bpe_tokenizer
from .convert import model_to_text_encoder

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<think>", "</think>"]
# Qwen3's chat template, reduced to what a prompt needs: one message per turn, and the empty thinking block only
# when enable_thinking is false (DiffSynth passes enable_thinking=True: no block)
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}")

# Sizes of the tiny twin; the parity rows and benchmarks pass real widths
TINY_SIZES = {"dim": 64, "layers": 2, "refiner_layers": 1, "heads": 4, "axes": [4, 6, 6], "text_hidden": 32,
              "text_ffn": 64, "text_layers": 3, "text_heads": 4, "text_kv_heads": 2, "text_head_dim": 8,
              "vae_channels": [32, 32], "siglip_hidden": 32}


def write_tiny(out_dir: Path, seed: int = 0, sizes: dict | None = None, omni: bool = False) -> None:
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    z = {**TINY_SIZES, **(sizes or {})}
    torch.manual_seed(seed)
    tokenizer = train_bpe_tokenizer(out_dir / "tokenizer", "Qwen2TokenizerFast", SPECIAL_TOKENS, "<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(out_dir / "tokenizer"))
    vocab = 512
    assert len(tokenizer) <= vocab
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")

    dit = ZImageTransformer2DModel(
        in_channels=16, dim=z["dim"], n_layers=z["layers"], n_refiner_layers=z["refiner_layers"], n_heads=z["heads"],
        n_kv_heads=z["heads"], cap_feat_dim=z["text_hidden"], axes_dims=list(z["axes"]), axes_lens=[1536, 512, 512],
        siglip_feat_dim=z["siglip_hidden"] if omni else None)
    # diffusers initialises the pad tokens and final layer to zero-ish values: random weights make the twin learn
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if p.abs().sum() == 0 and name.endswith(("pad_token", "weight")):
                p.normal_(0, 0.02)
    save_sharded(dit.state_dict(), out_dir / "transformer", "diffusion_pytorch_model", num_shards=2)
    write_config(out_dir / "transformer", {"_class_name": "ZImageTransformer2DModel", **dict(dit.config)})

    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * len(z["vae_channels"]),
                        up_block_types=["UpDecoderBlock2D"] * len(z["vae_channels"]),
                        block_out_channels=z["vae_channels"], layers_per_block=1, latent_channels=16,
                        norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                        use_post_quant_conv=False)
    save_sharded(vae.state_dict(), out_dir / "vae", "diffusion_pytorch_model", num_shards=1)
    write_config(out_dir / "vae", {"_class_name": "AutoencoderKL", **dict(vae.config)})

    te_config = Qwen3Config(vocab_size=vocab, hidden_size=z["text_hidden"], intermediate_size=z["text_ffn"],
                            num_hidden_layers=z["text_layers"], num_attention_heads=z["text_heads"],
                            num_key_value_heads=z["text_kv_heads"], head_dim=z["text_head_dim"],
                            max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=pad,
                            eos_token_id=pad, pad_token_id=pad)
    text_encoder = Qwen3ForCausalLM(te_config)
    state = {k: v for k, v in text_encoder.state_dict().items() if k != "lm_head.weight"}  # tied to the embedding
    save_sharded(state, out_dir / "text_encoder", "model", num_shards=2)
    config = te_config.to_dict()
    config["architectures"] = ["Qwen3ForCausalLM"]
    write_config(out_dir / "text_encoder", config)

    if omni:
        from transformers import Siglip2VisionConfig, Siglip2VisionModel
        sig_config = Siglip2VisionConfig(hidden_size=z["siglip_hidden"], intermediate_size=2 * z["siglip_hidden"],
                                         num_hidden_layers=1, num_attention_heads=2, num_patches=64, patch_size=16)
        siglip = Siglip2VisionModel(sig_config)
        save_sharded(siglip.state_dict(), out_dir / "siglip", "model", num_shards=1)
        write_config(out_dir / "siglip", {**sig_config.to_dict(), "architectures": ["Siglip2VisionModel"]})

    write_json(out_dir / "scheduler" / "scheduler_config.json", {
        "_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
        "use_dynamic_shifting": False})
    write_json(out_dir / "model_index.json", {
        "_class_name": "ZImagePipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3Model"], "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "ZImageTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]})


def write_tiny_omni(out_dir: Path, seed: int = 0, sizes: dict | None = None) -> None:
    write_tiny(out_dir, seed, sizes, omni=True)


CONTROLNET_FILES = ("Z-Image-Turbo-Fun-Controlnet-Union-2.1", "Z-Image-Turbo-Fun-Controlnet-Union-2.1-8steps",
                    "Z-Image-Turbo-Fun-Controlnet-Tile-2.1-8steps")


def write_tiny_controlnet(out_dir: Path, seed: int = 0, sizes: dict | None = None) -> None:
    """The Fun-ControlNet recipes' files in one folder: the Z-Image-Turbo layout plus PAI's three ControlNet files
    at the root (Union-2.1, Union-2.1-8steps, Tile-2.1-8steps; each its own random weights), in the 2.1 layout:
    a control block beside every second DiT layer, one control refiner block per noise refiner layer."""
    from diffusers import ZImageControlNetModel

    z = {**TINY_SIZES, **(sizes or {})}
    write_tiny(out_dir, seed, sizes)
    for k, stem in enumerate(CONTROLNET_FILES):
        torch.manual_seed(seed + 1 + k)
        controlnet = ZImageControlNetModel(
            control_layers_places=list(range(0, z["layers"], 2)),
            control_refiner_layers_places=list(range(z["refiner_layers"])), control_in_dim=33,
            add_control_noise_refiner="control_noise_refiner", dim=z["dim"], n_refiner_layers=z["refiner_layers"],
            n_heads=z["heads"], n_kv_heads=z["heads"])
        # diffusers zero-initialises before_proj/after_proj: random ones let the control image act on the twin
        with torch.no_grad():
            for name, p in controlnet.named_parameters():
                if name.endswith(("before_proj.weight", "after_proj.weight")):
                    p.normal_(0, 0.02)
        save_sharded(controlnet.state_dict(), out_dir, stem, num_shards=1)


# keep the text encoder checkpoint writer importable for tests (Qwen3Model keys -> checkpoint keys)
__all__ = ["write_tiny", "write_tiny_omni", "write_tiny_controlnet", "model_to_text_encoder", "TINY_SIZES", "CHAT_TEMPLATE"]
