"""Wan VACE (DiffSynth's Wan2.1-VACE-1.3B-Preview, Wan2.1-VACE-1.3B / 14B and Wan2.2-VACE-Fun-A14B recipes): a Wan
T2V DiT plus a VACE branch (``pipe.vace``, ``vace_model.py``), a registered variant of ``wan`` selected by
``vace_video`` or ``vace_reference_image`` in ``model.extra_inputs``.

The conditioning, as DiffSynth's ``WanVideoUnit_VACE`` and ``WanVideoUnit_InputVideoEmbedder`` build it in training:

* ``vace_video`` (a video column, cut to the target's frame count; zeros when a row has none) with an all-ones mask
  (the recipes give no ``vace_video_mask``): VAE(video * (1 - mask)) and VAE(video * mask) on 2 x 16 channels, and
  the mask as 64 channels (8x8 pixel blocks folded into channels, frames resampled to the latent frames);
* ``vace_reference_image`` (an image column, first element when a list): VAE latents of the image, zeros on the
  second 16 channels and a zero mask, prepended as one latent frame to the VACE context AND to the target latents,
  so the loss covers the reference frame too (DiffSynth trains on it).

``vace_context`` (B, 96, F', H/8, W/8) is computed by the encoder (cached with the latents); the DiT adds the VACE
hints after its blocks ``vace_layers``. Trainable: ``vace`` (full) or LoRA on ``vace`` (``q,k,v,o,ffn.0,ffn.2``,
DiffSynth names, no mapping); ``--remove_prefix_in_ckpt pipe.vace.`` gives DiffSynth's checkpoint names.
Save-point samples use the first encoded row's control video and reference image.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from ...errors import ConfigError
from ...models.tiny import save_model
from ...sampling import euler_sample
from ..base import DataRules
from . import real_configs, vace_model
from .convert import diffusers_to_wan_dit
from .pipeline import SHIFT, Wan, data_rules, frames_to_tensor, inference_sigmas

VIDEO_KEY, REFERENCE_KEY = "vace_video", "vace_reference_image"
MASK_PATCH = 8  # DiffSynth folds 8x8 mask pixels into channels (the Wan2.1 VAE's spatial factor)


# ------------------------------------------------------------------------------------------------ tiny twin
def _save_tiny_vace_dit(folder: Path, shards: int = 1) -> None:
    """One tiny VACE DiT file as Wan-AI ships it: the T2V DiT and the VACE branch in one state dict (original
    names), config.json with model_type vace."""
    from . import tiny

    dit = tiny.tiny_dit()
    c = dit.config
    dim = c.num_attention_heads * c.attention_head_dim
    vace = vace_model.WanVaceModel(vace_layers=(0, 1), vace_in_dim=96, dim=dim, num_heads=c.num_attention_heads,
                                   ffn_dim=c.ffn_dim, eps=c.eps)
    state = {**diffusers_to_wan_dit(dit.state_dict()), **vace.state_dict()}
    save_model(state, folder, "diffusion_pytorch_model", shards, {
        "_class_name": "VaceWanModel", "model_type": "vace", "dim": dim, "num_heads": c.num_attention_heads,
        "ffn_dim": c.ffn_dim, "freq_dim": c.freq_dim, "in_dim": c.in_channels, "out_dim": c.out_channels,
        "num_layers": c.num_layers, "text_len": 512, "eps": c.eps, "vace_layers": [0, 1], "vace_in_dim": 96})


def write_tiny_vace(out_dir: Path, seed: int = 0) -> None:
    """``Wan-AI/Wan2.1-VACE-1.3B`` layout: one DiT file holding the T2V DiT and the VACE branch, UMT5, Wan2.1 VAE,
    tokenizer."""
    from . import tiny

    torch.manual_seed(seed)
    _save_tiny_vace_dit(out_dir)
    tiny.write_common(out_dir, "2.1")


def write_tiny_vace_fun_a14b(out_dir: Path, seed: int = 0) -> None:
    """``PAI/Wan2.2-VACE-Fun-A14B`` layout: two VACE experts, each sharded (diffusion_pytorch_model-0000N-of-...
    with an index), in high_noise_model/ and low_noise_model/; UMT5, Wan2.1 VAE, tokenizer at the top."""
    from . import tiny

    torch.manual_seed(seed)
    for expert in ("high_noise_model", "low_noise_model"):
        _save_tiny_vace_dit(out_dir / expert, shards=2)
    tiny.write_common(out_dir, "2.1")


class WanVace(Wan):
    name = "wan_vace"
    aliases = ("wan_video_vace",)
    summary = "Wan2.1-VACE / Wan2.2-VACE-Fun: Wan plus the VACE branch (vace_video, vace_reference_image)"
    variant_of = "wan"
    selected_by = VIDEO_KEY
    extra_inputs = (VIDEO_KEY, REFERENCE_KEY)
    data = replace(Wan.data, video_keys=("video", VIDEO_KEY), frame_matched_keys=(VIDEO_KEY,))
    # DiffSynth's sft:data_process cache holds the VACE unit's output under the same name
    diffsynth_cache_keys = {**Wan.diffsynth_cache_keys, "vace_context": "vace_context"}
    component_kinds = ()  # the VACE DiT file's kind is Wan's (checkpoints.py), so plain Wan runs detect it too
    tiny_twins = {"wan2.1-vace-1.3b": ("Wan-AI/Wan2.1-VACE-1.3B", write_tiny_vace),
                  "wan2.1-vace-1.3b-preview": ("iic/VACE-Wan2.1-1.3B-Preview", write_tiny_vace),
                  "wan2.1-vace-14b": ("Wan-AI/Wan2.1-VACE-14B", write_tiny_vace),  # one tiny architecture
                  "wan2.2-vace-fun-a14b": ("PAI/Wan2.2-VACE-Fun-A14B", write_tiny_vace_fun_a14b)}

    @classmethod
    def split_module(cls, component: str, module: torch.nn.Module) -> dict[str, torch.nn.Module]:
        if component == "dit" and hasattr(module, "vace_blocks"):
            return dict(zip(("dit", "vace"), vace_model.split(module)))
        return {component: module}

    @classmethod
    def component_of(cls, model_name: str) -> str:
        return "dit" if model_name == "vace" else model_name  # exports check against diffusers' whole VACE model

    @classmethod
    def data_rules(cls, config=None) -> DataRules:
        base = data_rules(config) if config is not None else Wan.data
        return replace(base, video_keys=("video", VIDEO_KEY), frame_matched_keys=(VIDEO_KEY,))

    def __init__(self, dit, *args, **kwargs):
        vace = None
        if hasattr(dit, "vace_blocks"):  # diffusers' WanVACETransformer3DModel, as the VACE DiT file loads
            dit, vace = vace_model.split(dit)
        super().__init__(dit, *args, **kwargs)
        if vace is None:
            raise ConfigError("model.extra_inputs names vace_video / vace_reference_image, but the DiT file has no "
                              "VACE blocks (vace_blocks.*): use a VACE DiT (Wan-AI/Wan2.1-VACE-1.3B, "
                              "Wan-AI/Wan2.1-VACE-14B, iic/VACE-Wan2.1-1.3B-Preview, PAI/Wan2.2-VACE-Fun-A14B)")
        if self.require_vae_embedding or self.fuse_first_frame:
            raise ConfigError("The VACE branch is trained on text-to-video Wan DiTs; this DiT takes image conditioning")
        self.vace = vace
        self._sample_vace: dict | None = None

    # ---------------------------------------------------------------- conditioning (no gradient)
    @torch.no_grad()
    def vace_inputs(self, vace_video, reference, num_frames: int, height: int, width: int) -> dict:
        """``vace_context`` and, with a reference image, its latents (prepended to the target's)."""
        if vace_video:
            pixels = frames_to_tensor([f.resize((width, height)) if f.size != (width, height) else f
                                       for f in vace_video[:num_frames]])
        else:
            pixels = torch.zeros(1, 3, num_frames, height, width)
        mask = torch.ones_like(pixels)
        inactive = self.encode_video(pixels * (1 - mask))
        reactive = self.encode_video(pixels * mask)
        video_latents = torch.cat([inactive, reactive], dim=1)
        frames, h, w = mask.shape[2], height // MASK_PATCH, width // MASK_PATCH
        mask_latents = mask[0, 0].view(frames, h, MASK_PATCH, w, MASK_PATCH).permute(2, 4, 0, 1, 3)
        mask_latents = mask_latents.reshape(1, MASK_PATCH * MASK_PATCH, frames, h, w)
        mask_latents = torch.nn.functional.interpolate(mask_latents, size=((frames + 3) // 4, h, w),
                                                       mode="nearest-exact")
        out = {}
        if reference is not None:
            ref = self.encode_video(frames_to_tensor([reference]))
            video_latents = torch.cat([torch.cat([ref, torch.zeros_like(ref)], dim=1), video_latents], dim=2)
            mask_latents = torch.cat([torch.zeros_like(mask_latents[:, :, :1]), mask_latents], dim=2)
            out["reference_latents"] = ref
        out["vace_context"] = torch.cat([video_latents, mask_latents.to(video_latents)], dim=1)
        return out

    def encode(self, item: dict) -> dict:
        inputs = super().encode(item)
        video = item["video"]
        width, height = video[0].size
        vace_video = self._vace_video(item.get(VIDEO_KEY))
        reference = self._reference(item.get(REFERENCE_KEY), width, height)
        vace = self.vace_inputs(vace_video, reference, len(video), height, width)
        ref = vace.pop("reference_latents", None)
        if ref is not None:  # DiffSynth trains on [reference frame, video] latents
            inputs["latents"] = torch.cat([ref, inputs["latents"]], dim=2)
        if self._sample_vace is None:
            self._sample_vace = {"video": vace_video, "reference": reference}
        return {**inputs, **vace}

    @staticmethod
    def _vace_video(value):
        if value is None:
            return None
        if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(f, Image.Image) for f in value):
            raise ValueError(f"{VIDEO_KEY} must be a video loaded as frames: add {VIDEO_KEY} to "
                             f"dataset.data_file_keys (video,{VIDEO_KEY},{REFERENCE_KEY})")
        return value

    @staticmethod
    def _reference(value, width: int, height: int):
        if value is None:
            return None
        if isinstance(value, list):  # DiffSynth's Wan train.py: the first element of a list-loaded reference
            value = value[0]
        if not isinstance(value, Image.Image):
            raise ValueError(f"{REFERENCE_KEY} must be an image: add {REFERENCE_KEY} to dataset.data_file_keys")
        if value.size != (width, height):
            raise ValueError(f"{REFERENCE_KEY} is {value.size[0]}x{value.size[1]} but the video is {width}x{height}: "
                             "DiffSynth concatenates their latents, so set resolution.height/width (fixed size)")
        return value

    # ---------------------------------------------------------------- denoiser
    def predict(self, noisy_latents: torch.Tensor, timestep: torch.Tensor, inputs: dict) -> torch.Tensor:
        if "vace_context" not in inputs:
            return super().predict(noisy_latents, timestep, inputs)
        x = noisy_latents.to(self.device, self.torch_dtype)
        t = timestep.reshape(-1).to(self.device, torch.float32)
        return vace_model.forward_with_vace(self.dit, self.vace, x, t, inputs["prompt_emb"],
                                            inputs["vace_context"].to(x.dtype), inputs.get("vace_scale", 1.0))

    @torch.no_grad()
    def sample_inputs(self, prompt: str, height: int = 0, width: int = 0, num_frames: int = 1) -> dict:
        inputs = super().sample_inputs(prompt, height, width, num_frames)
        cond = self._sample_vace or {}
        reference = cond.get("reference")
        if reference is not None and reference.size != (width, height):
            reference = reference.resize((width, height))
        vace = self.vace_inputs(cond.get("video"), reference, num_frames, height, width)
        vace.pop("reference_latents", None)
        return {**inputs, **vace}

    @torch.no_grad()
    def render(self, inputs: dict, seed: int, height: int, width: int, num_inference_steps: int,
               num_frames: int = 1, sigma_shift: float = SHIFT) -> list[Image.Image]:
        """As Wan's, with the reference frame: one more latent frame (DiffSynth's noise rolled so the reference
        frame's noise is the last one drawn), dropped before decoding."""
        if "vace_context" not in inputs:
            return super().render(inputs, seed, height, width, num_inference_steps, num_frames,
                                  sigma_shift=sigma_shift)
        self._check_sample_size(height, width, num_frames)
        frames = (num_frames - 1) // self.temporal_factor + 1
        extra = inputs["vace_context"].shape[2] - frames
        shape = (1, self.z_dim, frames + extra, height // self.spatial_factor, width // self.spatial_factor)
        latents = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        if extra:
            latents = torch.cat([latents[:, :, -extra:], latents[:, :, :-extra]], dim=2)
        latents = latents.to(self.device, self.torch_dtype)
        latents = euler_sample(self.predict, latents, inference_sigmas(num_inference_steps, sigma_shift), inputs)
        return self.decode(latents[:, :, extra:])


# ------------------------------------------------------------------------------------------------ real sizes
def _vace_real(heads: int, ffn: int, layers: int, vace_layers: list[int]) -> dict:
    return {**real_configs._wan_dit(heads, ffn, layers), "vace_layers": vace_layers, "vace_in_channels": 96}


_CLS = "diffusers.WanVACETransformer3DModel"
WanVace.real_models = {
    "wan2.1-vace-1.3b-dit": {"cls": _CLS, "family": "wan", "component": "dit",
                             "files": "Wan-AI/Wan2.1-VACE-1.3B:diffusion_pytorch_model*.safetensors",
                             "config": _vace_real(12, 8960, 30, list(range(0, 30, 2)))},
    "wan2.1-vace-14b-dit": {"cls": _CLS, "family": "wan", "component": "dit",
                            "files": "Wan-AI/Wan2.1-VACE-14B:diffusion_pytorch_model*.safetensors",
                            "config": _vace_real(40, 13824, 40, list(range(0, 40, 5)))},
}
WanVace.weight_files = {
    "wan2.1-vace-1.3b-dit": ("Wan-AI/Wan2.1-VACE-1.3B:diffusion_pytorch_model.safetensors",
                             "iic/VACE-Wan2.1-1.3B-Preview:diffusion_pytorch_model.safetensors"),
    "wan2.1-vace-14b-dit": ("Wan-AI/Wan2.1-VACE-14B:diffusion_pytorch_model-00001-of-00007.safetensors",
                            "PAI/Wan2.2-VACE-Fun-A14B:high_noise_model/diffusion_pytorch_model-00001-of-00007.safetensors",
                            "PAI/Wan2.2-VACE-Fun-A14B:low_noise_model/diffusion_pytorch_model-00001-of-00007.safetensors"),
}
