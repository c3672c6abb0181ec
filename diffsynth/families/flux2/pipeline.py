"""FLUX.2 (DiffSynth's examples/flux2): Flux2Transformer2DModel DiT, AutoencoderKLFlux2 VAE, and one text encoder:
Mistral-Small-3.x for FLUX.2-dev (``text_encoder``), Qwen3 for FLUX.2-klein 4B/9B and klein-base (``text_encoder_qwen3``,
DiffSynth's pipeline attribute names).

What the DiT sees matches DiffSynth's Flux2ImagePipeline in training:
- the prompt in the text encoder's chat template (Mistral: DiffSynth's system message; Qwen3: the user turn with
  ``enable_thinking=False``), padded to 512 tokens, the hidden states of layers (10, 20, 30) (Mistral) or
  (9, 18, 27) (Qwen3) side by side: ``(1, 512, 3·D)``, text position ids ``(0, 0, 0, l)``;
- latents: the VAE's 32-channel mode, 2x2 patches folded into 128 channels and normalised by the VAE's batch-norm
  statistics (``bn.running_mean``, ``sqrt(bn.running_var + 1e-4)``): ``(B, 128, H/16, W/16)``, one token per
  latent pixel with position ids ``(0, row, col, 0)``;
- the timestep as t/1000, embedded guidance 1 in training (only FLUX.2-dev's DiT embeds guidance).

Sampling (save points) follows DiffSynth's inference examples: FLUX.2-dev embedded guidance 4, klein-base true CFG
4 against the empty prompt, klein (step-distilled) neither; the step count is ``sample.num_inference_steps`` (the
presets set 50 for dev and base, 4 for klein). The sigma grid is DiffSynth's "FLUX.2" template.
"""
from __future__ import annotations

import math

import torch
from PIL import Image

from ...errors import ConfigError
from ...models.model_config import fetch, parse_path_or_model_id
from ...sampling import euler_sample
from ...sigmas import sampling_grid
from ..base import Family
from ..images import image_to_tensor, tensor_to_image
from .convert import diffusers_to_original, lora_names_without_model, lora_to_original
from . import blocks, checkpoints, real_configs, tiny

DEFAULT_TOKENIZER = "black-forest-labs/FLUX.2-dev:tokenizer/"  # DiffSynth's default (train.py tokenizer_config)
SYSTEM_MESSAGE = ("You are an AI that reasons about image descriptions. You give structured responses focusing on "
                  "object relationships, object attribution and actions without speculation.")
MAX_SEQUENCE_LENGTH = 512
MISTRAL_LAYERS = (10, 20, 30)
QWEN3_LAYERS = (9, 18, 27)
TRAIN_GUIDANCE = 1.0       # train.py's embedded_guidance
SAMPLE_GUIDANCE = 4.0      # the pipeline's default embedded_guidance (FLUX.2-dev's examples)
BASE_CFG_SCALE = 4.0       # klein-base examples: cfg_scale=4 with the empty negative prompt
TRAIN_MU = 0.8             # "FLUX.2" training grid: fixed mu
# DiffSynth's FLUX.2 LoRA recipes (diffusers module names): FLUX.2-dev's list; on klein the single blocks past its
# depth simply match nothing (peft needs one match per target list, not per name)
LORA_TARGETS = ("to_q,to_k,to_v,add_q_proj,add_k_proj,add_v_proj,to_qkv_mlp_proj,to_out.0,to_add_out,linear_in,"
                "linear_out," + ",".join(f"single_transformer_blocks.{i}.attn.to_out" for i in range(48)))


def _exponential_shift(s: torch.Tensor, mu: float) -> torch.Tensor:
    return math.exp(mu) / (math.exp(mu) + (1.0 / s - 1.0))


def train_sigmas(n: int) -> torch.Tensor:
    """DiffSynth's "FLUX.2" training grid: linspace(1, 1/n, n), exponential shift with mu 0.8."""
    return _exponential_shift(torch.linspace(1.0, 1.0 / n, n, dtype=torch.float64), TRAIN_MU)


