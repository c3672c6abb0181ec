"""Qwen-Image: QwenImageTransformer2DModel DiT, AutoencoderKLQwenImage VAE, Qwen2.5-VL text encoder, Qwen2
tokenizer (DiffSynth's examples/qwen_image). The Edit releases are the variant in ``edit.py``."""
from __future__ import annotations

import torch
from PIL import Image

from ...models.components import load_tokenizer
from ...models.model_config import fetch, parse_path_or_model_id
from ...sampling import euler_sample
from ...sigmas import dynamic_mu, exponential_shift_grid, sampling_grid
from ..base import Family
from ..images import image_to_tensor, pack_latents, tensor_to_image, unpack_latents
from . import blocks, checkpoints, real_configs, tiny

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


SHIFT_TERMINAL = 0.02
TRAIN_MU = 0.8  # training uses a fixed mu; sampling derives it from the image token count


def train_sigmas(n: int) -> torch.Tensor:
    return exponential_shift_grid(n, TRAIN_MU, SHIFT_TERMINAL)


def inference_sigmas(num_steps: int, image_seq_len: int) -> torch.Tensor:
    """DiffSynth's Qwen-Image inference grid: dynamic mu from the token count, shift-terminal 0.02, then 0."""
    return sampling_grid(exponential_shift_grid(num_steps, dynamic_mu(image_seq_len), SHIFT_TERMINAL))


