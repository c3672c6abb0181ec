"""Video cells (DiffSynth's ``UnifiedDataset.default_video_operator``): a clip becomes a list of PIL frames.

* Which loader: by lower-cased extension. Still images are 1-frame videos, ``gif`` is read with PIL,
  the video containers with decord.
* How many frames: ``n`` = ``num_frames`` capped at the clip length and then lowered until
  ``n % time_division_factor == time_division_remainder`` (4k+1 by default).
* Which ``n`` (``resolution.frame_sampling``, ``frame_indices``): ``first`` = frames 0..n-1 (DiffSynth's, the
  default); ``uniform`` = spread evenly from the first to the last frame; ``random`` = n consecutive frames from a
  start drawn per clip from ``frame_seed`` and the clip's name (fixed per clip, so the encoder cache holds it).
* decord decodes at native size; resizing is left to the caller (decord's decode-time resize is buggy).
"""
from __future__ import annotations

import random

from PIL import Image, ImageSequence

from .loading import extension, is_url, load_image

STILL_EXTENSIONS = {"jpg", "jpeg", "png", "webp", "bmp"}
GIF_EXTENSIONS = {"gif"}
VIDEO_EXTENSIONS = {"mp4", "avi", "mov", "wmv", "mkv", "flv", "webm"}


def usable_frames(total: int, num_frames: int, time_division_factor: int = 4,
                  time_division_remainder: int = 1) -> int:
    """How many leading frames DiffSynth takes from a clip of ``total`` frames (never more than ``total``)."""
    n = min(num_frames, total)
    while n > 1 and n % time_division_factor != time_division_remainder:
        n -= 1
    return n


FRAME_SAMPLING = ("first", "uniform", "random")


def frame_indices(total: int, n: int, mode: str = "first", seed: int = 0, key: str = "") -> list[int]:
    """Which ``n`` of a clip's ``total`` frames are taken (see the module doc); ``key`` names the clip."""
    if mode == "first" or n >= total:
        return list(range(n))
    if mode == "uniform":
        return [round(i * (total - 1) / (n - 1)) for i in range(n)] if n > 1 else [0]
    if mode == "random":
        start = random.Random(f"frames:{seed}:{key}").randint(0, total - n)
        return list(range(start, start + n))
    raise ValueError(f"frame sampling {mode!r} is not one of {list(FRAME_SAMPLING)}")


def is_valid_frame_count(n: int, time_division_factor: int = 4, time_division_remainder: int = 1) -> bool:
    return n >= 1 and n % time_division_factor == time_division_remainder % time_division_factor


def video_kind(path: str) -> str:
    """``still``, ``gif`` or ``video``; a ValueError naming the supported extensions otherwise."""
    ext = extension(path)
    for kind, exts in (("still", STILL_EXTENSIONS), ("gif", GIF_EXTENSIONS), ("video", VIDEO_EXTENSIONS)):
        if ext in exts:
            return kind
    supported = sorted(STILL_EXTENSIONS | GIF_EXTENSIONS | VIDEO_EXTENSIONS)
    raise ValueError(f"{path}: unsupported extension {ext!r} for a video column; use one of {supported}")


def count_frames(path: str) -> int:
    """Frames in the file without decoding them all (used by validation)."""
    kind = video_kind(path)
    if kind == "still":
        return 1
    if kind == "gif":
        with Image.open(path) as gif:
            return getattr(gif, "n_frames", 1)
    return len(_video_reader(path))


def _video_reader(path: str):
    if is_url(path):
        raise ValueError(f"{path}: video URLs are not supported; download the clip and list its local path")
    import decord  # imported here: workers and image-only runs never pay for it

    return decord.VideoReader(path, ctx=decord.cpu(0))  # native size: no width/height (buggy resize)


def load_video_frames(path: str, num_frames: int, time_division_factor: int = 4,
                      time_division_remainder: int = 1, sampling: str = "first", seed: int = 0,
                      key: str | None = None) -> list[Image.Image]:
    """The usable frames (``frame_indices``) of a still image, GIF or video file, as RGB PIL images at native
    size. ``key`` names the clip for ``random`` sampling (default: the path)."""
    key = path if key is None else key
    kind = video_kind(path)
    if kind == "still":
        return [load_image(path)]
    if kind == "gif":
        with Image.open(path) as gif:
            total = getattr(gif, "n_frames", 1)
            n = usable_frames(total, num_frames, time_division_factor, time_division_remainder)
            wanted = frame_indices(total, n, sampling, seed, key)
            frames = {}
            for i, frame in enumerate(ImageSequence.Iterator(gif)):
                if i > wanted[-1]:
                    break
                if i in wanted:
                    frames[i] = frame.convert("RGB")
            return [frames[i] for i in wanted]
    reader = _video_reader(path)
    n = usable_frames(len(reader), num_frames, time_division_factor, time_division_remainder)
    if n < 1:
        raise ValueError(f"{path}: the video holds no frames")
    batch = reader.get_batch(frame_indices(len(reader), n, sampling, seed, key)).asnumpy()  # (n, H, W, 3) uint8
    return [Image.fromarray(frame) for frame in batch]