def empirical_mu(image_seq_len: int, num_steps: int) -> float:
    """The resolution- and step-dependent mu of FLUX.2 sampling (BFL's fit, as diffusers and DiffSynth use it)."""
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    if image_seq_len > 4300:
        return float(a2 * image_seq_len + b2)
    m_200, m_10 = a2 * image_seq_len + b2, a1 * image_seq_len + b1
    a = (m_200 - m_10) / 190.0
    return float(a * num_steps + m_200 - 200.0 * a)


def inference_sigmas(num_steps: int, image_seq_len: int) -> torch.Tensor:
    s = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)
    return sampling_grid(_exponential_shift(s, empirical_mu(image_seq_len, num_steps)))


def image_ids(height: int, width: int, device=None) -> torch.Tensor:
    """(height·width, 4) position ids of the latent tokens: (0, row, col, 0)."""
    ids = torch.zeros(height, width, 4, device=device)
    ids[..., 1] = torch.arange(height, device=device)[:, None]
    ids[..., 2] = torch.arange(width, device=device)[None, :]
    return ids.reshape(height * width, 4)


def text_ids(length: int, device=None) -> torch.Tensor:
    """(length, 4) position ids of the prompt tokens: (0, 0, 0, index)."""
    ids = torch.zeros(length, 4, device=device)
    ids[:, 3] = torch.arange(length, device=device)
    return ids


def patchify(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C·4, H/2, W/2), channel-major (C, P, Q), as DiffSynth's Flux2VAE and diffusers fold."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def unpatchify(latents: torch.Tensor) -> torch.Tensor:
    b, c4, h, w = latents.shape
    return latents.view(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, h * 2, w * 2)


