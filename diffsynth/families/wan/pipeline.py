"""Wan2.1 / Wan2.2: WanTransformer3DModel DiT, AutoencoderKLWan VAE (2.1 or 2.2),
UMT5 text encoder, and for Wan2.1 image-to-video the CLIP image encoder.

Variants are told apart by what the loaded models are, as DiffSynth's DiT flags are:

* text-to-video (Wan2.1-T2V, Wan2.2-T2V-A14B high/low-noise expert): latents + prompt;
* image-to-video with a conditioning tensor ``y`` (Wan2.1-I2V: DiT ``in_channels = 2·z + 4``): mask (4 ch) and the
  VAE latents of ``[first frame, zeros...]`` concatenated to the DiT input, plus CLIP features when the DiT has
  an image embedder (``image_dim``);
* TI2V-5B (Wan2.2 VAE, ``in_channels == z_dim``): the first frame's latents replace latent frame 0, which stays
  clean and gets timestep 0 per token (diffusers' DiT takes a ``(B, tokens)`` timestep for exactly this).

The A14B experts are one DiT each; which one a run trains is the model entry plus
``train.min/max_timestep_boundary`` (high-noise: 0 .. 0.417 of the grid, i.e. t >= ~875; low-noise: 0.417 .. 1).
"""
from __future__ import annotations

import html
import re
from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from ...errors import ConfigError
from ...models.components import load_tokenizer
from ...models.model_config import fetch, parse_path_or_model_id
from ...sigmas import sampling_grid, shifted_grid
from ...sampling import euler_sample
from ..base import DataRules, Family
from . import blocks, checkpoints, real_configs, refusals, tiny
from .animate2_model import WanAnimate2DiT
from .convert import diffusers_to_wan_dit, lora_names_without_model, lora_to_wan_names

# Image sides are floored to this multiple: VAE 8 x DiT patch 2. The Wan2.2 VAE (TI2V-5B) downsamples by 16,
# so its multiple is 32 (data_rules(); the pipeline checks the loaded VAE agrees). num_frames = 4k + 1.
DATA_RULES = DataRules(size_factor=16, width_factor=16, time_division_factor=4, time_division_remainder=1,
                       video_keys=("video",), derived_inputs=("input_image",))
SHIFT = 5.0
DEFAULT_TOKENIZER = "Wan-AI/Wan2.1-T2V-1.3B:google/umt5-xxl/"
PROMPT_SEQ_LEN = 512  # DiffSynth pads/truncates every prompt to 512 tokens and zeroes the embeddings past its end
# DiffSynth's default `--lora_target_modules q,k,v,o,ffn.0,ffn.2` names Linear layers of the ORIGINAL Wan DiT.
# The loaded DiT is diffusers' WanTransformer3DModel; these are the same layers under its names (checkpoint
# conversion in models/convert_wan.py). Suffixes and dotted paths both map; diffusers names pass unchanged.
WAN_TO_DIFFUSERS_LORA = {
    "q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "k_img": "add_k_proj", "v_img": "add_v_proj",
    "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
    "self_attn": "attn1", "cross_attn": "attn2",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "head.head": "proj_out",
}
LORA_TARGETS = "q,k,v,o,ffn.0,ffn.2"
# CLIP ViT-H preprocessing (open-clip), as DiffSynth's WanImageEncoder applies it
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def map_wan_lora_target(target: str) -> str:
    """One ``lora_target_modules`` entry in original Wan names -> diffusers names (unknown names unchanged)."""
    parts = target.split(".")
    prefix = []
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():  # full path blocks.N.<inside a block>
        prefix, parts = parts[:2], parts[2:]
    rest = ".".join(parts)
    if rest in WAN_TO_DIFFUSERS_LORA:
        return ".".join(prefix + [WAN_TO_DIFFUSERS_LORA[rest]])
    if len(parts) == 2 and parts[0] in ("self_attn", "cross_attn") and parts[1] in WAN_TO_DIFFUSERS_LORA:
        return ".".join(prefix + [WAN_TO_DIFFUSERS_LORA[parts[0]], WAN_TO_DIFFUSERS_LORA[parts[1]]])
    return target


