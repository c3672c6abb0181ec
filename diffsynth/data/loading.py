"""Loading one file of a dataset row: local path or http(s) URL into a decoded RGB image.

URL downloads follow DiffSynth's LoadImage: three attempts, sleeping 1 s then 2 s between them, then a
RuntimeError. The delays live in ``URL_RETRY_DELAYS`` and the sleep in ``_sleep`` so tests can shrink them.
"""
from __future__ import annotations

import io
import os
import time
import urllib.request
from pathlib import Path

from PIL import Image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
URL_RETRY_DELAYS = (1.0, 2.0)   # sleeps between the 3 attempts (DiffSynth's)
URL_TIMEOUT = 10.0
_sleep = time.sleep             # patched by tests


def is_url(value: str) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def absolute(base_path: str | Path, value: str) -> str:
    """DiffSynth's ToAbsolutePath: ``os.path.join(base, value)``; URLs untouched."""
    return value if is_url(value) else os.path.join(str(base_path), value)


def extension(path: str) -> str:
    """Lower-cased suffix without the dot, ignoring a URL's query string (DiffSynth's RouteByExtensionName)."""
    return os.path.splitext(path.split("?", 1)[0])[1].lower().lstrip(".")


def fetch_url(url: str) -> bytes:
    """GET ``url`` with DiffSynth's retry policy; the final error names the URL and every attempt's failure."""
    errors = []
    for attempt in range(len(URL_RETRY_DELAYS) + 1):
        if attempt:
            _sleep(URL_RETRY_DELAYS[attempt - 1])
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "diffsynth-pipeline"})
            with urllib.request.urlopen(request, timeout=URL_TIMEOUT) as response:
                return response.read()
        except Exception as e:  # noqa: BLE001 - any failure is retried, as DiffSynth does
            errors.append(f"{type(e).__name__}: {e}")
    raise RuntimeError(f"Could not download {url} after {len(errors)} attempts ({'; '.join(errors)}); "
                       "check the URL or download the file and list its local path in the metadata")


def load_image(path: str) -> Image.Image:
    """Decode a local file or URL to RGB. ``load()`` decodes now, so a truncated file fails here, not later."""
    image = Image.open(io.BytesIO(fetch_url(path))) if is_url(path) else Image.open(path)
    image.load()
    return image.convert("RGB")
