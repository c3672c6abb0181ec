"""Wan's first-last-frame and Wan-Fun variants (DiffSynth's examples/wanvideo/model_training/{lora,full}/
Wan2.1-FLF2V-14B-720P, Wan2.1-Fun-*, Wan2.2-Fun-A14B-*), each a registered variant of ``wan`` chosen by the extra
input that only it takes, as DiffSynth's one Wan train.py does with its pipeline units:

* ``end_image`` -> :class:`WanFirstLastFrame` (FLF2V, Fun-InP): ``input_image`` = the video's first frame and
  ``end_image`` = its last (DiffSynth's Wan override). ``y`` = mask (1 on the first and last frame) + VAE latents of
  ``[first, zeros..., last]``; CLIP features of the first frame, and for FLF2V (a DiT with image position
  embeddings, ``img_emb.emb_pos``) of both frames side by side (514 tokens).
* ``control_video`` -> :class:`WanFunControl` (Fun-Control V1.0/V1.1, Wan2.2-Fun-A14B-Control): ``y`` = VAE latents
  of the control video + the image condition's last ``in_channels - 2·z`` channels (zeros without ``input_image``),
  CLIP features of zeros (257 tokens); with ``reference_image`` its VAE latents go through the DiT's ``ref_conv``
  in front of the video tokens and its CLIP features replace the zeros.
* ``camera_control_direction`` -> :class:`WanFunCamera` (Fun-V1.1 / Wan2.2-Fun-A14B Control-Camera): the Plücker
  camera embedding (``camera.py``) goes through the DiT's ``control_adapter``; ``y`` = the input image's latents in
  latent frame 0 and zeros after (the Wan2.2 DiT takes the image-to-video mask + latents instead), CLIP features
  of the input image.

The DiTs are the Wan architecture (``fun_dit.py`` adds ``ref_conv`` / ``control_adapter``), so LoRA targets,
checkpoint names and exports are Wan's. Save-point samples use the first encoded row's conditioning (its first and
last frame, control clip, reference image, camera move).
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
from PIL import Image

from ...errors import ConfigError
from . import tiny
from .camera import DEFAULT_SPEED, DIRECTIONS, camera_latents, check_direction
from .pipeline import Wan, frames_to_tensor

CLIP_TOKENS = 257  # DiffSynth's stand-in CLIP features without an image: zeros of the real encoder's token count


def _image(value, key: str) -> Image.Image:
    """An image cell as the dataset loads it (one image, or a one-element list as DiffSynth's Wan loader gives)."""
    if isinstance(value, list) and value:
        value = value[0]
    if not isinstance(value, Image.Image):
        raise ValueError(f"{key} must be an image file column (list it in dataset.data_file_keys); got "
                         f"{type(value).__name__}")
    return value


class WanFirstLastFrame(Wan):
    name = "wan_flf"
    aliases = ("wan_first_last_frame", "wan_fun_inp")
    summary = "Wan2.1-FLF2V / Wan-Fun-InP: first and last frame conditioning (input_image, end_image)"
    variant_of = "wan"
    selected_by = "end_image"
    extra_inputs = ("input_image", "end_image")
    required_extra_inputs = ("input_image", "end_image")
    tiny_twins = {
        "wan2.1-flf2v-14b": ("Wan-AI/Wan2.1-FLF2V-14B-720P", tiny.write_tiny_flf2v),
        "wan2.1-fun-inp": ("PAI/Wan2.1-Fun-1.3B-InP", tiny.write_tiny_i2v),
        # the Wan2.2-I2V-A14B architecture (36-channel experts, no CLIP), trained on first and last frames
        "wan2.2-fun-a14b-inp": ("PAI/Wan2.2-Fun-A14B-InP", tiny.write_tiny_i2v_a14b),
    }

    @classmethod
    def data_rules(cls, config=None):
        rules = super().data_rules(config)
        return replace(rules, derived_inputs=(*rules.derived_inputs, "end_image"))  # the video's last frame

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        embedder = self.dit.condition_embedder.image_embedder
        self.two_image_clip = embedder is not None and embedder.pos_embed is not None  # FLF2V
        self._sample_end_image: Image.Image | None = None

    @torch.no_grad()
    def first_last_condition(self, first: Image.Image, last: Image.Image, num_frames: int, height: int,
                             width: int) -> torch.Tensor:
        """``y``: mask (4 ch, 1 on the first and last frame) + VAE([first, zeros..., last])."""
        t = self.temporal_factor
        h, w = height // self.spatial_factor, width // self.spatial_factor
        mask = torch.zeros(1, num_frames, h, w, device=self.device)
        mask[:, 0] = mask[:, -1] = 1
        mask = torch.cat([mask[:, 0:1].repeat_interleave(t, dim=1), mask[:, 1:]], dim=1)
        mask = mask.view(1, mask.shape[1] // t, t, h, w).transpose(1, 2)
        pixels = torch.cat([frames_to_tensor([first.resize((width, height))]),
                            torch.zeros(1, 3, num_frames - 2, height, width),
                            frames_to_tensor([last.resize((width, height))])], dim=2)
        return torch.cat([mask.to(self.torch_dtype), self.encode_video(pixels)], dim=1)

    def first_last_inputs(self, first: Image.Image, last: Image.Image, num_frames: int, height: int,
                          width: int) -> dict:
        if num_frames < 2:
            raise ValueError(f"first-last-frame conditioning needs at least 2 frames, got {num_frames}")
        out = {}
        if self.require_vae_embedding:
            out["y"] = self.first_last_condition(first, last, num_frames, height, width)
        if self.require_clip_embedding:
            clip = self.encode_clip(first.resize((width, height)))
            if self.two_image_clip:
                clip = torch.cat([clip, self.encode_clip(last.resize((width, height)))], dim=1)
            out["clip_feature"] = clip
        return out

    def conditioning_inputs(self, item: dict, video: list, height: int, width: int) -> dict:
        first, last = video[0], video[-1]  # DiffSynth's Wan override: input_image / end_image
        if self._sample_image is None:
            self._sample_image, self._sample_end_image = first.copy(), last.copy()
        return self.first_last_inputs(first, last, len(video), height, width)

    def dit_inputs(self, inputs: dict) -> dict:
        clip = inputs.get("clip_feature")
        if clip is None or not self.two_image_clip:
            return {}
        # diffusers' FLF2V embedder takes the two images' features stacked on the batch axis (2B, 257, D)
        return {"encoder_hidden_states_image": clip.reshape(-1, clip.shape[1] // 2, clip.shape[2])}

    @torch.no_grad()
    def sample_inputs(self, prompt: str, height: int = 0, width: int = 0, num_frames: int = 1) -> dict:
        self._check_sample_size(height, width, num_frames)
        grey = Image.new("RGB", (width, height), (127, 127, 127))  # nothing encoded yet: a neutral frame
        first = self._sample_image or grey
        last = self._sample_end_image or first
        return {"prompt_emb": self.encode_prompt(prompt),
                **self.first_last_inputs(first, last, num_frames, height, width)}


class WanFunControl(Wan):
    name = "wan_fun_control"
    aliases = ("wan_control",)
    summary = "Wan-Fun Control: a control video (and a reference image) conditions the video"
    variant_of = "wan"
    selected_by = "control_video"
    extra_inputs = ("control_video", "reference_image", "input_image")
    required_extra_inputs = ("control_video",)
    tiny_twins = {
        "wan2.1-fun-control": ("PAI/Wan2.1-Fun-1.3B-Control", tiny.write_tiny_fun_control),
        "wan2.1-fun-v1.1-control": ("PAI/Wan2.1-Fun-V1.1-1.3B-Control", tiny.write_tiny_fun_control_v11),
        "wan2.2-fun-a14b-control": ("PAI/Wan2.2-Fun-A14B-Control", tiny.write_tiny_fun_control_a14b),
    }

    @classmethod
    def data_rules(cls, config=None):
        rules = super().data_rules(config)
        return replace(rules, video_keys=tuple(dict.fromkeys((*rules.video_keys, "control_video"))))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sample_control: list | None = None
        self._sample_reference: Image.Image | None = None
        if "reference_image" in self.wanted_inputs and getattr(self.dit, "ref_conv", None) is None:
            raise ConfigError("model.extra_inputs has reference_image, but this Wan DiT has no reference "
                              "convolution (ref_conv): reference images need a Fun-V1.1 or Wan2.2-Fun Control model; "
                              "remove reference_image for Fun V1.0")

    def check_dit_channels(self, in_ch: int, z: int) -> None:
        # latents + control latents + (zeros or the image condition's tail): 3z (Wan2.1-Fun) or 3z + 4 (Wan2.2-Fun)
        if in_ch not in (3 * z, 3 * z + 4):
            raise ConfigError(f"control_video needs a Wan-Fun Control DiT ({3 * z} or {3 * z + 4} input channels); "
                              f"this one takes {in_ch}: use a PAI/Wan*-Fun-*-Control model, or remove control_video "
                              "from model.extra_inputs")

    def control_inputs(self, control: list, image: Image.Image | None, reference: Image.Image | None,
                       num_frames: int, height: int, width: int) -> dict:
        if len(control) != num_frames:
            raise ValueError(f"control_video gives {len(control)} frames and the video {num_frames}: they must be "
                             "equal (run `diffsynth data validate`)")
        control_latents = self.encode_video(frames_to_tensor([f.resize((width, height)) for f in control]))
        y_dim = self.dit.config.in_channels - 2 * self.z_dim
        out = {}
        if image is not None:
            y = self.encode_image_condition(image, num_frames, height, width)[:, -y_dim:]
            if self.require_clip_embedding:
                out["clip_feature"] = self.encode_clip(image.resize((width, height)))
        else:
            y = control_latents.new_zeros((1, y_dim, *control_latents.shape[2:]))
            if self.require_clip_embedding:
                out["clip_feature"] = control_latents.new_zeros((1, CLIP_TOKENS, self.dit.config.image_dim))
        out["y"] = torch.cat([control_latents, y], dim=1)
        if reference is not None:
            reference = reference.resize((width, height))
            out["reference_latents"] = self.encode_video(frames_to_tensor([reference]))
            if self.image_encoder is not None and self.require_clip_embedding:
                out["clip_feature"] = self.encode_clip(reference)
        return out

    def conditioning_inputs(self, item: dict, video: list, height: int, width: int) -> dict:
        control = item.get("control_video")
        if not isinstance(control, list) or not control:
            raise ValueError("a row has no control_video frames: list control_video in dataset.data_file_keys "
                             "and give every row a control clip")
        image = video[0] if "input_image" in self.wanted_inputs else None
        reference = (_image(item.get("reference_image"), "reference_image")
                     if "reference_image" in self.wanted_inputs else None)
        if self._sample_control is None:
            self._sample_control = [f.copy() for f in control]
            self._sample_image = image.copy() if image is not None else None
            self._sample_reference = reference.copy() if reference is not None else None
        return self.control_inputs(control, image, reference, len(video), height, width)

    def dit_inputs(self, inputs: dict) -> dict:
        return {"reference_latents": inputs["reference_latents"]} if "reference_latents" in inputs else {}

    @torch.no_grad()
    def sample_inputs(self, prompt: str, height: int = 0, width: int = 0, num_frames: int = 1) -> dict:
        """The first row's control clip (its first ``num_frames`` frames, the last one held if it is shorter),
        input image and reference image."""
        self._check_sample_size(height, width, num_frames)
        control = self._sample_control or [Image.new("RGB", (width, height), (0, 0, 0))]
        control = (control + [control[-1]] * num_frames)[:num_frames]
        image = self._sample_image
        if image is None and "input_image" in self.wanted_inputs:
            image = Image.new("RGB", (width, height), (127, 127, 127))
        reference = self._sample_reference
        if reference is None and "reference_image" in self.wanted_inputs:
            reference = Image.new("RGB", (width, height), (127, 127, 127))
        return {"prompt_emb": self.encode_prompt(prompt),
                **self.control_inputs(control, image, reference, num_frames, height, width)}


class WanFunCamera(Wan):
    name = "wan_fun_camera"
    aliases = ("wan_camera", "wan_fun_control_camera")
    summary = "Wan-Fun Control-Camera: an input image and a camera move (direction, speed)"
    variant_of = "wan"
    selected_by = "camera_control_direction"
    extra_inputs = ("input_image", "camera_control_direction", "camera_control_speed")
    required_extra_inputs = ("input_image", "camera_control_direction")
    tiny_twins = {
        "wan2.1-fun-v1.1-control-camera": ("PAI/Wan2.1-Fun-V1.1-1.3B-Control-Camera", tiny.write_tiny_fun_camera),
        "wan2.2-fun-a14b-control-camera": ("PAI/Wan2.2-Fun-A14B-Control-Camera", tiny.write_tiny_fun_camera_a14b),
    }

    @classmethod
    def data_rules(cls, config=None):
        rules = super().data_rules(config)
        # Wan2.2-Fun-A14B-Control-Camera's recipe lists control_video in --data_file_keys; DiffSynth's loader routes
        # a file by its extension, so that column is a clip (loaded, and unused by the camera units)
        return replace(rules, video_keys=tuple(dict.fromkeys((*rules.video_keys, "control_video"))),
                       value_inputs=(("camera_control_direction", DIRECTIONS), ("camera_control_speed", "number")))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self.dit, "control_adapter", None) is None:
            raise ConfigError("camera_control_direction needs a Wan-Fun Control-Camera DiT (one with a "
                              "control_adapter): use PAI/Wan2.1-Fun-V1.1-*-Control-Camera or "
                              "PAI/Wan2.2-Fun-A14B-Control-Camera")
        self._sample_camera: tuple[str, float] | None = None

    def check_dit_channels(self, in_ch: int, z: int) -> None:
        if in_ch not in (2 * z, 2 * z + 4):
            raise ConfigError(f"a Control-Camera DiT takes {2 * z} (Wan2.1-Fun) or {2 * z + 4} (Wan2.2-Fun) input "
                              f"channels; this one takes {in_ch}")

    @staticmethod
    def camera_row(item: dict) -> tuple[str, float]:
        direction = item.get("camera_control_direction")
        try:
            check_direction(direction)
        except ValueError as e:
            raise ValueError(f"a row's {e}") from None
        speed = item.get("camera_control_speed")
        speed = DEFAULT_SPEED if speed is None or (isinstance(speed, float) and math.isnan(speed)) else speed
        try:
            speed = float(speed)
        except (TypeError, ValueError):
            raise ValueError(f"camera_control_speed {speed!r} is not a number") from None
        return direction, speed

    def camera_inputs(self, image: Image.Image, direction: str, speed: float, num_frames: int, height: int,
                      width: int) -> dict:
        out = {"camera": torch.tensor([[DIRECTIONS.index(direction), speed]], dtype=torch.float64)}
        if self.require_vae_embedding:  # Wan2.2-Fun: the image-to-video mask + latents
            out.update(self.image_inputs(image, num_frames, height, width))
            return out
        first = self.encode_video(frames_to_tensor([image.resize((width, height))]))
        frames = (num_frames - 1) // self.temporal_factor + 1
        out["y"] = torch.cat([first, first.new_zeros((1, first.shape[1], frames - 1, *first.shape[3:]))], dim=2)
        if self.require_clip_embedding:
            out["clip_feature"] = self.encode_clip(image.resize((width, height)))
        return out

    def conditioning_inputs(self, item: dict, video: list, height: int, width: int) -> dict:
        direction, speed = self.camera_row(item)
        if self._sample_image is None:
            self._sample_image, self._sample_camera = video[0].copy(), (direction, speed)
        return self.camera_inputs(video[0], direction, speed, len(video), height, width)

    def dit_inputs(self, inputs: dict) -> dict:
        # the camera embedding is pixel-sized (24 x frames x H x W): computed here from (direction, speed) and the
        # latents' shape rather than stored in the encoder cache
        y = inputs["y"]
        frames, h, w = y.shape[2:]
        factor = self.spatial_factor or 8  # every Control-Camera release uses the Wan2.1 VAE (8x)
        camera = torch.cat([camera_latents(DIRECTIONS[int(d)], float(s), (frames - 1) * self.temporal_factor + 1,
                                           h * factor, w * factor, self.temporal_factor)
                            for d, s in inputs["camera"].tolist()])
        return {"control_camera": camera.to(y.device, self.torch_dtype)}

    @torch.no_grad()
    def sample_inputs(self, prompt: str, height: int = 0, width: int = 0, num_frames: int = 1) -> dict:
        self._check_sample_size(height, width, num_frames)
        image = self._sample_image or Image.new("RGB", (width, height), (127, 127, 127))
        direction, speed = self._sample_camera or ("Left", DEFAULT_SPEED)
        return {"prompt_emb": self.encode_prompt(prompt),
                **self.camera_inputs(image, direction, speed, num_frames, height, width)}