def clean_prompt(text: str) -> str:
    """DiffSynth's ``clean='whitespace'``: unescape HTML, collapse whitespace (ftfy is not used here)."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


def frames_to_tensor(frames: list[Image.Image]) -> torch.Tensor:
    """PIL frames -> (1, 3, F, H, W) in [-1, 1]."""
    array = np.stack([np.asarray(f.convert("RGB"), dtype=np.float32) for f in frames])  # F, H, W, 3
    return (torch.from_numpy(array) / 127.5 - 1.0).permute(3, 0, 1, 2).unsqueeze(0)


def tensor_to_frames(video: torch.Tensor) -> list[Image.Image]:
    """(3, F, H, W) in [-1, 1] -> PIL frames."""
    array = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()
    return [Image.fromarray(frame) for frame in array]


def first_frame(images) -> Image.Image:
    """A sample entry's first frame: one image (a list of one is accepted)."""
    frames = images if isinstance(images, list) else [images]
    if len(frames) != 1:
        raise ValueError(f"a Wan sample entry's images is its first frame: give one image, not {len(frames)}")
    return frames[0]


def train_sigmas(n: int) -> torch.Tensor:
    return shifted_grid(n, SHIFT)


def inference_sigmas(num_steps: int, shift: float = SHIFT) -> torch.Tensor:
    """DiffSynth's Wan sampling grid: shift-5 of linspace(1, 0, N+1)[:-1], then 0."""
    return sampling_grid(shifted_grid(num_steps, shift))


def data_rules(config) -> DataRules:
    """Size multiples from the model entries (the models are not fetched yet when the data stage runs): a
    Wan2.2 VAE (``Wan2.2_VAE`` in an entry, TI2V-5B) needs multiples of 32, else 16."""
    m = config.model
    entries = f"{m.model_paths or ''},{m.model_id_with_origin_paths or ''}".lower()
    factor = 32 if "wan2.2_vae" in entries else DATA_RULES.size_factor
    return replace(DATA_RULES, size_factor=factor, width_factor=factor)


