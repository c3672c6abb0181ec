"""Qwen-Image (reference spec §5.1): QwenImageTransformer2DModel DiT, AutoencoderKLQwenImage VAE,
Qwen2.5-VL text encoder, Qwen2 tokenizer."""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ..models.components import load_tokenizer
from ..models.model_config import fetch, parse_model_configs, parse_path_or_model_id
from .base import Pipeline, load_components

FAMILY = "qwen_image"
HEIGHT_FACTOR = WIDTH_FACTOR = 16  # image sides are floored to this multiple (VAE 8 x 2x2 patches)
TIME_DIVISION_FACTOR, TIME_DIVISION_REMAINDER = 4, 1
VIDEO_KEYS: tuple[str, ...] = ()
DEFAULT_TOKENIZER = "Qwen/Qwen-Image:tokenizer/"
# DiffSynth's (and the official) text-to-image prompt template; the prefix tokens are dropped after encoding.
PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
MAX_PROMPT_TOKENS = 4096
# Every Linear of a Qwen-Image block that DiffSynth's recipe puts LoRA on.
LORA_TARGETS = "to_q,to_k,to_v,add_q_proj,add_k_proj,add_v_proj,to_out.0,to_add_out,img_mlp.net.2,img_mod.1,txt_mlp.net.2,txt_mod.1"


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) in [-1, 1]."""
    array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
    return (array / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0)


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> PIL RGB."""
    array = ((tensor.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2·W/2, 4C): 2×2 patches as tokens."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents` for a latent grid of ``height``×``width``."""
    b, _, d = tokens.shape
    c = d // 4
    return tokens.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def inference_sigmas(num_steps: int, image_seq_len: int) -> torch.Tensor:
    """DiffSynth's Qwen-Image inference grid: dynamic mu from the token count, shift-terminal 0.02, then 0."""
    s = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1]
    mu = 0.5 + (0.9 - 0.5) * (image_seq_len - 256) / (8192 - 256)
    s = math.exp(mu) / (math.exp(mu) + (1.0 / s - 1.0))
    s = 1.0 - (1.0 - s) / ((1.0 - s[-1]) / (1.0 - 0.02))
    return torch.cat([s, torch.zeros(1, dtype=s.dtype)]).float()


