"""The Qwen2-VL image processor's output (``pixel_values``, ``image_grid_thw``), built here from the processor
config the way DiffSynth's processor builds it.

DiffSynth-Studio loads ``Qwen2VLProcessor`` from Qwen-Image-Edit's ``processor/`` folder; with torchvision
installed (DiffSynth needs it) transformers gives it the torchvision image processor. transformers' PIL fallback,
which is what this project would get without torchvision, resizes with PIL's bicubic filter instead: about one grey
level apart, 1-2e-3 relative in the prompt embedding. So we do the torchvision processor's arithmetic ourselves:

1. ``convert_to_rgb`` (transparency composited onto white), as a uint8 (C, H, W) tensor;
2. ``smart_resize``: each side rounded to a multiple of ``patch_size * merge_size`` (28), then scaled down or up
   (keeping the ratio) into [min_pixels, max_pixels]; the uint8 image resized there by torchvision's antialiased
   bicubic (:func:`~diffsynth.families.images.resize_pixels`);
3. rescale and normalise fused: float32 ``(x - mean·255) / (std·255)``;
4. patches: (grid_h·grid_w, C·temporal_patch_size·patch²), each 2×2 merge group's patches adjacent, the image
   repeated ``temporal_patch_size`` times in time; ``image_grid_thw`` = [1, grid_h, grid_w] per image.

The config is the folder's ``preprocessor_config.json`` (``size``'s shortest/longest edge, or ``min_pixels`` /
``max_pixels``, which win when both are given, as in transformers).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..images import resize_pixels

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# PIL's resample numbers as processor configs store them -> the torchvision mode
RESAMPLE = {2: "bilinear", 3: "bicubic"}
CONFIG_FILE = "preprocessor_config.json"


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """(height, width) the Qwen2-VL processor resizes an image to: sides multiples of ``factor``, area within
    [min_pixels, max_pixels], the ratio kept as closely as the rounding allows."""
    if min(height, width) < 1:
        raise ValueError(f"image of {width}x{height} pixels has no area")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image of {width}x{height}: the Qwen2-VL processor refuses a side ratio over 200")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        shrink = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / shrink / factor) * factor)
        w = max(factor, math.floor(width / shrink / factor) * factor)
    elif h * w < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * grow / factor) * factor
        w = math.ceil(width * grow / factor) * factor
    return h, w


@dataclass(frozen=True)
class VisionConfig:
    """The fields of a Qwen2-VL ``preprocessor_config.json`` that shape its output."""
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255
    resample: str = "bicubic"
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    do_convert_rgb: bool = True

    @classmethod
    def from_dict(cls, data: dict, where: str = CONFIG_FILE) -> "VisionConfig":
        kind = data.get("image_processor_type")
        if kind is not None and not str(kind).startswith("Qwen2VLImageProcessor"):
            raise ValueError(f"{where}: image_processor_type is {kind!r}, not a Qwen2-VL image processor")
        size = dict(data.get("size") or {})
        min_pixels = data.get("min_pixels", size.get("shortest_edge", cls.min_pixels))
        max_pixels = data.get("max_pixels", size.get("longest_edge", cls.max_pixels))
        resample = data.get("resample", 3)
        if resample not in RESAMPLE:
            raise ValueError(f"{where}: resample {resample!r} is not supported; use 2 (bilinear) or 3 (bicubic)")
        fields = {k: data[k] for k in ("patch_size", "merge_size", "temporal_patch_size", "rescale_factor",
                                       "do_resize", "do_rescale", "do_normalize", "do_convert_rgb") if k in data}
        config = cls(min_pixels=int(min_pixels), max_pixels=int(max_pixels), resample=RESAMPLE[resample],
                     image_mean=tuple(data.get("image_mean", OPENAI_CLIP_MEAN)),
                     image_std=tuple(data.get("image_std", OPENAI_CLIP_STD)), **fields)
        for name in ("patch_size", "merge_size", "temporal_patch_size", "min_pixels", "max_pixels"):
            if int(getattr(config, name)) < 1:
                raise ValueError(f"{where}: {name} = {getattr(config, name)} must be positive")
        if config.min_pixels > config.max_pixels:
            raise ValueError(f"{where}: min_pixels {config.min_pixels} exceeds max_pixels {config.max_pixels}")
        if len(config.image_mean) != 3 or len(config.image_std) != 3 or not all(config.image_std):
            raise ValueError(f"{where}: image_mean and image_std need three values each, std non-zero")
        return config

    @classmethod
    def from_folder(cls, folder: str | Path) -> "VisionConfig":
        path = Path(folder) / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_FILE} in {folder}")
        return cls.from_dict(json.loads(path.read_text()), str(path))


def rgb_pixels(image: Image.Image) -> torch.Tensor:
    """transformers' ``convert_to_rgb``: uint8 (3, H, W), transparency composited onto white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    array = np.array(image.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class VisionInputs:
    """Callable like the transformers image processor: ``VisionInputs(config)(images=[...])`` ->
    {"pixel_values": (sum of grid_h·grid_w, C·T·p²) float32, "image_grid_thw": (N, 3) long}."""

    def __init__(self, config: VisionConfig):
        self.config = config

    @classmethod
    def from_folder(cls, folder: str | Path) -> "VisionInputs":
        return cls(VisionConfig.from_folder(folder))

    @property
    def merge_size(self) -> int:
        return self.config.merge_size

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        c = self.config
        return smart_resize(height, width, c.patch_size * c.merge_size, c.min_pixels, c.max_pixels)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """One image as (C, H', W'): RGB, resized, rescaled and normalised."""
        c = self.config
        if not isinstance(image, Image.Image):
            raise TypeError(f"VisionInputs takes PIL images, got {type(image).__name__}")
        x = rgb_pixels(image) if c.do_convert_rgb else torch.from_numpy(np.array(image)).permute(2, 0, 1)
        if c.do_resize:
            x = resize_pixels(x.unsqueeze(0), *self.resized_size(*x.shape[-2:]), mode=c.resample)[0]
        if c.do_rescale and c.do_normalize:  # one fused step, mean and std scaled by 1/rescale_factor
            mean = torch.tensor(c.image_mean) * (1.0 / c.rescale_factor)
            std = torch.tensor(c.image_std) * (1.0 / c.rescale_factor)
            x = x.to(torch.float32).sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))
        elif c.do_normalize:
            x = x.to(torch.float32).sub_(torch.tensor(c.image_mean).view(-1, 1, 1))
            x = x.div_(torch.tensor(c.image_std).view(-1, 1, 1))
        elif c.do_rescale:
            x = x * c.rescale_factor
        return x

    def patches(self, pixels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """(C, H, W) -> (grid_h·grid_w, C·T·p·p), grid_h, grid_w; merge groups contiguous, time repeated."""
        c = self.config
        p, m, t = c.patch_size, c.merge_size, c.temporal_patch_size
        channels, height, width = pixels.shape
        if height % (p * m) or width % (p * m):
            raise ValueError(f"image of {width}x{height} is not a multiple of patch_size·merge_size = {p * m}; "
                             "keep do_resize on in the processor config")
        gh, gw = height // p, width // p
        x = pixels.reshape(channels, gh // m, m, p, gw // m, m, p)
        x = x.permute(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, m, m, C, p, p)
        x = x.unsqueeze(5).expand(*x.shape[:5], t, p, p)  # (..., C, T, p, p)
        return x.reshape(gh * gw, channels * t * p * p), gh, gw

    def __call__(self, images, return_tensors: str = "pt") -> dict:
        if return_tensors != "pt":
            raise ValueError(f"VisionInputs returns torch tensors only (return_tensors='pt'), not {return_tensors!r}")
        images = images if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("VisionInputs: no images given")
        values, grids = [], []
        for image in images:
            flat, gh, gw = self.patches(self.pixels(image))
            values.append(flat)
            grids.append([1, gh, gw])
        return {"pixel_values": torch.cat(values), "image_grid_thw": torch.tensor(grids, dtype=torch.long)}
