"""Shape buckets: rows whose samples will have the same tensor shapes, so a batch can be stacked.

A row's bucket key lists, per file column, the size each file is trained at after DiffSynth's resize rules
(``WxH``; ``WxHxN`` for a video with N frames kept), e.g. ``image=48x64`` or ``image=64x64;edit_image=64x64``.
Validation writes the same strings (``file_checks``), so the data report's buckets are training's buckets.

Keys are read cheaply: image headers only (PIL reads the size without decoding), a video's frame count
from its index and the size of its first frame.
"""
from __future__ import annotations

import collections
import math
from typing import Iterable

from PIL import Image

from .loading import absolute, is_url, load_image
from .resolution import target_size
from .video import count_frames, load_video_frames, usable_frames, video_kind


def format_key(parts: Iterable[tuple[str, list[str]]]) -> str:
    """``column=shape[,shape...]`` joined by ``;``, in data_file_keys order (one string: a JSON key)."""
    return ";".join(f"{column}={','.join(shapes)}" for column, shapes in parts)


def _trained(width: int, height: int, rules) -> str:
    w, h = target_size(width, height, rules.max_pixels, rules.height, rules.width, rules.height_factor,
                       rules.width_factor)
    return f"{w}x{h}"


def _image_size(path: str) -> tuple[int, int]:
    if is_url(path):
        return load_image(path).size
    with Image.open(path) as image:  # reads the header, not the pixels
        return image.size


def cell_shapes(base_path: str, value, rules, is_video: bool) -> list[str]:
    """The trained shape(s) of one file cell, as validation reports them."""
    if is_video:
        path = absolute(base_path, value)
        if video_kind(path) == "video":
            first = load_video_frames(path, 1)[0]  # one frame for the size
            size, total = first.size, count_frames(path)
        else:
            size, total = _image_size(path), count_frames(path)
        n = usable_frames(total, rules.num_frames, rules.time_division_factor, rules.time_division_remainder)
        return [f"{_trained(*size, rules)}x{n}"]
    values = value if isinstance(value, list) else [value]
    return [_trained(*_image_size(absolute(base_path, v)), rules) for v in values]


def row_key(row: dict, base_path: str, data_file_keys: list[str], video_keys: Iterable[str], rules) -> str:
    video_keys = set(video_keys)
    for_key = getattr(rules, "for_key", lambda key: rules)
    return format_key((key, cell_shapes(base_path, row[key], for_key(key), key in video_keys))
                      for key in data_file_keys if key in row)


def bucket_stats(keys: list[str], batch_size: int, world_size: int = 1) -> dict:
    """Rows, batches and remainder per bucket, and the batches one epoch gives each process.

    A bucket's remainder (rows % batch_size) becomes one smaller last batch; the batch count is then padded
    to a multiple of the process count (see ``training/sampler.py``)."""
    counts = collections.Counter(keys)
    buckets = [{"key": key, "rows": n, "batches": math.ceil(n / batch_size), "remainder": n % batch_size}
               for key, n in sorted(counts.items())]
    batches = sum(b["batches"] for b in buckets)
    per_rank = math.ceil(batches / world_size)
    return {"batch_size": batch_size, "world_size": world_size, "num_buckets": len(buckets), "rows": len(keys),
            "batches": batches, "batches_per_process": per_rank, "padding_batches": per_rank * world_size - batches,
            "buckets": buckets}