class Wan(Family):
    name = "wan"
    model_family = "wan"
    aliases = ("wanvideo", "wan_video", "wan21", "wan22")
    summary = "Wan2.1 / Wan2.2 text- and image-to-video (WanTransformer3DModel, UMT5, Wan VAE 2.1/2.2)"
    model_id_patterns = ("wan-ai/", "wan2.1", "wan2.2", "krea-realtime-video")  # Krea Realtime 14B: a Wan2.1-T2V-14B
    component_kinds = checkpoints.KINDS
    real_models = real_configs.REAL_MODELS
    weight_files = real_configs.WEIGHT_FILES
    redirected_files = tuple((name, real_configs.CONVERTED_REPO) for name in real_configs.REDIRECTED_FILES)
    tiny_twins = {
        "wan2.1-t2v-1.3b": ("Wan-AI/Wan2.1-T2V-1.3B", tiny.write_tiny_t2v),
        "wan2.1-t2v-14b": ("Wan-AI/Wan2.1-T2V-14B", tiny.write_tiny_t2v),  # the 1.3B architecture, other sizes
        "wan2.1-i2v-14b": ("Wan-AI/Wan2.1-I2V-14B-480P", tiny.write_tiny_i2v),
        "wan2.2-ti2v-5b": ("Wan-AI/Wan2.2-TI2V-5B", tiny.write_tiny_ti2v),
        "wan2.2-a14b": ("Wan-AI/Wan2.2-T2V-A14B", tiny.write_tiny_a14b),
        "wan2.2-i2v-a14b": ("Wan-AI/Wan2.2-I2V-A14B", tiny.write_tiny_i2v_a14b),
        "krea-realtime-video": ("krea/krea-realtime-video", tiny.write_tiny_krea),
    }
    block_inputs = blocks.BLOCK_INPUTS
    text_tokens = blocks.TEXT_TOKENS
    unchecked_blocks = blocks.UNCHECKED
    data = DATA_RULES
    extra_inputs = ("input_image",)
    refused_inputs = refusals.WAN  # Animate's replacement mode, S2V, Video-As-Prompt, Wan-Dancer: what they lack
    refused_models = {"LongCat-Video": refusals.LONGCAT}
    refused_flags = refusals.FLAGS  # S2V's and Wan-Dancer's flags: the error names the model
    sample_options = ("sigma_shift",)  # DiffSynth's WanVideoPipeline(sigma_shift=...): render() takes it
    encoders = ("text_encoder", "image_encoder")
    lora_targets = LORA_TARGETS
    lora_to_original = staticmethod(lora_to_wan_names)
    original_state_dict = staticmethod(diffusers_to_wan_dit)
    # DiffSynth's own Wan DiT keeps the original Wan-AI names (its trainer's checkpoints use them)
    lora_to_diffsynth = staticmethod(lora_to_wan_names)
    diffsynth_state_dict = staticmethod(diffusers_to_wan_dit)
    sample_image_input = "input_image"  # a sample entry's image is its first frame
    lora_names_without_model = staticmethod(lora_names_without_model)
    # DiffSynth's Wan train.py forces checkpointing on, so its command line means it is on
    command_line_defaults = {"gradient": {"use_gradient_checkpointing": True}}
    diffsynth_cache_keys = {"input_latents": "latents", "context": "prompt_emb"}
    train_sigmas = staticmethod(train_sigmas)
    extra_components: tuple[str, ...] = ()  # a variant's own models (speed control: motion_controller), by attribute
    trains_animate2 = False  # the Wan2.2-Animate-2 variant: its DiT, its own image condition (animate2.py)

    @classmethod
    def data_rules(cls, config=None) -> DataRules:
        return data_rules(config) if config is not None else cls.data

    @classmethod
    def map_lora_targets(cls, model: torch.nn.Module, targets: list[str]) -> list[str]:
        # DiffSynth's Wan names (q,k,v,o,ffn.0,ffn.2) -> diffusers module names
        return [map_wan_lora_target(t) for t in targets]

    @classmethod
    def auxiliary_entries(cls, config) -> dict[str, str]:
        return {"tokenizer": config.model.tokenizer_path or DEFAULT_TOKENIZER}

    @classmethod
    def load_pipeline(cls, config, dtype: torch.dtype, device: torch.device | str = "cpu",
                      role: str = "full") -> "Wan":
        """Fetch and detect every model entry of ``config.model``; load DiT, VAE, UMT5, (CLIP) and the tokenizer."""
        m = config.model
        wanted = tuple(k.strip() for k in (m.extra_inputs or "").split(",") if k.strip())
        # the encoding step reads the DiT's in_channels / image_dim (its image inputs): file header only
        modules, sources = cls.load_models(config, dtype, role, required=("dit", "vae", "text_encoder"),
                                           encode_needs_dit=True)
        tokenizer = load_tokenizer(fetch(parse_path_or_model_id(m.tokenizer_path, DEFAULT_TOKENIZER)))
        pipe = cls(modules["dit"], modules["vae"], modules["text_encoder"], tokenizer,
                   image_encoder=modules.get("image_encoder"), dtype=dtype, wanted_inputs=wanted,
                   text_encoder_cached=role == "train_cached",
                   **{name: modules.get(name) for name in cls.extra_components})
        pipe.component_sources = sources
        expected = data_rules(config).size_factor
        if pipe.vae is not None and pipe.height_factor != expected:
            raise ConfigError(f"The loaded Wan VAE needs image sides in multiples of {pipe.height_factor}, but the "
                              f"model entries say {expected} (a Wan2.2 VAE file is recognised by 'Wan2.2_VAE' in its "
                              "name): rename the VAE file as released, or use the matching VAE for this DiT")
        pipe.role = role
        return pipe.place(device)

    def __init__(self, dit, vae, text_encoder, tokenizer, image_encoder=None, dtype: torch.dtype = torch.float32,
                 wanted_inputs: tuple[str, ...] = (), text_encoder_cached: bool = False):
        if hasattr(dit, "vace_blocks"):  # a VACE DiT file (vace.py splits it; a plain Wan run would ignore the branch)
            raise ConfigError("This Wan DiT file holds VACE blocks: set model.extra_inputs: vace_video,"
                              "vace_reference_image (DiffSynth's VACE recipes) to train it")
        if hasattr(dit, "face_adapter"):  # a Wan2.2-Animate DiT file (animate.py splits off its adapter)
            raise ConfigError("This Wan DiT file holds the Wan2.2-Animate adapter (face_adapter.*): set "
                              "model.extra_inputs: input_image,animate_pose_video,animate_face_video (DiffSynth's "
                              "Animate recipes) to train it")
        if isinstance(dit, WanAnimate2DiT) != self.trains_animate2:
            raise ConfigError("This DiT file is Wan2.2-Animate-2-14B's (wan_animate_2/*.safetensors). "
                              + refusals.ANIMATE_2 if not self.trains_animate2 else
                              "model.extra_inputs names animate2_reference_video, but the DiT is not "
                              "Wan2.2-Animate-2's: use Wan-AI/Wan2.2-Animate-2-14B:wan_animate_2/wan_animate_2_bf16"
                              ".safetensors (or _bf16_distillation.safetensors)")
        super().__init__(dtype, dit=dit, vae=vae, text_encoder=text_encoder, image_encoder=image_encoder,
                         tokenizer=tokenizer)
        self.wanted_inputs = tuple(wanted_inputs)  # the configured extra inputs
        self.patch_size = tuple(dit.config.patch_size)                # (1, 2, 2)
        if vae is not None:
            z = vae.config.z_dim
            self.spatial_factor = int(vae.config.scale_factor_spatial)   # 8 (Wan2.1 VAE) or 16 (Wan2.2 VAE)
            self.temporal_factor = int(vae.config.scale_factor_temporal)  # 4
            residual = bool(vae.config.is_residual)
            self.register_buffer("latents_mean", torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1),
                                 persistent=False)
            self.register_buffer("latents_std", torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1),
                                 persistent=False)
        else:  # training from the cache without a VAE: nothing is encoded or decoded, only the DiT's channels matter
            z = dit.config.out_channels
            self.spatial_factor, self.temporal_factor, residual = None, 4, False
        self.z_dim = z
        # the pipeline's division factor (DiffSynth: vae.upsampling_factor * 2): 16, or 32 for the Wan2.2 VAE
        self.height_factor = self.width_factor = (self.spatial_factor * self.patch_size[1] if vae is not None
                                                  else None)
        in_ch = dit.config.in_channels
        # DiffSynth's dit.require_vae_embedding / require_clip_embedding / fuse_vae_embedding_in_latents
        self.require_vae_embedding = in_ch == 2 * z + 4
        self.require_clip_embedding = dit.config.image_dim is not None
        self.fuse_first_frame = in_ch == z and residual  # TI2V-5B: Wan2.2 VAE, 48-ch DiT
        self.check_dit_channels(in_ch, z)
        if self.require_clip_embedding and image_encoder is None and not text_encoder_cached:
            raise ConfigError("This Wan DiT takes CLIP image features (Wan2.1 image-to-video): add "
                             "<model_id>:models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth to "
                             "model.model_id_with_origin_paths")
        if self.require_vae_embedding and "input_image" not in self.wanted_inputs and not self.trains_animate2:
            raise ConfigError("This Wan DiT is an image-to-video model: set model.extra_inputs: input_image "
                             "(--extra_inputs input_image); the first frame of each video is the conditioning image")
        self._sample_image: Image.Image | None = None

    def check_dit_channels(self, in_ch: int, z: int) -> None:
        """The DiT's input channels must fit the latents plus what this pipeline concatenates (variants add theirs)."""
        if in_ch not in (z, 2 * z + 4):
            raise ConfigError(f"The Wan DiT takes {in_ch} input channels, which fits neither the VAE's {z} latent "
                             f"channels (text-to-video, TI2V) nor {2 * z + 4} (image-to-video): the DiT and the VAE "
                             "entries belong to different Wan releases (Wan2.2-TI2V-5B needs Wan2.2_VAE.pth, the "
                             "others Wan2.1_VAE.pth)")

    # ---------------------------------------------------------------- encoders (no gradient)
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """UMT5 last hidden state over PROMPT_SEQ_LEN tokens, zero past the prompt's length: (1, L, text_dim)."""
        tokens = self.tokenizer(clean_prompt(prompt), max_length=PROMPT_SEQ_LEN, padding="max_length",
                                truncation=True, add_special_tokens=True, return_attention_mask=True,
                                return_tensors="pt")
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device)
        emb = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        length = int(mask.gt(0).sum())
        emb[:, length:] = 0
        return emb.to(self.torch_dtype)

    @torch.no_grad()
    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """(1, 3, F, H, W) in [-1, 1] -> normalised latents (1, z, (F-1)/4+1, H/f, W/f)."""
        latents = self.vae.encode(pixels.to(self.device, self.torch_dtype)).latent_dist.mode()
        return ((latents - self.latents_mean) / self.latents_std).to(self.torch_dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        latents = latents * self.latents_std + self.latents_mean
        return tensor_to_frames(self.vae.decode(latents.to(self.torch_dtype)).sample[0])

    @torch.no_grad()
    def encode_clip(self, image: Image.Image) -> torch.Tensor:
        """CLIP features of the conditioning image: the penultimate layer's tokens (DiffSynth's 31-of-32 blocks),
        image resized to the encoder's size (bicubic) and normalised as open-clip does: (1, 257, 1280) real size."""
        size = self.image_encoder.config.image_size
        pixels = frames_to_tensor([image])[:, :, 0].to(self.device, torch.float32)
        pixels = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False)
        mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)
        pixels = ((pixels * 0.5 + 0.5) - mean) / std
        out = self.image_encoder(pixel_values=pixels.to(self.torch_dtype), output_hidden_states=True)
        return out.hidden_states[-2].to(self.torch_dtype)

    @torch.no_grad()
    def encode_image_condition(self, image: Image.Image, num_frames: int, height: int, width: int) -> torch.Tensor:
        """Wan2.1 I2V ``y``: mask (4 ch: 1 on the first frame, as 4 sub-frames) + VAE([image, zeros...])."""
        h, w = height // self.spatial_factor, width // self.spatial_factor
        mask = torch.ones(1, num_frames, h, w, device=self.device)
        mask[:, 1:] = 0
        mask = torch.cat([mask[:, 0:1].repeat_interleave(self.temporal_factor, dim=1), mask[:, 1:]], dim=1)
        mask = mask.view(1, mask.shape[1] // self.temporal_factor, self.temporal_factor, h, w).transpose(1, 2)
        first = frames_to_tensor([image.resize((width, height))])
        pixels = torch.cat([first, torch.zeros(1, 3, num_frames - 1, height, width)], dim=2)
        return torch.cat([mask.to(self.torch_dtype), self.encode_video(pixels)], dim=1)

    def image_inputs(self, image: Image.Image, num_frames: int, height: int, width: int) -> dict:
        """The conditioning tensors the loaded DiT takes for an input image."""
        out = {}
        if self.require_vae_embedding:
            out["y"] = self.encode_image_condition(image, num_frames, height, width)
        if self.require_clip_embedding:
            out["clip_feature"] = self.encode_clip(image.resize((width, height)))
        if self.fuse_first_frame:
            out["first_frame_latents"] = self.encode_video(frames_to_tensor([image.resize((width, height))]))
        return out

    def encode(self, item: dict) -> dict:
        video = item.get("video")
        if not isinstance(video, list) or not video:
            raise ValueError(f"Wan training needs a 'video' column loaded as frames (dataset.data_file_keys must "
                             f"include video); got {type(video).__name__}")
        prompt = item.get("prompt")
        if not isinstance(prompt, str):
            raise ValueError(f"row has no prompt string: {prompt!r}")
        width, height = video[0].size
        if height % self.height_factor or width % self.width_factor:
            raise ValueError(f"video frames are {width}x{height}; this Wan model needs multiples of "
                             f"{self.height_factor} (set resolution.height/width accordingly)")
        if len(video) % self.temporal_factor != 1:
            raise ValueError(f"video has {len(video)} frames; Wan needs 4k+1 (resolution.num_frames)")
        inputs = {"latents": self.encode_video(frames_to_tensor(video)), "prompt_emb": self.encode_prompt(prompt)}
        inputs.update(self.conditioning_inputs(item, video, height, width))
        return inputs

    def conditioning_inputs(self, item: dict, video: list, height: int, width: int) -> dict:
        """A row's inputs beyond latents and prompt (image-to-video: the first frame's); variants add theirs."""
        if "input_image" not in self.wanted_inputs:
            return {}
        image = video[0]  # DiffSynth's Wan override: input_image is the video's first frame
        if self._sample_image is None:
            self._sample_image = image.copy()  # conditioning image of image-to-video samples
        return self.image_inputs(image, len(video), height, width)

    def dit_inputs(self, inputs: dict) -> dict:
        """DiT keyword arguments a variant adds or replaces (reference latents, camera embedding)."""
        return {}

    # ---------------------------------------------------------------- denoiser
    def predict(self, noisy_latents: torch.Tensor, timestep: torch.Tensor, inputs: dict) -> torch.Tensor:
        x = noisy_latents.to(self.device, self.torch_dtype)
        t = timestep.reshape(-1).to(self.device, torch.float32)  # raw 0..1000, as DiffSynth feeds the Wan DiT
        if "first_frame_latents" in inputs:
            # TI2V: tokens of latent frame 0 (the clean first frame) get timestep 0, the others their sample's t
            b, _, frames, h, w = x.shape
            per_frame = t.expand(b).reshape(b, 1).repeat(1, frames)
            per_frame[:, 0] = 0
            tokens = (h // self.patch_size[1]) * (w // self.patch_size[2])
            t = per_frame.repeat_interleave(tokens, dim=1)
        if "y" in inputs:
            x = torch.cat([x, inputs["y"].to(x.dtype)], dim=1)
        kwargs = {"encoder_hidden_states_image": inputs.get("clip_feature"), **self.dit_inputs(inputs)}
        return self.dit(hidden_states=x, timestep=t, encoder_hidden_states=inputs["prompt_emb"], return_dict=False,
                        **kwargs)[0]

    @torch.no_grad()
    def _check_sample_size(self, height: int, width: int, num_frames: int) -> None:
        if height % self.height_factor or width % self.width_factor:
            raise ValueError(f"sample.height/width = {height}x{width}: this Wan model needs multiples of "
                             f"{self.height_factor}")
        if num_frames % self.temporal_factor != 1:
            raise ValueError(f"sample.num_frames = {num_frames}: Wan needs 4k+1 frames (1, 5, 9, ...)")

    @torch.no_grad()
    def sample_inputs(self, prompt: str, height: int = 0, width: int = 0, num_frames: int = 1,
                      images=None) -> dict:
        """Image-to-video variants condition on ``images`` (a sample entry's first frame), else on the first frame
        of the first video this pipeline encoded (the validation rows at step 0); TI2V without one samples
        text-to-video."""
        self._check_sample_size(height, width, num_frames)
        inputs = {"prompt_emb": self.encode_prompt(prompt)}
        if self.require_vae_embedding or self.require_clip_embedding or self.fuse_first_frame:
            image = self._sample_image if images is None else first_frame(images)
            if image is None and not self.fuse_first_frame:
                image = Image.new("RGB", (width, height), (127, 127, 127))  # nothing encoded yet: a neutral frame
            if image is not None:
                inputs.update(self.image_inputs(image, num_frames, height, width))
        return inputs

    @torch.no_grad()
    def render(self, inputs: dict, seed: int, height: int, width: int, num_inference_steps: int,
               num_frames: int = 1, cfg_scale: float = 1.0, negative_inputs: dict | None = None,
               sigma_shift: float = SHIFT) -> list[Image.Image]:
        """Euler sampling of the flow, one expert for the whole trajectory; cfg_scale != 1: guided by the
        negative prompt's inputs (same image conditioning)."""
        self._check_sample_size(height, width, num_frames)
        shape = (1, self.z_dim, (num_frames - 1) // self.temporal_factor + 1, height // self.spatial_factor,
                 width // self.spatial_factor)
        generator = torch.Generator().manual_seed(seed)
        latents = torch.randn(shape, generator=generator).to(self.device, self.torch_dtype)
        first = inputs.get("first_frame_latents")
        pin = None if first is None else lambda x: torch.cat([first.to(x.dtype), x[:, :, 1:]], dim=2)
        latents = euler_sample(self.predict, latents, inference_sigmas(num_inference_steps, sigma_shift), inputs,
                               cfg_scale, negative_inputs, pin)
        return self.decode(latents)
