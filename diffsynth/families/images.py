"""Image tensors and 2x2 latent patches, shared by the image families (Qwen-Image, FLUX.1, FLUX.2, Z-Image).

Pixel arithmetic follows DiffSynth-Studio where it feeds a model: :func:`image_to_tensor` is its pipelines'
``preprocess_image`` (the VAE input), :func:`resize_pixels` is torchvision's tensor resize (what transformers' fast
image processors, which DiffSynth's Qwen2-VL processor is, run), written in plain torch because torchvision does
not install beside this project's CPU torch.
"""
from __future__ import annotations

import platform

import numpy as np
import torch
from PIL import Image


def image_to_tensor(image: Image.Image, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) in [-1, 1], with DiffSynth's ``BasePipeline.preprocess_image`` arithmetic: the
    0..255 values are cast to ``dtype`` on ``device`` first, then ``x * (2 / 255) + (-1)`` runs in that dtype
    (in bfloat16 this rounds differently from converting a float32 result)."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 3 or array.shape[2] != 3:
        mode = getattr(image, "mode", type(image).__name__)
        raise ValueError(f"image_to_tensor needs an RGB image, got {mode} of shape {array.shape}: "
                         "convert it with image.convert('RGB') first")
    pixels = torch.from_numpy(array.copy()).to(dtype=dtype, device=device)
    pixels = pixels * ((1 - (-1)) / 255) + (-1)
    return pixels.permute(2, 0, 1).unsqueeze(0)


RESIZE_MODES = ("bilinear", "bicubic")


def _native_uint8_resize(mode: str, device: torch.device) -> bool:
    """Whether torchvision hands a uint8 image to ``interpolate`` as it is (else it resizes a float32 copy and
    rounds back): on a CPU always for bicubic, for bilinear only where torch has its vectorised uint8 kernel."""
    if device.type != "cpu":
        return False
    if mode == "bicubic":
        return True
    return (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
            or platform.machine() in ("aarch64", "arm64"))


def resize_pixels(pixels: torch.Tensor, height: int, width: int, mode: str = "bilinear",
                  antialias: bool = True) -> torch.Tensor:
    """``torchvision.transforms.v2.functional.resize`` of a tensor image (..., C, H, W) to ``height``×``width``,
    in plain torch with torchvision's arithmetic.

    Float images are resized by ``interpolate`` (``align_corners=False``, antialiased when shrinking if
    ``antialias``). uint8 images go to ``interpolate`` as uint8 where torchvision does so (CPU bicubic, and CPU
    bilinear with AVX2/AVX512 or on ARM), else as a float32 copy that is clamped (bicubic), rounded and cast back.
    The same size returns the input itself, as torchvision does."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize_pixels: mode {mode!r} is not one of {', '.join(RESIZE_MODES)}")
    if height < 1 or width < 1:
        raise ValueError(f"resize_pixels: target size {height}x{width} must be at least 1x1")
    if pixels.ndim < 3:
        raise ValueError(f"resize_pixels needs an image (..., C, H, W), got shape {tuple(pixels.shape)}")
    if pixels.dtype != torch.uint8 and not pixels.is_floating_point():
        raise ValueError(f"resize_pixels: {pixels.dtype} images are not supported; give uint8 or a float dtype")
    shape = pixels.shape
    channels, old_h, old_w = shape[-3:]
    if (height, width) == (old_h, old_w) or pixels.numel() == 0:
        return pixels
    dtype = pixels.dtype
    batch = pixels.reshape(-1, channels, old_h, old_w)
    native = dtype in (torch.float32, torch.float64) or (dtype == torch.uint8
                                                          and _native_uint8_resize(mode, pixels.device))
    if (batch.shape[0] == 1 and batch.is_contiguous(memory_format=torch.channels_last)
            and batch.numel() != batch.stride()[0]):
        # torchvision's restride of a single channels-last image, so the output keeps that memory format
        strides = list(batch.stride())
        strides[0] = batch.numel()
        batch = batch.as_strided(batch.shape, strides)
    if not native:
        batch = batch.to(torch.float32)
    out = torch.nn.functional.interpolate(batch, size=[height, width], mode=mode, align_corners=False,
                                          antialias=antialias)
    if not native:
        if mode == "bicubic" and dtype == torch.uint8:
            out = out.clamp_(0, 255)
        if not dtype.is_floating_point:
            out = out.round_()
        out = out.to(dtype)
    return out.reshape(*shape[:-3], channels, height, width)


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


# ------------------------------------------------------------------------------------ reference images
# Image columns beside the target (Qwen-Image-Edit's edit_image, FLUX.1-Kontext's kontext_images): one image or a
# list per row, loaded by the dataset like `image`, and the first row's conditions the save-point samples.

def as_image_list(value, key: str) -> list[Image.Image]:
    """A reference-image cell as a non-empty list of images; a path left unloaded names the missing file key."""
    images = value if isinstance(value, list) else [value]
    for image in images:
        if isinstance(image, str):
            raise ValueError(f"{key} is the path {image!r}, not an image: add {key} to dataset.data_file_keys "
                             "so the file is loaded")
        if not isinstance(image, Image.Image):
            raise ValueError(f"{key} must be an image or a list of images, got {type(image).__name__}")
    if not images:
        raise ValueError(f"{key} is an empty list")
    return images


def check_image_column(config, key: str) -> None:
    """``key`` must be a file column, or its cells stay paths (DiffSynth: --data_file_keys "image,<key>")."""
    from ..errors import ConfigError
    from ..data.dataset import split_keys

    if key not in split_keys(config.dataset.data_file_keys):
        raise ConfigError(f"dataset.data_file_keys lacks {key}, so {key} would stay file paths; "
                          f"set dataset.data_file_keys: image,{key}")


def first_row_images(config, key: str, size_factor: int, width_factor: int):
    """The ``key`` image(s) of the dataset's first row, sized by the training rules; None if it has none."""
    from ..data.dataset import DataLoadError, ImageRules, UnifiedDataset

    d, r = config.dataset, config.resolution
    if not d.dataset_metadata_path:
        return None
    rules = ImageRules(r.max_pixels, r.height, r.width, size_factor, width_factor)
    try:
        return UnifiedDataset(d.dataset_base_path, d.dataset_metadata_path, [key], rules)[0].get(key)
    except (DataLoadError, OSError, ValueError) as e:
        print(f"[samples] cannot load the first row's {key} for samples ({e})")
        return None


class SampleReference:
    """The reference image(s) conditioning save-point samples: given, or read from the dataset's first row at the
    first sample (so loading a pipeline reads no data); None means text-to-image samples."""

    def __init__(self, key: str, load=None):
        self.key, self._load, self.value = key, load, None

    def get(self):
        if self.value is None and self._load is not None:
            load, self._load = self._load, None
            self.value = load()
            if self.value is None:
                print(f"[samples] no {self.key} in the dataset's first row: samples are text-to-image")
        return self.value
