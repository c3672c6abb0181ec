"""Z-Image (DiffSynth's examples/z_image): Z-Image, Z-Image-Turbo and Z-Image-Omni-Base. diffusers'
ZImageTransformer2DModel DiT (single-stream, 6B), a FLUX-style AutoencoderKL VAE, Qwen3-4B text encoder.

What the DiT sees matches DiffSynth's ``pipelines/z_image.py``:

* the prompt through Qwen3's chat template (one user turn, ``add_generation_prompt``, ``enable_thinking=True``:
  no empty think block), at most 512 tokens, the text encoder's second-to-last hidden state, padding dropped
  (variable length: a batch pads it and the DiT ignores the pad through its attention mask);
* latents: the VAE mode, ``(z - 0.1159) * 0.3611``;
* the DiT's time is ``(1000 - t) / 1000`` (t on DiffSynth's 0..1000 noise scale) and its output is the negated
  velocity; each sample is one image of one frame;
* Z-Image-Omni-Base (a DiT with SigLIP input) runs the DiT's omni path: the target image as the only, noisy image
  and no SigLIP features, exactly as DiffSynth's ``model_fn_z_image`` without edit images;
* sigmas: DiffSynth's "Z-Image" template, ``shift·s / (1 + (shift-1)·s)`` with shift 3 over ``linspace(1, 0)``,
  in training (1000 points) and sampling (Turbo: 8 steps).
"""
from __future__ import annotations

import torch
from PIL import Image

from ...errors import ConfigError
from ...models.components import load_tokenizer
from ...models.model_config import fetch, parse_path_or_model_id
from ...sampling import euler_sample
from ...sigmas import sampling_grid, shifted_grid
from ..base import Family
from ..images import image_to_tensor, tensor_to_image
from . import blocks, checkpoints, real_configs, tiny
from .convert import diffusers_to_original, lora_names_without_model, lora_to_original

DEFAULT_TOKENIZER = "Tongyi-MAI/Z-Image-Turbo:tokenizer/"  # DiffSynth's ZImagePipeline default
SHIFT = 3.0
MAX_PROMPT_TOKENS = 512
# DiffSynth's Z-Image recipes: attention q/k/v/out and the SwiGLU feed-forward of every block
LORA_TARGETS = "to_q,to_k,to_v,to_out.0,w1,w2,w3"
# the Omni DiT's SigLIP branch: nothing reaches it without edit images (DiffSynth: --find_unused_parameters)
SIGLIP_MODULES = ("siglip_embedder", "siglip_refiner")


def train_sigmas(n: int) -> torch.Tensor:
    return shifted_grid(n, SHIFT)


def inference_sigmas(num_steps: int) -> torch.Tensor:
    """DiffSynth's Z-Image inference grid: shift 3 over linspace(1, 0, n+1)[:-1], then the final 0."""
    return sampling_grid(shifted_grid(num_steps, SHIFT))


