"""FLUX.1-dev: diffusers FluxTransformer2DModel DiT, AutoencoderKL VAE, CLIP-L (pooled
prompt embedding) and T5-XXL (per-token prompt embedding), each with its own tokenizer.

What the DiT sees matches DiffSynth's FLUX pipeline in training: packed latents (2×2 patches as tokens),
``img_ids`` (0, row, col) per token, ``txt_ids`` all zeros, T5 padded to 512 tokens, CLIP pooled over 77
tokens, embedded guidance 1 (3.5 is the inference default) and the timestep as t/1000.

LoRA names: DiffSynth's own FLUX DiT fuses q/k/v (``a_to_qkv``) and names modules differently from diffusers.
:func:`map_lora_targets` turns DiffSynth's ``--lora_target_modules`` into diffusers module names; the spec's
``opensource_lora_format`` (kohya) makes ``--align_to_opensource_format`` fuse the separate q/k/v LoRAs back into
one per fused BFL layer (``models/convert_flux.lora_to_bfl``).
"""
from __future__ import annotations

import re

import torch
from PIL import Image

from ...models.components import load_tokenizer
from ...models.model_config import fetch, parse_path_or_model_id
from ...sampling import euler_sample
from ...sigmas import sampling_grid, shifted_grid
from ..base import Family
from ..images import image_to_tensor, pack_latents, tensor_to_image, unpack_latents
from . import blocks, checkpoints, real_configs, tiny
from .convert import (diffusers_to_bfl_dit, diffusers_to_diffsynth_dit, lora_names_without_model, lora_to_bfl,
                      lora_to_diffsynth)

SHIFT, SIGMA_END = 3.0, 0.003 / 1.002  # DiffSynth's "FLUX.1" scheduler template
DEFAULT_TOKENIZER_1 = "black-forest-labs/FLUX.1-dev:tokenizer/"     # CLIP
DEFAULT_TOKENIZER_2 = "black-forest-labs/FLUX.1-dev:tokenizer_2/"   # T5
CLIP_SEQUENCE_LENGTH = 77
T5_SEQUENCE_LENGTH = 512        # DiffSynth's training value (t5_sequence_length=512)
TRAIN_GUIDANCE = 1.0            # embedded guidance during training
SAMPLE_GUIDANCE = 3.5           # FLUX.1-dev's inference default
# DiffSynth's FLUX LoRA recipe, in DiffSynth's own module names (translated by map_lora_targets).
LORA_TARGETS = ("a_to_qkv,b_to_qkv,ff_a.0,ff_a.2,ff_b.0,ff_b.2,a_to_out,b_to_out,proj_out,norm.linear,"
                "norm1_a.linear,norm1_b.linear,to_qkv_mlp")

