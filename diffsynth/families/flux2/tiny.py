"""FLUX.2's tiny twins: random tiny models in the ``black-forest-labs/FLUX.2-*`` repository layouts.

Sizes are tiny, depths are not all: the prompt path reads hidden layers (9, 18, 27) of Qwen3 and (10, 20, 30) of
Mistral, so the twins' text encoders have 28 and 31 layers (of width 16). The VAE has the real four resolution
levels (8x down, then the 2x2 patches), so the data rules are the real ones."""
from __future__ import annotations

from pathlib import Path

import torch

from ...files import write_json
from ...models.tiny import save_model
from ...models.tokenizers import train_bpe_tokenizer
from .checkpoints import mistral_model_to_checkpoint

TEXT_HIDDEN = 16
QWEN3_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
# Qwen3's chat template, reduced to what FLUX.2-klein renders: one user turn, the generation prompt, and the empty
# thinking block that enable_thinking=False adds
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}")
MISTRAL_SPECIAL = ["<pad>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]"]
# Mistral-Small-3's template, reduced to a system and a user turn with structured (list) content
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'][0]['text'] %}{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' + text + '[/INST]' }}{%- endif %}{%- endfor %}")


def _dit(joint_dim: int, guidance: bool):
    from diffusers import Flux2Transformer2DModel
    return Flux2Transformer2DModel(patch_size=1, in_channels=128, num_layers=1, num_single_layers=2,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=joint_dim,
                                   timestep_guidance_channels=32, mlp_ratio=3.0, axes_dims_rope=(4, 4, 4, 4),
                                   guidance_embeds=guidance)


def _vae():
    from diffusers import AutoencoderKLFlux2
    vae = AutoencoderKLFlux2(block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=32,
                             norm_num_groups=32)
    with torch.no_grad():  # non-trivial latent statistics, so the normalisation is exercised
        vae.bn.running_mean.copy_(0.1 * torch.randn(vae.bn.num_features))
        vae.bn.running_var.copy_(0.5 + torch.rand(vae.bn.num_features))
    return vae


def _common(out_dir: Path, dit, vae, dit_shards: int) -> None:
    save_model(dit.state_dict(), out_dir / "transformer", "diffusion_pytorch_model", dit_shards,
               {"_class_name": "Flux2Transformer2DModel", **dict(dit.config)})
    save_model(vae.state_dict(), out_dir / "vae", "diffusion_pytorch_model", 1,
               {"_class_name": "AutoencoderKLFlux2", **dict(vae.config)})
    write_json(out_dir / "scheduler" / "scheduler_config.json", {
        "_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5,
        "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
        "use_dynamic_shifting": True, "time_shift_type": "exponential"})


def qwen3_tokenizer(folder: Path):
    tok = train_bpe_tokenizer(folder, "Qwen2TokenizerFast", QWEN3_SPECIAL, "<|endoftext|>")
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    tok.save_pretrained(str(folder))
    return tok


def mistral_tokenizer(folder: Path):
    tok = train_bpe_tokenizer(folder, "PreTrainedTokenizerFast", MISTRAL_SPECIAL, "</s>")
    tok.bos_token, tok.pad_token = "<s>", "<pad>"
    tok.chat_template = MISTRAL_CHAT_TEMPLATE
    tok.save_pretrained(str(folder))
    return tok


def write_klein(out_dir: Path, seed: int = 0, tie_embeddings: bool = True, distilled: bool = True) -> None:
    """``black-forest-labs/FLUX.2-klein-4B`` layout: transformer/, text_encoder/ (Qwen3ForCausalLM, 2 shards), vae/,
    tokenizer/ (with its chat template), scheduler/, model_index.json. The 9B release unties lm_head."""
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    tok = qwen3_tokenizer(out_dir / "tokenizer")
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    _common(out_dir, _dit(3 * TEXT_HIDDEN, guidance=False), _vae(), 1)
    cfg = Qwen3Config(vocab_size=512, hidden_size=TEXT_HIDDEN, intermediate_size=32, num_hidden_layers=28,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
                      tie_word_embeddings=tie_embeddings, bos_token_id=pad, eos_token_id=pad, pad_token_id=pad)
    model = Qwen3Model(cfg)
    state = {"model." + k: v for k, v in model.state_dict().items()}  # Qwen3ForCausalLM's names
    if not tie_embeddings:
        state["lm_head.weight"] = torch.randn(512, TEXT_HIDDEN) * 0.02
    save_model(state, out_dir / "text_encoder", "model", 2, {**cfg.to_dict(), "architectures": ["Qwen3ForCausalLM"]})
    write_json(out_dir / "model_index.json", {
        "_class_name": "Flux2KleinPipeline", "is_distilled": distilled,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3ForCausalLM"], "tokenizer": ["transformers", "Qwen2TokenizerFast"],
        "transformer": ["diffusers", "Flux2Transformer2DModel"], "vae": ["diffusers", "AutoencoderKLFlux2"]})


def write_klein_4b(out_dir: Path, seed: int = 0) -> None:
    write_klein(out_dir, seed)


def write_klein_9b(out_dir: Path, seed: int = 0) -> None:
    write_klein(out_dir, seed, tie_embeddings=False)


def write_klein_base_4b(out_dir: Path, seed: int = 0) -> None:
    write_klein(out_dir, seed, distilled=False)


def write_klein_base_9b(out_dir: Path, seed: int = 0) -> None:
    write_klein(out_dir, seed, tie_embeddings=False, distilled=False)


def write_dev(out_dir: Path, seed: int = 0) -> None:
    """``black-forest-labs/FLUX.2-dev`` layout: transformer/ (sharded), text_encoder/ (Mistral3ForConditionalGeneration
    in the repository's ``language_model.model.*`` names, sharded), vae/, tokenizer/, scheduler/, model_index.json."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    torch.manual_seed(seed)
    tok = mistral_tokenizer(out_dir / "tokenizer")
    _common(out_dir, _dit(3 * TEXT_HIDDEN, guidance=True), _vae(), 2)
    cfg = Mistral3Config(
        text_config={"model_type": "mistral", "hidden_size": TEXT_HIDDEN, "intermediate_size": 32,
                     "num_hidden_layers": 31, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
                     "vocab_size": 512, "max_position_embeddings": 1024, "tie_word_embeddings": False,
                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                     "pad_token_id": tok.pad_token_id},
        vision_config={"model_type": "pixtral", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "head_dim": 8, "image_size": 56, "patch_size": 14},
        image_token_index=tok.convert_tokens_to_ids("[IMG]"), multimodal_projector_bias=False,
        spatial_merge_size=2)
    model = Mistral3ForConditionalGeneration(cfg)
    save_model(mistral_model_to_checkpoint(model.state_dict()), out_dir / "text_encoder", "model", 2,
               {**cfg.to_dict(), "architectures": ["Mistral3ForConditionalGeneration"]})
    write_json(out_dir / "model_index.json", {
        "_class_name": "Flux2Pipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Mistral3ForConditionalGeneration"],
        "tokenizer": ["transformers", "PixtralProcessor"],
        "transformer": ["diffusers", "Flux2Transformer2DModel"], "vae": ["diffusers", "AutoencoderKLFlux2"]})
