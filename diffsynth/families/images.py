"""Image tensors and 2x2 latent patches, shared by the image families (Qwen-Image, FLUX.1)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


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
