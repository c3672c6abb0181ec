"""What a file cell of a row becomes: DiffSynth's default image and video operators
(``UnifiedDataset.default_image_operator`` / ``default_video_operator``, ``diffsynth/core/data/unified_dataset.py``).

* image column: a path or URL -> one resized RGB image; a list of them -> a list (multi-image inputs).
* video column: a path -> a list of resized frames (still image = 1 frame, GIF, or a video container).
Anything else (a number, an empty CSV cell read as NaN) is an error, as in DiffSynth.
"""
from __future__ import annotations

from .loading import absolute, load_image
from .video import load_video_frames


def _describe(value) -> str:
    if isinstance(value, float) and value != value:
        return "an empty cell (NaN)"
    return f"{type(value).__name__} {value!r}"


def load_image_cell(base_path: str, value, rules):
    if isinstance(value, list):
        return [load_image_cell(base_path, v, rules) for v in value]
    if not isinstance(value, str):
        raise ValueError(f"expected an image path, URL or list of them, got {_describe(value)}")
    return rules.apply(load_image(absolute(base_path, value)))


def load_video_cell(base_path: str, value, rules):
    if not isinstance(value, str):
        raise ValueError(f"expected a video (or image/GIF) path, got {_describe(value)}")
    frames = load_video_frames(absolute(base_path, value), rules.num_frames, rules.time_division_factor,
                               rules.time_division_remainder, rules.frame_sampling, rules.frame_seed, value)
    return [rules.apply(frame) for frame in frames]  # DiffSynth sizes each frame on its own