class QwenImagePipeline(Pipeline):
    family = FAMILY
    schedule_name = "qwen_image"
    height_factor = HEIGHT_FACTOR
    width_factor = WIDTH_FACTOR
    default_lora_targets = LORA_TARGETS

    def __init__(self, dit, vae, text_encoder, tokenizer, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.dit = dit
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.torch_dtype = dtype
        z = vae.config.z_dim
        self.register_buffer("latents_mean", torch.tensor(vae.config.latents_mean).view(1, z, 1, 1), persistent=False)
        self.register_buffer("latents_std", torch.tensor(vae.config.latents_std).view(1, z, 1, 1), persistent=False)
        self._drop_idx = len(tokenizer(PROMPT_TEMPLATE.split("{}")[0])["input_ids"])

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    def modules_without_gradient(self, model_name: str) -> list[str]:
        # The last block's text-stream output is discarded: its to_add_out and txt_mlp never get a gradient
        # (DiffSynth needs --find_unused_parameters for exactly this).
        if model_name != "dit":
            return []
        last = f"transformer_blocks.{len(self.dit.transformer_blocks) - 1}"
        return [f"{last}.attn.to_add_out", f"{last}.txt_mlp.net.0.proj", f"{last}.txt_mlp.net.2"]

    # ---------------------------------------------------------------- encoders (no gradient)
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Last hidden state of the text encoder over the templated prompt, template tokens dropped: (1, L, D)."""
        tokens = self.tokenizer(PROMPT_TEMPLATE.format(prompt), max_length=MAX_PROMPT_TOKENS + self._drop_idx,
                                truncation=True, return_tensors="pt")
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device)
        out = self.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = out.hidden_states[-1][:, self._drop_idx:]
        return hidden.to(self.torch_dtype)

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """VAE latents, normalised by the VAE's latents_mean/std: (1, z, H/8, W/8)."""
        pixels = image_to_tensor(image).to(self.device, self.torch_dtype).unsqueeze(2)  # the VAE wants (B,C,T,H,W)
        latents = self.vae.encode(pixels).latent_dist.mode()[:, :, 0]
        return ((latents - self.latents_mean) / self.latents_std).to(self.torch_dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> Image.Image:
        latents = latents * self.latents_std + self.latents_mean
        pixels = self.vae.decode(latents.unsqueeze(2).to(self.torch_dtype)).sample[:, :, 0]
        return tensor_to_image(pixels[0])

    def encode(self, item: dict) -> dict:
        image, prompt = self.image_and_prompt(item)
        return {"latents": self.encode_image(image), "prompt_emb": self.encode_prompt(prompt)}

    # ---------------------------------------------------------------- denoiser
    def conditioning_latents(self, inputs: dict) -> list[torch.Tensor]:
        """Clean latents appended to the image tokens (edit images); none for text-to-image."""
        return []

    def predict(self, noisy_latents: torch.Tensor, timestep: torch.Tensor, inputs: dict) -> torch.Tensor:
        b, _, h, w = noisy_latents.shape
        prompt_emb = inputs["prompt_emb"]
        mask = torch.ones(prompt_emb.shape[:2], dtype=torch.long, device=prompt_emb.device)
        cond = self.conditioning_latents(inputs)
        tokens = torch.cat([pack_latents(x.to(self.torch_dtype)) for x in [noisy_latents, *cond]], dim=1)
        # RoPE shapes: the target grid first, then one "frame" per conditioning image (as DiffSynth's model_fn)
        shapes = [(1, h // 2, w // 2)] + [(1, c.shape[2] // 2, c.shape[3] // 2) for c in cond]
        out = self.dit(
            hidden_states=tokens,
            encoder_hidden_states=prompt_emb,
            encoder_hidden_states_mask=mask,
            timestep=(timestep / 1000).to(self.torch_dtype).reshape(-1).to(self.device),  # DiT takes t in [0, 1]
            img_shapes=[shapes] * b,
            return_dict=False,
        )[0]
        return unpack_latents(out[:, : (h // 2) * (w // 2)], h, w)  # only the target tokens are predicted

    def sample_inputs(self, prompt: str) -> dict:
        """Conditioning of a save-point sample (the edit family adds its edit image)."""
        return {"prompt_emb": self.encode_prompt(prompt)}

    @torch.no_grad()
    def sample(self, prompt: str, seed: int, height: int, width: int, num_inference_steps: int,
               num_frames: int = 1) -> Image.Image:
        """Euler sampling of the flow (cfg 1), as DiffSynth's pipeline does at cfg_scale=1."""
        factor = 2 ** len(self.vae.config.temperal_downsample)
        h, w = height // factor, width // factor
        generator = torch.Generator().manual_seed(seed)
        latents = torch.randn((1, self.vae.config.z_dim, h, w), generator=generator).to(self.device, self.torch_dtype)
        inputs = self.sample_inputs(prompt)
        sigmas = inference_sigmas(num_inference_steps, (h // 2) * (w // 2))
        for i in range(num_inference_steps):
            velocity = self.predict(latents, (sigmas[i] * 1000).reshape(1), inputs)
            latents = latents + (sigmas[i + 1] - sigmas[i]) * velocity
        return self.decode(latents)


def set_zero_cond_t(dit, enabled: bool) -> None:
    """Edit-2511's ``zero_cond_t``: conditioning tokens are modulated at t=0 (diffusers' ``modulate_index``).

    A switch of the forward pass, not of the weights, so it is set on the loaded DiT and its blocks."""
    dit.zero_cond_t = enabled
    for block in dit.transformer_blocks:
        block.zero_cond_t = enabled
    dit.register_to_config(zero_cond_t=enabled)


def wants_edit(config) -> bool:
    """DiffSynth trains Qwen-Image and Qwen-Image-Edit with one script: ``edit_image`` among the extra inputs
    makes it an edit run. We follow that, so a pasted DiffSynth command line trains the same thing."""
    return "edit_image" in [k.strip() for k in (config.model.extra_inputs or "").split(",")]


def auxiliary_entries(config) -> dict[str, str]:
    """Non-model folders the pipeline loads, as written (flag value or DiffSynth's default): the models stage
    fetches and pins them with the weights."""
    if wants_edit(config):
        from . import qwen_image_edit
        return qwen_image_edit.auxiliary_entries(config)
    return {"tokenizer": config.model.tokenizer_path or DEFAULT_TOKENIZER}


def load_pipeline(config, dtype: torch.dtype, device: torch.device | str = "cpu") -> QwenImagePipeline:
    """Fetch and detect every model entry of ``config.model``; load DiT, VAE, text encoder and tokenizer.

    With ``edit_image`` in ``model.extra_inputs`` this builds the Qwen-Image-Edit pipeline instead."""
    if wants_edit(config):
        from . import qwen_image_edit
        return qwen_image_edit.load_pipeline(config, dtype, device)
    m = config.model
    modules, sources = load_components(parse_model_configs(m.model_paths, m.model_id_with_origin_paths), FAMILY,
                                       dtype, required=("dit", "vae", "text_encoder"))
    tokenizer = load_tokenizer(fetch(parse_path_or_model_id(m.tokenizer_path, DEFAULT_TOKENIZER)))
    pipe = QwenImagePipeline(modules["dit"], modules["vae"], modules["text_encoder"], tokenizer, dtype)
    pipe.component_sources = sources
    if getattr(m, "zero_cond_t", False):
        set_zero_cond_t(pipe.dit, True)
    return pipe.to(device)