def chat_prompt(tokenizer, prompt: str) -> str:
    """The templated prompt DiffSynth encodes (Qwen3's chat template, thinking enabled: no empty think block)."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=True)


class ZImage(Family):
    name = "z_image"
    model_family = "z_image"
    summary = "Z-Image / Z-Image-Turbo / Z-Image-Omni-Base text-to-image (6B single-stream DiT, Qwen3-4B)"
    model_id_patterns = ("tongyi-mai/z-image", "pai/z-image-turbo-fun-controlnet")
    component_kinds = checkpoints.KINDS
    real_models = real_configs.REAL_MODELS
    weight_files = real_configs.WEIGHT_FILES
    tiny_twins = {"z-image-turbo": ("Tongyi-MAI/Z-Image-Turbo", tiny.write_tiny),
                  "z-image": ("Tongyi-MAI/Z-Image", tiny.write_tiny),
                  "z-image-omni-base": ("Tongyi-MAI/Z-Image-Omni-Base", tiny.write_tiny_omni)}
    block_inputs = blocks.BLOCK_INPUTS
    text_tokens = blocks.TEXT_TOKENS
    # data: the default DataRules (sides of multiples of 16: VAE 8 x 2x2 patches)
    encoders = ("text_encoder", "image_encoder")
    lora_targets = LORA_TARGETS
    # the original single-file names (ComfyUI's files) fuse q/k/v into attention.qkv
    lora_to_original = staticmethod(lora_to_original)
    original_state_dict = staticmethod(diffusers_to_original)
    # DiffSynth's ZImageDiT has diffusers' names: lora_to_diffsynth / diffsynth_state_dict stay None
    lora_names_without_model = staticmethod(lora_names_without_model)
    train_sigmas = staticmethod(train_sigmas)
    padded_inputs = {"prompt_emb": "prompt_emb_mask"}
    trajectory_imitation = True  # DiffSynth's Z-Image-Turbo distillation (training/trajectory.py)
    extra_components: tuple[str, ...] = ()  # a variant's own models (Fun-ControlNet: controlnet), by attribute

    def __init__(self, dit, vae, text_encoder, tokenizer, image_encoder=None, dtype: torch.dtype = torch.float32):
        super().__init__(dtype, dit=dit, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                         image_encoder=image_encoder)
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else None

    @property
    def omni(self) -> bool:
        """Z-Image-Omni-Base: its DiT takes SigLIP features and runs the omni path."""
        return self.dit is not None and self.dit.config.get("siglip_feat_dim") is not None

    @classmethod
    def modules_without_gradient(cls, model_name: str, model: torch.nn.Module) -> list[str]:
        if model_name != "dit":
            return []
        return [name for name, m in model.named_modules()
                if name.startswith(SIGLIP_MODULES) and isinstance(m, torch.nn.Linear)]

    # ---------------------------------------------------------------- encoders (no gradient)
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """The text encoder's second-to-last hidden state over the templated prompt's tokens: (1, L, D)."""
        tokens = self.tokenizer(chat_prompt(self.tokenizer, prompt), max_length=MAX_PROMPT_TOKENS, truncation=True,
                                return_tensors="pt")
        out = self.text_encoder(input_ids=tokens["input_ids"].to(self.device),
                                attention_mask=tokens["attention_mask"].to(self.device), output_hidden_states=True)
        return out.hidden_states[-2].to(self.torch_dtype)

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """VAE mode, then (z - shift_factor) · scaling_factor: (1, 16, H/8, W/8)."""
        pixels = image_to_tensor(image, self.torch_dtype, self.device)
        latents = self.vae.encode(pixels).latent_dist.mode()
        c = self.vae.config
        return ((latents - c.shift_factor) * c.scaling_factor).to(self.torch_dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> Image.Image:
        c = self.vae.config
        pixels = self.vae.decode((latents / c.scaling_factor + c.shift_factor).to(self.torch_dtype)).sample
        return tensor_to_image(pixels[0])

    def decode_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """DiffSynth's ``FluxVAEDecoder``: un-normalise, decode; the raw output (not clamped)."""
        c = self.vae.config
        return self.vae.decode((latents / c.scaling_factor + c.shift_factor).to(self.torch_dtype)).sample

    def encode(self, item: dict) -> dict:
        image, prompt = self.image_and_prompt(item)
        return {"latents": self.encode_image(image), "prompt_emb": self.encode_prompt(prompt)}

    # ---------------------------------------------------------------- denoiser
    def predict(self, noisy_latents: torch.Tensor, timestep: torch.Tensor, inputs: dict) -> torch.Tensor:
        b = noisy_latents.shape[0]
        emb, mask = inputs["prompt_emb"], inputs.get("prompt_emb_mask")
        caps = [emb[i] if mask is None else emb[i][mask[i].bool()] for i in range(b)]  # each prompt its own length
        caps = [c.to(self.device, self.torch_dtype) for c in caps]
        t = (1000 - timestep.reshape(-1).float().to(self.device)) / 1000  # the DiT's time runs 0 (noise) -> 1
        t = t.expand(b) if t.numel() == 1 else t
        x = [noisy_latents[i].unsqueeze(1).to(self.device, self.torch_dtype) for i in range(b)]  # (C, 1, H, W)
        if self.omni:
            out = self.dit([[xi] for xi in x], t, [[c] for c in caps], siglip_feats=[None] * b,
                           image_noise_mask=[[1]] * b, return_dict=False)[0]
        else:
            out = self.dit(x, t, caps, return_dict=False)[0]
        return -torch.stack([o[:, 0] for o in out])

    def sample_inputs(self, prompt: str, height: int = 0, width: int = 0, num_frames: int = 1) -> dict:
        return {"prompt_emb": self.encode_prompt(prompt)}

    @torch.no_grad()
    def render(self, inputs: dict, seed: int, height: int, width: int, num_inference_steps: int,
               num_frames: int = 1, cfg_scale: float = 1.0, negative_inputs: dict | None = None) -> Image.Image:
        """Euler sampling of the flow, as DiffSynth's pipeline: Turbo at cfg 1 and few steps (its default 8); Z-Image
        and Omni-Base guided (cfg_scale 4 with the negative prompt's inputs, 50 / 40 steps in its examples)."""
        step = 2 * self.vae_factor  # latent sides must be even for the 2x2 patches
        h, w = max(step, height // step * step) // self.vae_factor, max(step, width // step * step) // self.vae_factor
        generator = torch.Generator().manual_seed(seed)
        latents = torch.randn((1, self.vae.config.latent_channels, h, w), generator=generator)
        latents = latents.to(self.device, self.torch_dtype)
        latents = euler_sample(self.predict, latents, inference_sigmas(num_inference_steps), inputs, cfg_scale,
                               negative_inputs)
        return self.decode(latents)

    # ---------------------------------------------------------------- loading
    @classmethod
    def auxiliary_entries(cls, config) -> dict[str, str]:
        return {"tokenizer": config.model.tokenizer_path or DEFAULT_TOKENIZER}

    @classmethod
    def load_pipeline(cls, config, dtype: torch.dtype, device: torch.device | str = "cpu",
                      role: str = "full") -> "ZImage":
        """Fetch and detect every model entry; load DiT, VAE, text encoder, tokenizer (and Omni's SigLIP)."""
        m = config.model
        modules, sources = cls.load_models(config, dtype, role, required=("dit", "vae", "text_encoder"))
        tokenizer = load_tokenizer(fetch(parse_path_or_model_id(m.tokenizer_path, DEFAULT_TOKENIZER)))
        if modules.get("controlnet") is not None and "controlnet" not in cls.extra_components:
            raise ConfigError(f"{sources['controlnet']} is a Z-Image ControlNet: its recipes give --extra_inputs "
                              "controlnet_image (with a controlnet_image column); add it to model.extra_inputs")
        pipe = cls(modules["dit"], modules["vae"], modules["text_encoder"], tokenizer, modules.get("image_encoder"),
                   dtype, **{name: modules.get(name) for name in cls.extra_components})
        pipe.component_sources = sources
        pipe.role = role
        return pipe.place(device)
