"""Per-sample loss masks (masked loss): a grayscale image the size of the sample's target file, white = trained,
black = no gradient. Found in the row's mask column, else as ``<name>_mask.png`` beside the target file.

The mask is sized with the image's own rules (same scale and centre crop, so it stays aligned), then averaged
down to the latent grid (``latent_mask``): a latent cell wholly under black gets weight 0. One mask serves
every frame of a video sample (latents (B, C, T, H, W) get a (B, 1, 1, H, W) mask).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from .loading import absolute, is_url
from .metadata import is_missing
from .video import load_video_frames, video_kind

MASK_SUFFIX = "_mask"


def target_value(row: dict, data_file_keys: list[str]):
    """The row's target file (first file column present; the first file of a list)."""
    for key in data_file_keys:
        if key in row and not is_missing(row[key]):
            value = row[key]
            return value[0] if isinstance(value, list) and value else value
    return None


def beside(value: str) -> str:
    """``a/b/001.jpg`` -> ``a/b/001_mask.png``."""
    stem, _ = os.path.splitext(value)
    return f"{stem}{MASK_SUFFIX}.png"


def _native_size(path: str) -> tuple[int, int]:
    if video_kind(path) == "video":
        return load_video_frames(path, 1)[0].size
    with Image.open(path) as image:
        return image.size


def check_mask(row: dict, base_path: str, data_file_keys: list[str], video_keys, mask_column: str):
    """(problem, mask path relative to ``base_path`` or None for no mask). A mask named in the column must exist;
    one beside the file is used when it exists. It must decode and match the target file's size."""
    target = target_value(row, data_file_keys)
    if not isinstance(target, str) or is_url(target):
        return None, None
    named = row.get(mask_column)
    if named is not None and not is_missing(named) and str(named).strip():
        mask = str(named)
        if not Path(absolute(base_path, mask)).is_file():
            return f"mask file not found: {absolute(base_path, mask)}", None
    else:
        mask = beside(target)
        if not Path(absolute(base_path, mask)).is_file():
            return None, None
    path = absolute(base_path, mask)
    try:
        with Image.open(path) as image:
            image.load()
            size = image.size
    except Exception as e:  # any decode failure is a row problem
        return f"cannot decode mask {path}: {type(e).__name__}: {e}", None
    try:
        expected = _native_size(absolute(base_path, target))
    except Exception:
        return None, mask  # the target's own check reports it
    if size != expected:
        return (f"mask {path} is {size[0]}x{size[1]} but {target} is {expected[0]}x{expected[1]}; masks must have "
                "the size of their image"), None
    return None, mask


def load_mask(base_path: str, mask: str | None, rules) -> Image.Image | None:
    """The mask sized like its image (None: no mask, all ones)."""
    if mask is None:
        return None
    with Image.open(absolute(base_path, mask)) as image:
        image.load()
        gray = image.convert("L")
    return rules.apply(gray)


def latent_mask(mask: Image.Image | None, latents: torch.Tensor) -> torch.Tensor:
    """The mask on the latent grid of ``latents`` (1, C, [T,] H, W): (1, 1, [1,] H, W) float32 in [0, 1],
    area-averaged; None gives all ones."""
    h, w = latents.shape[-2:]
    shape = (1, 1) + (1,) * (latents.dim() - 4) + (h, w)
    if mask is None:
        return torch.ones(shape, dtype=torch.float32)
    pixels = torch.frombuffer(bytearray(mask.tobytes()), dtype=torch.uint8).reshape(1, 1, mask.size[1], mask.size[0])
    grid = F.interpolate(pixels.float() / 255.0, size=(h, w), mode="area")
    return grid.reshape(shape)


def attach(inputs: dict, item: dict) -> dict:
    """Encoded inputs plus the item's per-sample loss extras: ``loss_mask`` on the latent grid (when masked loss
    is on) and ``loss_weight`` (B,) (when a dataset weight is set). Nothing is added by default."""
    if "loss_mask_image" in item and "latents" in inputs:
        inputs = {**inputs, "loss_mask": latent_mask(item["loss_mask_image"], inputs["latents"]).to(
            inputs["latents"].device)}
    if "loss_weight" in item:
        inputs = {**inputs, "loss_weight": torch.tensor([float(item["loss_weight"])])}
    return inputs

