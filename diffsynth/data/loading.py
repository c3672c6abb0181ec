"""Loading one file of a dataset row: local path or http(s) URL, images (video comes with the video module)."""
from __future__ import annotations

import io
import os
import urllib.request
from pathlib import Path

from PIL import Image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def absolute(base_path: str | Path, value: str) -> str:
    """DiffSynth's ToAbsolutePath: ``os.path.join(base, value)``; URLs untouched."""
    return value if is_url(value) else os.path.join(str(base_path), value)


def load_image(path: str, timeout: float = 10.0) -> Image.Image:
    if is_url(path):
        request = urllib.request.Request(path, headers={"User-Agent": "diffsynth-pipeline"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read()
        image = Image.open(io.BytesIO(data))
    else:
        image = Image.open(path)
    image.load()  # decode now so a truncated file fails here, not later
    return image.convert("RGB")