class QwenImage(Family):
    name = "qwen_image"
    default = True  # DiffSynth's train.py defaults to Qwen-Image
    model_family = "qwen_image"
    aliases = ("qwen", "qwen_image_2512")
    summary = "Qwen-Image text-to-image (20B MMDiT, Qwen2.5-VL text encoder)"
    model_id_patterns = ("qwen/qwen-image",)
    component_kinds = checkpoints.KINDS
    real_models = real_configs.REAL_MODELS
    weight_files = real_configs.WEIGHT_FILES
    tiny_twins = {"qwen-image": ("Qwen/Qwen-Image", tiny.write_tiny)}
    block_inputs = blocks.BLOCK_INPUTS
    text_tokens = blocks.TEXT_TOKENS
    # data: the default DataRules (sides of multiples of 16: VAE 8 x 2x2 patches)
    lora_targets = LORA_TARGETS
    train_sigmas = staticmethod(train_sigmas)
    noise_in_model_dtype = True  # DiffSynth's QwenImageUnit_NoiseInitializer: rand_torch_dtype=pipe.torch_dtype

    # prompts (and edit prompts, whose length depends on the edit image) differ in length: a batch pads them,
    # and the DiT's joint attention ignores the padded text tokens (encoder_hidden_states_mask)
    padded_inputs = {"prompt_emb": "prompt_emb_mask"}

    def __init__(self, dit, vae, text_encoder, tokenizer, dtype: torch.dtype = torch.float32):
        super().__init__(dtype, dit=dit, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)
        if vae is not None:  # training from the cache without a VAE: nothing is encoded or decoded
            z = vae.config.z_dim
            self.register_buffer("latents_mean", torch.tensor(vae.config.latents_mean).view(1, z, 1, 1),
                                 persistent=False)
            self.register_buffer("latents_std", torch.tensor(vae.config.latents_std).view(1, z, 1, 1),
                                 persistent=False)
        self._drop_idx = len(tokenizer(PROMPT_TEMPLATE.split("{}")[0])["input_ids"])

    @classmethod
    def modules_without_gradient(cls, model_name: str, model: torch.nn.Module) -> list[str]:
        # The last block's text-stream output is discarded: its to_add_out and txt_mlp never get a gradient
        # (DiffSynth needs --find_unused_parameters for exactly this).
        if model_name != "dit":
            return []
        last = f"transformer_blocks.{len(model.transformer_blocks) - 1}"
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
        pixels = image_to_tensor(image, self.torch_dtype, self.device).unsqueeze(2)  # the VAE wants (B,C,T,H,W)
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
        mask = inputs.get("prompt_emb_mask")
        if mask is None:  # one unpadded sample
            mask = torch.ones(prompt_emb.shape[:2], dtype=torch.long, device=prompt_emb.device)
        cond = self.conditioning_latents(inputs)
        tokens = torch.cat([pack_latents(x.to(self.torch_dtype)) for x in [noisy_latents, *cond]], dim=1)
        # RoPE shapes: the target grid first, then one "frame" per conditioning image (as DiffSynth's model_fn);
        # equal for every sample of a batch (one bucket)
        shapes = [(1, h // 2, w // 2)] + [(1, c.shape[2] // 2, c.shape[3] // 2) for c in cond]
        out = self.dit(
            hidden_states=tokens,
            encoder_hidden_states=prompt_emb,
            encoder_hidden_states_mask=mask.to(prompt_emb.device),
            timestep=(timestep / 1000).to(self.torch_dtype).reshape(-1).to(self.device),  # DiT takes t in [0, 1]
            img_shapes=[shapes] * b,
            return_dict=False,
        )[0]
        return unpack_latents(out[:, : (h // 2) * (w // 2)], h, w)  # only the target tokens are predicted

    def sample_inputs(self, prompt: str, height: int = 0, width: int = 0, num_frames: int = 1) -> dict:
        """Conditioning of a save-point sample (the edit family adds its edit image)."""
        return {"prompt_emb": self.encode_prompt(prompt)}

    @torch.no_grad()
    def render(self, inputs: dict, seed: int, height: int, width: int, num_inference_steps: int,
               num_frames: int = 1, cfg_scale: float = 1.0, negative_inputs: dict | None = None) -> Image.Image:
        """Euler sampling of the flow, as DiffSynth's pipeline does (cfg_scale != 1: guided by the negative
        prompt's inputs)."""
        factor = 2 ** len(self.vae.config.temperal_downsample)
        h, w = height // factor, width // factor
        generator = torch.Generator().manual_seed(seed)
        latents = torch.randn((1, self.vae.config.z_dim, h, w), generator=generator).to(self.device, self.torch_dtype)
        sigmas = inference_sigmas(num_inference_steps, (h // 2) * (w // 2))
        latents = euler_sample(self.predict, latents, sigmas, inputs, cfg_scale, negative_inputs)
        return self.decode(latents)

    # ---------------------------------------------------------------- loading
    @classmethod
    def auxiliary_entries(cls, config) -> dict[str, str]:
        """Non-model folders the pipeline loads, as written (flag value or DiffSynth's default): the models stage
        fetches and pins them with the weights."""
        return {"tokenizer": config.model.tokenizer_path or DEFAULT_TOKENIZER}

    @classmethod
    def load_pipeline(cls, config, dtype: torch.dtype, device: torch.device | str = "cpu",
                      role: str = "full") -> "QwenImage":
        """Fetch and detect every model entry of ``config.model``; load DiT, VAE, text encoder and tokenizer."""
        m = config.model
        modules, sources = cls.load_models(config, dtype, role, required=("dit", "vae", "text_encoder"))
        tokenizer = load_tokenizer(fetch(parse_path_or_model_id(m.tokenizer_path, DEFAULT_TOKENIZER)))
        pipe = cls(modules["dit"], modules["vae"], modules["text_encoder"], tokenizer, dtype)
        pipe.component_sources = sources
        if getattr(m, "zero_cond_t", False) and pipe.dit is not None:  # no DiT in the encoding step
            set_zero_cond_t(pipe.dit, True)
        pipe.role = role
        return pipe.place(device)




def set_zero_cond_t(dit, enabled: bool) -> None:
    """Edit-2511's ``zero_cond_t``: conditioning tokens are modulated at t=0 (diffusers' ``modulate_index``).

    A switch of the forward pass, not of the weights, so it is set on the loaded DiT and its blocks."""
    dit.zero_cond_t = enabled
    for block in dit.transformer_blocks:
        block.zero_cond_t = enabled
    dit.register_to_config(zero_cond_t=enabled)