class Flux2(Family):
    name = "flux2"
    model_family = "flux2"
    aliases = ("flux.2",)  # the releases' own spelling (FLUX.2-dev)
    summary = ("FLUX.2-dev (32B DiT, Mistral-Small-3 text encoder) and FLUX.2-klein 4B/9B, klein-base 4B/9B "
               "(Qwen3 text encoder)")
    model_id_patterns = ("flux.2-", "flux2-")
    component_kinds = checkpoints.KINDS
    real_models = real_configs.REAL_MODELS
    weight_files = real_configs.WEIGHT_FILES
    tiny_twins = {"flux.2-klein-4b": ("black-forest-labs/FLUX.2-klein-4B", tiny.write_klein_4b),
                  "flux.2-klein-9b": ("black-forest-labs/FLUX.2-klein-9B", tiny.write_klein_9b),
                  "flux.2-klein-base-4b": ("black-forest-labs/FLUX.2-klein-base-4B", tiny.write_klein_base_4b),
                  "flux.2-klein-base-9b": ("black-forest-labs/FLUX.2-klein-base-9B", tiny.write_klein_base_9b),
                  "flux.2-dev": ("black-forest-labs/FLUX.2-dev", tiny.write_dev)}
    block_inputs = blocks.BLOCK_INPUTS
    text_tokens = blocks.TEXT_TOKENS
    # data: the default DataRules (sides of multiples of 16: VAE 8 x 2x2 patches), DiffSynth's division factor 16
    encoders = ("text_encoder", "text_encoder_qwen3")
    lora_targets = LORA_TARGETS
    # DiffSynth's own sft:data_process files hold latents as tokens (B, H·W, 128) without their grid: not read (its
    # `input_latents` is left unmapped, so such a cache is refused as having no target latents); ours is read
    diffsynth_cache_keys = {"prompt_embeds": "prompt_emb"}
    # DiffSynth's Flux2DiT has diffusers' module names: its LoRA format is the loaded names (no converter); the
    # comfyui/kohya formats use the original BFL names (convert.py)
    lora_to_original = staticmethod(lora_to_original)
    original_state_dict = staticmethod(diffusers_to_original)
    lora_names_without_model = staticmethod(lora_names_without_model)
    train_sigmas = staticmethod(train_sigmas)
    # DiffSynth's FLUX.2 recipes that train something other than the DiT, refused by name (`diffsynth families`)
    refused_recipes = {
        r"/Template-KleinBase4B-[^/]+\.sh$":
            "template-model training: a Template-KleinBase4B adapter (`pipe.template_model`, --template_model_id_or_path) "
            "learns to turn `template_inputs` into conditioning for the frozen klein-base DiT; not supported yet",
        r"/KleinBase4B-i2L-v2\.sh$":
            "i2L (image-to-LoRA): a template model that generates a klein-base LoRA from input images, hot-loaded every "
            "step (--enable_lora_hot_loading); not supported yet",
        r"/TreeAdapter-KleinBase4B\.sh$":
            "TreeAdapter: a multi-LoRA system for klein-base that DiffSynth supports for inference only (no training "
            "command)",
        r"/special/dmd2/":
            "DMD2: distribution-matching distillation of black-forest-labs/FLUX.2-klein-base-4B into a few-step student "
            "(teacher, fake-score and discriminator models, --dmd2_* flags, DiffSynth's special/dmd2/train.py); "
            "not supported yet",
    }

    # modules_without_gradient: none. The single blocks see text and image tokens with shared layers, and the
    # double blocks' text stream feeds them (tests/test_family_flux2.py checks every parameter gets a gradient).

    @classmethod
    def auxiliary_entries(cls, config) -> dict[str, str]:
        return {"tokenizer": config.model.tokenizer_path or DEFAULT_TOKENIZER}

    @classmethod
    def load_pipeline(cls, config, dtype: torch.dtype, device: torch.device | str = "cpu",
                      role: str = "full") -> "Flux2":
        """Fetch and detect every model entry; load DiT, VAE, the text encoder the entries name and its tokenizer."""
        m = config.model
        modules, sources = cls.load_models(config, dtype, role, required=("dit", "vae"))
        mistral, qwen3 = modules.get("text_encoder"), modules.get("text_encoder_qwen3")
        tokenizer = None
        if role != "train_cached":
            if mistral is None and qwen3 is None:
                raise ConfigError("FLUX.2 needs its text encoder: add <model>:text_encoder/*.safetensors to "
                                  "model.model_id_with_origin_paths (Mistral for FLUX.2-dev, Qwen3 for klein)")
            folder = fetch(parse_path_or_model_id(m.tokenizer_path, DEFAULT_TOKENIZER)).files()[0]
            tokenizer = load_flux2_tokenizer(folder, mistral=qwen3 is None)
        pipe = cls(modules["dit"], modules["vae"], mistral, qwen3, tokenizer, dtype)
        pipe.component_sources = sources
        pipe.role = role
        # klein-base is run with true CFG; its DiT architecture is klein's, so the file it comes from tells
        pipe.sample_cfg_scale = BASE_CFG_SCALE if "klein-base" in sources.get("dit", "").lower() else 1.0
        return pipe.place(device)

    sample_cfg_scale = 1.0

    def __init__(self, dit, vae, text_encoder, text_encoder_qwen3, tokenizer, dtype: torch.dtype = torch.float32):
        super().__init__(dtype, dit=dit, vae=vae, text_encoder=text_encoder, text_encoder_qwen3=text_encoder_qwen3,
                         tokenizer=tokenizer)
        if vae is not None:
            n = vae.bn.num_features
            std = torch.sqrt(vae.bn.running_var.float() + vae.config.batch_norm_eps)
            # statistics kept in float32 beside the VAE (not its parameters: fp8/offload never touch them)
            self.register_buffer("latents_mean", vae.bn.running_mean.float().view(1, n, 1, 1).clone(), persistent=False)
            self.register_buffer("latents_std", std.view(1, n, 1, 1).clone(), persistent=False)

    # ---------------------------------------------------------------- encoders (no gradient)
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """(1, 512, 3·D): three hidden layers of the text encoder over the chat-templated, padded prompt."""
        if self.text_encoder_qwen3 is not None:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True, enable_thinking=False)
            tokens = self.tokenizer(text, return_tensors="pt", padding="max_length", truncation=True,
                                    max_length=MAX_SEQUENCE_LENGTH)
            model, layers = self.text_encoder_qwen3, QWEN3_LAYERS
        else:
            messages = [[{"role": "system", "content": [{"type": "text", "text": SYSTEM_MESSAGE}]},
                         {"role": "user", "content": [{"type": "text", "text": prompt.replace("[IMG]", "")}]}]]
            tokens = self.tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=True,
                                                        return_dict=True, return_tensors="pt", padding="max_length",
                                                        truncation=True, max_length=MAX_SEQUENCE_LENGTH)
            model, layers = self.text_encoder, MISTRAL_LAYERS
        out = model(input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device),
                    output_hidden_states=True, use_cache=False)
        hidden = torch.stack([out.hidden_states[k] for k in layers], dim=1)  # (B, 3, L, D)
        b, n, length, d = hidden.shape
        return hidden.permute(0, 2, 1, 3).reshape(b, length, n * d).to(self.torch_dtype)

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """The VAE's mode, 2x2-patchified and batch-norm normalised: (1, 128, H/16, W/16)."""
        pixels = image_to_tensor(image, self.torch_dtype, self.device)
        latents = patchify(self.vae.encode(pixels).latent_dist.mode())
        return ((latents.float() - self.latents_mean) / self.latents_std).to(self.torch_dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> Image.Image:
        latents = unpatchify(latents.float() * self.latents_std + self.latents_mean)
        pixels = self.vae.decode(latents.to(self.torch_dtype)).sample
        return tensor_to_image(pixels[0])

    def encode(self, item: dict) -> dict:
        image, prompt = self.image_and_prompt(item)
        return {"latents": self.encode_image(image), "prompt_emb": self.encode_prompt(prompt)}

    # ---------------------------------------------------------------- denoiser
    def predict(self, noisy_latents: torch.Tensor, timestep: torch.Tensor, inputs: dict) -> torch.Tensor:
        b, c, h, w = noisy_latents.shape
        prompt_emb = inputs["prompt_emb"]
        guidance = None
        if self.dit.config.guidance_embeds:
            guidance = torch.full((b,), float(inputs.get("guidance", TRAIN_GUIDANCE)), device=self.device,
                                  dtype=self.torch_dtype)
        tokens = noisy_latents.to(self.torch_dtype).flatten(2).transpose(1, 2)  # B C H W -> B (H W) C
        out = self.dit(
            hidden_states=tokens,
            encoder_hidden_states=prompt_emb.to(self.torch_dtype),
            timestep=(timestep / 1000).to(self.torch_dtype).reshape(-1).expand(b).to(self.device),  # DiT takes t/1000
            img_ids=image_ids(h, w, self.device),
            txt_ids=text_ids(prompt_emb.shape[1], self.device),
            guidance=guidance,
            return_dict=False,
        )[0]
        return out[:, : h * w].transpose(1, 2).reshape(b, c, h, w)

    @torch.no_grad()
    def sample_inputs(self, prompt: str, height: int = 0, width: int = 0, num_frames: int = 1) -> dict:
        """The prompt embedding; for klein also the empty prompt's (klein-base samples with CFG against it: the
        cache stage may not know which DiT trains, so it is always computed)."""
        inputs = {"prompt_emb": self.encode_prompt(prompt)}
        if self.text_encoder_qwen3 is not None:
            inputs["negative_prompt_emb"] = self.encode_prompt("")
        return inputs

    @torch.no_grad()
    def render(self, inputs: dict, seed: int, height: int, width: int, num_inference_steps: int,
               num_frames: int = 1) -> Image.Image:
        """Euler sampling on DiffSynth's FLUX.2 grid (mu from the token count and step count), embedded guidance 4
        (dev) or CFG 4 (klein-base)."""
        h, w = max(16, height // 16 * 16) // 16, max(16, width // 16 * 16) // 16
        generator = torch.Generator().manual_seed(seed)
        latents = torch.randn((1, self.dit.config.in_channels, h, w), generator=generator).to(self.device,
                                                                                               self.torch_dtype)
        negative = inputs.get("negative_prompt_emb")
        latents = euler_sample(self.predict, latents, inference_sigmas(num_inference_steps, h * w),
                               {"prompt_emb": inputs["prompt_emb"], "guidance": SAMPLE_GUIDANCE}, self.sample_cfg_scale,
                               None if negative is None else {"prompt_emb": negative, "guidance": SAMPLE_GUIDANCE})
        return self.decode(latents)


def load_flux2_tokenizer(folder: str, mistral: bool):
    """DiffSynth's choice: the Mistral3 processor (structured chat content) for FLUX.2-dev, the tokenizer for Qwen3.

    ``AutoProcessor`` falls back to the tokenizer where the folder holds no processor config."""
    from transformers import AutoProcessor, AutoTokenizer
    return (AutoProcessor if mistral else AutoTokenizer).from_pretrained(folder)
