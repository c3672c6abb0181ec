"""DiffSynth's resolution rules (``ImageCropAndResize``, ``diffsynth/core/data/operators.py``): fixed size, or
dynamic under max_pixels; scale, then centre-crop."""
from __future__ import annotations

from PIL import Image


def target_size(width: int, height: int, max_pixels: int, fixed_height: int | None = None,
                fixed_width: int | None = None, height_factor: int = 16, width_factor: int = 16) -> tuple[int, int]:
    """(width, height) a ``width``×``height`` image is trained at.

    Dynamic resolution: shrink to ``max_pixels`` keeping the aspect ratio (never upscale), floor each side
    to the family's multiple. Fixed sizes are used as given (DiffSynth does not round them).
    """
    if fixed_height is not None and fixed_width is not None:
        return fixed_width, fixed_height
    w, h = width, height
    if w * h > max_pixels:
        scale = (w * h / max_pixels) ** 0.5
        h, w = int(h / scale), int(w / scale)
    return w // width_factor * width_factor, h // height_factor * height_factor


def crop_and_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale so the image covers ``width``×``height`` (bilinear), then crop the centre."""
    w0, h0 = image.size
    scale = max(width / w0, height / h0)
    new_w, new_h = round(w0 * scale), round(h0 * scale)
    if (new_w, new_h) != (w0, h0):
        image = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = int(round((new_w - width) / 2.0)), int(round((new_h - height) / 2.0))  # as torchvision
    return image.crop((left, top, left + width, top + height))


def resize_for_training(image: Image.Image, max_pixels: int, fixed_height: int | None = None,
                        fixed_width: int | None = None, height_factor: int = 16, width_factor: int = 16) -> Image.Image:
    w, h = target_size(*image.size, max_pixels, fixed_height, fixed_width, height_factor, width_factor)
    if w < 1 or h < 1:
        raise ValueError(f"image of size {image.size[0]}x{image.size[1]} is smaller than one "
                         f"{width_factor}x{height_factor} block")
    return crop_and_resize(image, w, h)
