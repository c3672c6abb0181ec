"""Wan2.2-Animate-14B (DiffSynth's examples/wanvideo/model_training/{lora,full}/Wan2.2-Animate-14B.sh): the Wan
image-to-video DiT plus DiffSynth's ``animate_adapter`` (``animate_model.py``), a registered variant of ``wan``
selected by ``animate_pose_video`` in ``model.extra_inputs`` (the recipes: ``input_image,animate_pose_video,
animate_face_video``).

The conditioning, as DiffSynth's units build it in training:

* ``input_image`` = the video's first frame: the image-to-video ``y`` (mask + VAE latents of [image, zeros...]) and
  its CLIP features, as every Wan image-to-video DiT takes them;
* ``animate_pose_video`` (a video column, loaded at the video's size) cut to ``len(video) - 4`` frames
  (``WanVideoUnit_AnimateVideoSplit``) and VAE-encoded: ``pose_latents``, one latent frame fewer than the video's,
  added after the patch embedding to every latent frame but the first;
* ``animate_face_video`` (a video column DiffSynth's loader crops and resizes to 512x512) cut the same way, kept as
  pixels in [-1, 1]: ``face_pixel_values``, encoded by the adapter's motion and face encoders inside the forward.

Both are computed by the encoder (cached with the latents). Trainable: LoRA on the DiT (``q,k,v,o,ffn.0,ffn.2``, the
LoRA recipe, ``--remove_prefix_in_ckpt pipe.dit.``) or the adapter in full (``--trainable_models animate_adapter``,
``--remove_prefix_in_ckpt pipe.animate_adapter.``: the checkpoint keys are the released file's adapter keys).
Save-point samples use the first encoded row's first frame, pose and face clips; as DiffSynth's pipeline does with
animate inputs, the first latent frame (the reference frame) is dropped before decoding (num_frames - 4 frames).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from ...errors import ConfigError
from ...models.tiny import save_model
from ..base import DataRules
from . import animate_model, real_configs, refusals
from .animate_model import FACE_SIZE, FRAMES_SHORTER
from .convert import diffusers_to_wan_dit
from .pipeline import SHIFT, Wan, data_rules, frames_to_tensor

POSE_KEY, FACE_KEY = "animate_pose_video", "animate_face_video"
ENTRY = "Wan-AI/Wan2.2-Animate-14B:diffusion_pytorch_model*.safetensors"


def _animate_rules(rules: DataRules) -> DataRules:
    return replace(rules, video_keys=tuple(dict.fromkeys((*rules.video_keys, POSE_KEY, FACE_KEY))),
                   shorter_clip_keys=((POSE_KEY, FRAMES_SHORTER), (FACE_KEY, FRAMES_SHORTER)),
                   fixed_size_keys=((FACE_KEY, FACE_SIZE, FACE_SIZE),))


# ------------------------------------------------------------------------------------------------ tiny twin
TINY_ADAPTER = {"face_blocks": 1, "pose_channels": 16, "patch_size": [1, 2, 2],
                "motion_channels": [2, 2, 4, 4, 4, 4, 4, 4], "style_dim": 16, "motion_dim": 4, "face_heads": 2,
                "face_hidden": 8}


def write_tiny_animate(out_dir: Path, seed: int = 0) -> None:
    """``Wan-AI/Wan2.2-Animate-14B`` layout: one DiT file holding the image-to-video DiT and the adapter (released
    names), Wan-AI's config.json (model_type animate), UMT5, Wan2.1 VAE, CLIP, tokenizer. The motion encoder keeps
    the real 512x512 input (8 levels) at a few channels."""
    from . import tiny

    torch.manual_seed(seed)
    dit = tiny.tiny_dit(in_ch=36, image_dim=32)
    c = dit.config
    dim = c.num_attention_heads * c.attention_head_dim
    adapter = animate_model.WanAnimateAdapter(dim=dim, heads=c.num_attention_heads, **TINY_ADAPTER)
    with torch.no_grad():  # the released file's zero-initialised parts are trained: give them values
        for p in adapter.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.1)
    state = {**diffusers_to_wan_dit(dit.state_dict()), **adapter.state_dict()}
    save_model(state, out_dir, "diffusion_pytorch_model", 1, {
        "_class_name": "WanModel", "model_type": "animate", "dim": dim, "num_heads": c.num_attention_heads,
        "ffn_dim": c.ffn_dim, "freq_dim": c.freq_dim, "in_dim": c.in_channels, "out_dim": c.out_channels,
        "num_layers": c.num_layers, "text_len": 512, "eps": c.eps, "motion_encoder_dim": TINY_ADAPTER["style_dim"]})
    tiny.write_common(out_dir, "2.1")
    tiny.write_tiny_clip(out_dir)


# ------------------------------------------------------------------------------------------------ the variant
class WanAnimate(Wan):
    name = "wan_animate"
    aliases = ("wan_video_animate", "wan2.2_animate")
    summary = "Wan2.2-Animate-14B: Wan image-to-video plus the animate adapter (animate_pose_video, animate_face_video)"
    variant_of = "wan"
    selected_by = POSE_KEY
    extra_inputs = ("input_image", POSE_KEY, FACE_KEY)
    required_extra_inputs = ("input_image", POSE_KEY, FACE_KEY)
    refused_inputs = refusals.ANIMATE
    data = _animate_rules(Wan.data)
    # DiffSynth's sft:data_process cache holds the animate units' outputs under these names
    diffsynth_cache_keys = {**Wan.diffsynth_cache_keys, "y": "y", "clip_feature": "clip_feature",
                            "pose_latents": "pose_latents", "face_pixel_values": "face_pixel_values"}
    component_kinds = ()  # the Animate DiT file's kinds are Wan's (checkpoints.py)
    tiny_twins = {"wan2.2-animate-14b": ("Wan-AI/Wan2.2-Animate-14B", write_tiny_animate)}

    @classmethod
    def data_rules(cls, config=None) -> DataRules:
        return _animate_rules(data_rules(config) if config is not None else Wan.data)

    @classmethod
    def split_module(cls, component: str, module: torch.nn.Module) -> dict[str, torch.nn.Module]:
        if component == "dit" and animate_model.is_animate(module):
            return dict(zip(("dit", "animate_adapter"), animate_model.split(module)))
        return {component: module}

    @classmethod
    def component_of(cls, model_name: str) -> str:
        return "dit" if model_name == "animate_adapter" else model_name  # its keys are the DiT file's

    @classmethod
    def modules_without_gradient(cls, model_name: str, model: torch.nn.Module) -> list[str]:
        # DiffSynth's re-entrant checkpoint around the motion encoder leaves it without gradient (animate_model.py)
        return ["motion_encoder"] if model_name == "animate_adapter" else []

    def __init__(self, dit, *args, **kwargs):
        adapter = None
        if animate_model.is_animate(dit):
            dit, adapter = animate_model.split(dit)
        super().__init__(dit, *args, **kwargs)
        if adapter is None:
            raise ConfigError(f"model.extra_inputs names {POSE_KEY}, but the DiT file has no animate adapter "
                              f"(face_adapter.*, pose_patch_embedding.*): use {ENTRY}")
        if not self.require_vae_embedding:
            raise ConfigError("The animate adapter is trained on the Wan2.2-Animate image-to-video DiT (36 input "
                              "channels); this DiT takes none of the image condition")
        self.animate_adapter = adapter
        self._sample_animate: dict | None = None

    # ---------------------------------------------------------------- conditioning (no gradient)
    @staticmethod
    def _clip(item: dict, key: str, frames: int) -> list[Image.Image]:
        value = item.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(f, Image.Image) for f in value):
            raise ValueError(f"a row has no {key} frames: list {key} in dataset.data_file_keys (video,{POSE_KEY},"
                             f"{FACE_KEY}) and give every row the clip")
        if len(value) < frames:
            raise ValueError(f"{key} keeps {len(value)} frames but the video needs {frames} (its frames minus "
                             f"{FRAMES_SHORTER}, DiffSynth's cut): give the clip at least as many frames as the video "
                             "(run `diffsynth data validate`)")
        return value[:frames]

    @torch.no_grad()
    def animate_inputs(self, pose: list, face: list, height: int, width: int) -> dict:
        """``pose_latents`` (VAE latents of the pose clip at the video's size) and ``face_pixel_values`` (the face
        clip at 512x512, in [-1, 1])."""
        size = self.animate_adapter.face_size
        pose = [f if f.size == (width, height) else f.resize((width, height)) for f in pose]
        face = [f if f.size == (size, size) else f.resize((size, size)) for f in face]
        return {"pose_latents": self.encode_video(frames_to_tensor(pose)),
                "face_pixel_values": frames_to_tensor(face).to(self.device, self.torch_dtype)}

    def conditioning_inputs(self, item: dict, video: list, height: int, width: int) -> dict:
        if len(video) <= FRAMES_SHORTER:
            raise ValueError(f"video has {len(video)} frames: Wan2.2-Animate cuts the pose and face clips to the "
                             f"video's frames minus {FRAMES_SHORTER}, so it needs at least {FRAMES_SHORTER + 1}")
        frames = len(video) - FRAMES_SHORTER
        pose, face = self._clip(item, POSE_KEY, frames), self._clip(item, FACE_KEY, frames)
        inputs = super().conditioning_inputs(item, video, height, width)  # y, clip_feature of the first frame
        if self._sample_animate is None:
            self._sample_animate = {"pose": [f.copy() for f in pose], "face": [f.copy() for f in face]}
        return {**inputs, **self.animate_inputs(pose, face, height, width)}

    # ---------------------------------------------------------------- denoiser
    def predict(self, noisy_latents: torch.Tensor, timestep: torch.Tensor, inputs: dict) -> torch.Tensor:
        if "pose_latents" not in inputs:
            return super().predict(noisy_latents, timestep, inputs)
        x = noisy_latents.to(self.device, self.torch_dtype)
        t = timestep.reshape(-1).to(self.device, torch.float32)
        x = torch.cat([x, inputs["y"].to(x)], dim=1)
        clip = inputs.get("clip_feature")
        return animate_model.forward_with_animate(
            self.dit, self.animate_adapter, x, t, inputs["prompt_emb"], inputs["pose_latents"].to(x),
            inputs["face_pixel_values"].to(x), None if clip is None else clip.to(x))

    @torch.no_grad()
    def sample_inputs(self, prompt: str, height: int = 0, width: int = 0, num_frames: int = 1,
                      images=None) -> dict:
        """The first encoded row's pose and face clips (their first ``num_frames - 4`` frames, the last one held if
        shorter) and first frame (or the entry's image)."""
        if num_frames <= FRAMES_SHORTER:
            raise ValueError(f"sample.num_frames = {num_frames}: Wan2.2-Animate samples need at least "
                             f"{FRAMES_SHORTER + 1} frames (the pose and face clips have num_frames - 4)")
        inputs = super().sample_inputs(prompt, height, width, num_frames, images)
        frames = num_frames - FRAMES_SHORTER
        cond = self._sample_animate or {}
        size = self.animate_adapter.face_size
        pose = cond.get("pose") or [Image.new("RGB", (width, height), (0, 0, 0))]
        face = cond.get("face") or [Image.new("RGB", (size, size), (127, 127, 127))]
        pose = (pose + [pose[-1]] * frames)[:frames]
        face = (face + [face[-1]] * frames)[:frames]
        return {**inputs, **self.animate_inputs(pose, face, height, width)}

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        # DiffSynth's pipeline drops the reference latent frame of an animate run before decoding
        return super().decode(latents[:, :, 1:] if self._rendering else latents)

    _rendering = False

    @torch.no_grad()
    def render(self, inputs: dict, seed: int, height: int, width: int, num_inference_steps: int,
               num_frames: int = 1, cfg_scale: float = 1.0, negative_inputs: dict | None = None,
               sigma_shift: float = SHIFT) -> list[Image.Image]:
        self._rendering = "pose_latents" in inputs
        try:
            return super().render(inputs, seed, height, width, num_inference_steps, num_frames, cfg_scale,
                                  negative_inputs, sigma_shift)
        finally:
            self._rendering = False


# ------------------------------------------------------------------------------------------------ real sizes
_ANIMATE_14B = {**real_configs._wan_dit(40, 13824, 40, in_ch=36, image_dim=1280, added_kv=5120),
                "animate_adapter": {"dim": 5120, "heads": 40, "face_blocks": 8, "pose_channels": 16,
                                    "patch_size": [1, 2, 2], "motion_channels": list(animate_model.REAL_CHANNELS),
                                    "style_dim": 512, "motion_dim": 20, "face_heads": 4, "face_hidden": 1024}}
WanAnimate.real_models = {
    "wan2.2-animate-14b-dit": {"cls": "diffsynth.families.wan.animate_model.WanAnimateDiT", "family": "wan",
                               "component": "dit", "files": ENTRY, "config": _ANIMATE_14B},
}
WanAnimate.weight_files = {
    "wan2.2-animate-14b-dit": ("Wan-AI/Wan2.2-Animate-14B:diffusion_pytorch_model-00001-of-00004.safetensors",),
}