# ------------------------------------------------------------------------------------------ LoRA names
# DiffSynth FLUX DiT module -> (diffusers block list, module names inside each block). DiffSynth's
# `blocks.N` are diffusers' `transformer_blocks.N`, its `single_blocks.N` are `single_transformer_blocks.N`.
DIFFSYNTH_TO_DIFFUSERS = {
    "a_to_qkv": ("transformer_blocks", ("attn.to_q", "attn.to_k", "attn.to_v")),
    "b_to_qkv": ("transformer_blocks", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    "a_to_out": ("transformer_blocks", ("attn.to_out.0",)),
    "b_to_out": ("transformer_blocks", ("attn.to_add_out",)),
    "ff_a.0": ("transformer_blocks", ("ff.net.0.proj",)),
    "ff_a.2": ("transformer_blocks", ("ff.net.2",)),
    "ff_b.0": ("transformer_blocks", ("ff_context.net.0.proj",)),
    "ff_b.2": ("transformer_blocks", ("ff_context.net.2",)),
    "norm1_a.linear": ("transformer_blocks", ("norm1.linear",)),
    "norm1_b.linear": ("transformer_blocks", ("norm1_context.linear",)),
    "norm.linear": ("single_transformer_blocks", ("norm.linear",)),
    "to_qkv_mlp": ("single_transformer_blocks", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
    "proj_out": ("single_transformer_blocks", ("proj_out",)),  # not the DiT's final proj_out, as in DiffSynth
}
# DiffSynth also accepts the dotted forms (`attn.a_to_qkv`) its converter table uses.
_DIFFSYNTH_ALIASES = {f"attn.{k}": k for k in ("a_to_qkv", "b_to_qkv", "a_to_out", "b_to_out")}


def map_lora_targets(model: torch.nn.Module, targets: list[str]) -> list[str]:
    """DiffSynth FLUX target names -> full diffusers module names of ``model``; other names pass unchanged.

    Full names (``transformer_blocks.3.attn.to_q``) rather than suffixes, because a diffusers suffix such as
    ``attn.to_q`` exists in both block lists while DiffSynth's ``a_to_qkv`` means the double blocks only."""
    out: list[str] = []
    for target in targets:
        key = _DIFFSYNTH_ALIASES.get(target, target)
        if key not in DIFFSYNTH_TO_DIFFUSERS:
            out.append(target)
            continue
        blocks, names = DIFFSYNTH_TO_DIFFUSERS[key]
        for i in range(len(getattr(model, blocks))):
            out += [f"{blocks}.{i}.{name}" for name in names]
    out = list(dict.fromkeys(out))  # drop duplicates, keep order
    if len(targets) == 1 and len(out) > 1:
        # one target stays one string (training turns it into peft's regex full-match): an alternation
        return ["|".join(re.escape(name) for name in out)]
    return out


# ------------------------------------------------------------------------------------------ pipeline

def latent_image_ids(height: int, width: int, device=None, index: int = 0) -> torch.Tensor:
    """(height·width, 3) position ids of the packed tokens: (index, row, col), as diffusers/DiffSynth build them.

    ``index`` is 0 for the image being denoised and 1 for every reference image (FLUX.1-Kontext)."""
    ids = torch.zeros(height, width, 3, device=device)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(height, device=device)[:, None]
    ids[..., 2] = torch.arange(width, device=device)[None, :]
    return ids.reshape(height * width, 3)


def train_sigmas(n: int) -> torch.Tensor:
    return shifted_grid(n, SHIFT, end=SIGMA_END, drop_last=False)


def inference_sigmas(num_steps: int) -> torch.Tensor:
    """DiffSynth's FLUX.1 inference grid: linspace(1, 0.003/1.002) with shift 3, then 0."""
    return sampling_grid(shifted_grid(num_steps, SHIFT, end=SIGMA_END, drop_last=False))


class Flux(Family):
    name = "flux"
    model_family = "flux"
    aliases = ("flux1", "flux_1", "flux1_dev", "flux1_krea_dev")
    summary = "FLUX.1-dev / Krea-dev (12B MMDiT, CLIP-L + T5-XXL); kontext_images selects FLUX.1-Kontext"
    model_id_patterns = ("flux.1", "flux1-")
    component_kinds = checkpoints.KINDS
    real_models = real_configs.REAL_MODELS
    weight_files = real_configs.WEIGHT_FILES
    tiny_twins = {"flux.1-dev": ("black-forest-labs/FLUX.1-dev", tiny.write_tiny),
                  "flux.1-krea-dev": ("black-forest-labs/FLUX.1-Krea-dev", tiny.write_tiny_krea)}
    block_inputs = blocks.BLOCK_INPUTS
    text_tokens = blocks.TEXT_TOKENS
    # data: the default DataRules (sides of multiples of 16: VAE 8 x 2x2 patches)
    encoders = ("text_encoder", "text_encoder_2")
    sample_options = ("embedded_guidance",)  # sample.embedded_guidance: FLUX.1's distilled guidance
    lora_targets = LORA_TARGETS
    opensource_lora_format = "kohya"
    lora_to_original = staticmethod(lora_to_bfl)
    original_state_dict = staticmethod(diffusers_to_bfl_dit)
    # DiffSynth's FluxDiT renames BFL's modules and keeps their fusion (a_to_qkv, to_qkv_mlp)
    lora_to_diffsynth = staticmethod(lora_to_diffsynth)
    diffsynth_state_dict = staticmethod(diffusers_to_diffsynth_dit)
    lora_names_without_model = staticmethod(lora_names_without_model)
    train_sigmas = staticmethod(train_sigmas)

    @classmethod
    def map_lora_targets(cls, model: torch.nn.Module, targets: list[str]) -> list[str]:
        return map_lora_targets(model, targets)

    @classmethod
    def auxiliary_entries(cls, config) -> dict[str, str]:
        return {"tokenizer_1": config.model.tokenizer_1_path or DEFAULT_TOKENIZER_1,
                "tokenizer_2": config.model.tokenizer_2_path or DEFAULT_TOKENIZER_2}

    @classmethod
    def load_pipeline(cls, config, dtype: torch.dtype, device: torch.device | str = "cpu",
                      role: str = "full") -> "Flux":
        """Fetch and detect every model entry of ``config.model``; load DiT, VAE, CLIP, T5 and both tokenizers."""
        m = config.model
        modules, sources = cls.load_models(config, dtype, role,
                                           required=("dit", "vae", "text_encoder", "text_encoder_2"))
        tokenizer_1 = load_tokenizer(fetch(parse_path_or_model_id(m.tokenizer_1_path, DEFAULT_TOKENIZER_1)))
        tokenizer_2 = load_tokenizer(fetch(parse_path_or_model_id(m.tokenizer_2_path, DEFAULT_TOKENIZER_2)))
        pipe = cls(modules["dit"], modules["vae"], modules["text_encoder"], modules["text_encoder_2"],
                   tokenizer_1, tokenizer_2, dtype)
        pipe.component_sources = sources
        pipe.role = role
        return pipe.place(device)

    def __init__(self, dit, vae, text_encoder, text_encoder_2, tokenizer_1, tokenizer_2,
                 dtype: torch.dtype = torch.float32):
        super().__init__(dtype, dit=dit, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                         tokenizer_1=tokenizer_1, tokenizer_2=tokenizer_2)
        # None when training from the cache without a VAE (no samples are decoded then)
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else None

    # modules_without_gradient: none. Every DiT parameter gets a gradient (the last single block's text tokens
    # are dropped, but its layers are shared with the image tokens); tests/test_family_flux.py checks it.

    # ---------------------------------------------------------------- encoders (no gradient)
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 embedding (1, T5_SEQUENCE_LENGTH, D), CLIP pooled embedding (1, D_clip))."""
        clip_ids = self.tokenizer_1(prompt, padding="max_length", max_length=CLIP_SEQUENCE_LENGTH, truncation=True,
                                    return_tensors="pt")["input_ids"].to(self.device)
        pooled = self.text_encoder(input_ids=clip_ids).pooler_output
        t5_ids = self.tokenizer_2(prompt, padding="max_length", max_length=T5_SEQUENCE_LENGTH, truncation=True,
                                  return_tensors="pt")["input_ids"].to(self.device)
        prompt_emb = self.text_encoder_2(input_ids=t5_ids).last_hidden_state
        return prompt_emb.to(self.torch_dtype), pooled.to(self.torch_dtype)

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """Deterministic VAE latents (the mode), then (z - shift_factor) · scaling_factor: (1, 16, H/8, W/8)."""
        pixels = image_to_tensor(image, self.torch_dtype, self.device)
        latents = self.vae.encode(pixels).latent_dist.mode()
        c = self.vae.config
        return ((latents - c.shift_factor) * c.scaling_factor).to(self.torch_dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> Image.Image:
        c = self.vae.config
        pixels = self.vae.decode((latents / c.scaling_factor + c.shift_factor).to(self.torch_dtype)).sample
        return tensor_to_image(pixels[0])

    def encode(self, item: dict) -> dict:
        image, prompt = self.image_and_prompt(item)
        prompt_emb, pooled = self.encode_prompt(prompt)
        return {"latents": self.encode_image(image), "prompt_emb": prompt_emb, "pooled_prompt_emb": pooled}

    # ---------------------------------------------------------------- denoiser
    def conditioning_latents(self, inputs: dict) -> list[torch.Tensor]:
        """Clean reference latents appended to the image tokens (FLUX.1-Kontext); none for text-to-image."""
        return []

    def predict(self, noisy_latents: torch.Tensor, timestep: torch.Tensor, inputs: dict) -> torch.Tensor:
        b, _, h, w = noisy_latents.shape
        prompt_emb = inputs["prompt_emb"]
        guidance = torch.full((b,), float(inputs.get("guidance", TRAIN_GUIDANCE)), device=self.device,
                              dtype=self.torch_dtype)
        cond = self.conditioning_latents(inputs)
        # reference tokens follow the image tokens; their ids carry 1 as first coordinate (DiffSynth's Kontext unit)
        tokens = torch.cat([pack_latents(x.to(self.torch_dtype)) for x in [noisy_latents, *cond]], dim=1)
        ids = torch.cat([latent_image_ids(h // 2, w // 2, self.device)]
                        + [latent_image_ids(c.shape[2] // 2, c.shape[3] // 2, self.device, index=1) for c in cond])
        out = self.dit(
            hidden_states=tokens,
            encoder_hidden_states=prompt_emb,
            pooled_projections=inputs["pooled_prompt_emb"],
            timestep=(timestep / 1000).to(self.torch_dtype).reshape(-1).expand(b).to(self.device),  # DiT takes t/1000
            img_ids=ids.to(self.torch_dtype),
            txt_ids=torch.zeros(prompt_emb.shape[1], 3, device=self.device, dtype=self.torch_dtype),
            guidance=guidance,
            return_dict=False,
        )[0]
        return unpack_latents(out[:, : (h // 2) * (w // 2)], h, w)  # only the image tokens are predicted

    @torch.no_grad()
    def sample_inputs(self, prompt: str, height: int = 0, width: int = 0, num_frames: int = 1) -> dict:
        """Conditioning of a save-point sample (the Kontext variant adds its reference images)."""
        prompt_emb, pooled = self.encode_prompt(prompt)
        return {"prompt_emb": prompt_emb, "pooled_prompt_emb": pooled}

    @torch.no_grad()
    def render(self, inputs: dict, seed: int, height: int, width: int, num_inference_steps: int,
               num_frames: int = 1, cfg_scale: float = 1.0, negative_inputs: dict | None = None,
               embedded_guidance: float = SAMPLE_GUIDANCE) -> Image.Image:
        """Euler sampling with embedded guidance (3.5: no CFG, as FLUX.1-dev is run; DiffSynth's defaults), and
        true CFG with the negative prompt when cfg_scale != 1."""
        step = 2 * self.vae_factor  # latent sides must be even for the 2x2 packing
        h, w = max(step, height // step * step) // self.vae_factor, max(step, width // step * step) // self.vae_factor
        generator = torch.Generator().manual_seed(seed)
        channels = self.vae.config.latent_channels
        latents = torch.randn((1, channels, h, w), generator=generator).to(self.device, self.torch_dtype)
        inputs = {**inputs, "guidance": embedded_guidance}
        if negative_inputs is not None:
            negative_inputs = {**negative_inputs, "guidance": embedded_guidance}
        latents = euler_sample(self.predict, latents, inference_sigmas(num_inference_steps), inputs, cfg_scale,
                               negative_inputs)
        return self.decode(latents)
