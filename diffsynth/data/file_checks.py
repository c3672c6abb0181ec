"""Checking one file cell the way training will load it: exists, decodes, is large enough, has frames.

Each check returns ``(problems, shapes)``: reasons the cell is unusable and, when usable, the size each
file will be trained at (``WxH`` for images, ``WxHxN`` for videos: N = frames kept).
"""
from __future__ import annotations

from pathlib import Path

from .loading import absolute, extension, is_url, load_image
from .metadata import is_missing
from .resolution import target_size
from .video import VIDEO_EXTENSIONS, is_valid_frame_count, load_video_frames, video_kind


def _trained_size(image, rules) -> tuple[str | None, str | None]:
    """(``WxH`` it is trained at, or None) and the problem if it is too small for one factor block."""
    w, h = image.size
    tw, th = target_size(w, h, rules.max_pixels, rules.height, rules.width, rules.height_factor, rules.width_factor)
    if tw < 1 or th < 1:
        return None, (f"is {w}x{h}: after scaling under max_pixels it is smaller than one "
                      f"{rules.width_factor}x{rules.height_factor} block; use a larger file")
    return f"{tw}x{th}", None


def _path_problem(base_path: str, value) -> tuple[str | None, str | None]:
    """(absolute path, None) or (None, why the cell names no usable file)."""
    if is_missing(value):
        return None, "empty cell (NaN/null) where a file path is expected"
    if not isinstance(value, str):
        return None, f"expected a file path, got {type(value).__name__} {value!r}"
    if not value.strip():
        return None, "empty file path"
    path = absolute(base_path, value)
    if not is_url(path) and not Path(path).is_file():
        return None, f"file not found: {path}"
    return path, None


def video_in_image_column(path: str, column: str | None, video_keys) -> str:
    """Why a clip in a column the family loads as images cannot work, and which flags make it a video run."""
    what = (f"{path} is a video (.{extension(path)}: DiffSynth's loader reads "
            f"{', '.join(sorted(VIDEO_EXTENSIONS))} as video) in column {column!r}, which this model family loads "
            "as an image")
    if video_keys:
        return (f"{what}; put clips in a video column ({', '.join(sorted(video_keys))}) and list it in "
                "dataset.data_file_keys")
    return (f"{what} (model.family trains on images only); to train on clips use a Wan family (model.family: wan "
            "with a Wan model, e.g. presets/wan2.1-t2v-1.3b-lora.yaml) with the clips in a 'video' column and "
            "dataset.data_file_keys including video, or list an image here")


def check_image_cell(base_path: str, value, rules, column: str | None = None,
                     video_keys=()) -> tuple[list[str], list[str]]:
    problems, shapes = [], []
    for v in value if isinstance(value, list) else [value]:
        path, problem = _path_problem(base_path, v)
        if problem:
            problems.append(problem)
            continue
        if extension(path) in VIDEO_EXTENSIONS:  # routed by extension, as DiffSynth's operators do
            problems.append(video_in_image_column(path, column, video_keys))
            continue
        try:
            image = load_image(path)
        except Exception as e:  # any decode failure is a row problem, not a crash
            problems.append(f"cannot decode {path}: {type(e).__name__}: {e}")
            continue
        shape, problem = _trained_size(image, rules)
        problems += [f"{path} {problem}"] if problem else []
        shapes += [shape] if shape else []
    return problems, shapes


def check_video_cell(base_path: str, value, rules) -> tuple[list[str], list[str]]:
    """Decodes every frame training will read: a clip broken in the middle fails here, not mid-run."""
    if isinstance(value, list):
        return [f"expected one video path, got a list {value!r} (DiffSynth's video operator takes a string)"], []
    path, problem = _path_problem(base_path, value)
    if problem:
        return [problem], []
    try:
        video_kind(path)
        frames = load_video_frames(path, rules.num_frames, rules.time_division_factor,
                                   rules.time_division_remainder, rules.frame_sampling, rules.frame_seed, value)
    except Exception as e:
        return [f"cannot decode {path}: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"], []
    n = len(frames)
    if not is_valid_frame_count(n, rules.time_division_factor, rules.time_division_remainder):
        return [f"{path} gives {n} usable frame(s); frame counts must satisfy n % "
                f"{rules.time_division_factor} == {rules.time_division_remainder} (use a longer clip)"], []
    shape, problem = _trained_size(frames[0], rules)
    if problem:
        return [f"{path} {problem}"], []
    return [], [f"{shape}x{n}"]
