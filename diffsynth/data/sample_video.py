"""The built-in video sample: short mp4 clips of a coloured shape moving across a plain background.

Clip lengths differ on purpose (9, 12, 13, 17 frames) so the 4k+1 frame rule is visible in the data
report (12 frames train as 9). Written with PyAV (``av``, bundled ffmpeg), which is needed only here.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import staged_dir
from .shapes import BACKGROUNDS, COLOURS, draw_shape

MOTIONS = {"left to right": (1, 0), "top to bottom": (0, 1)}
CLIP_FRAMES = (9, 12, 13, 17)


def write_mp4(path: str | Path, frames: list[Image.Image], fps: int = 8) -> None:
    """Encode RGB frames as H.264 (yuv420p, so sides must be even)."""
    try:
        import av
    except ImportError:
        raise RuntimeError("Writing the built-in video dataset needs PyAV: pip install av") from None
    width, height = frames[0].size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.asarray(frame.convert("RGB")), format="rgb24")))
        container.mux(stream.encode())  # flush the encoder


def moving_shape_frames(shape: str, colour: tuple, background: tuple, motion: tuple, n: int,
                        size: int = 64) -> list[Image.Image]:
    tile = size // 2
    tile_image = draw_shape(shape, colour, background, tile)
    frames = []
    for i in range(n):
        offset = round(i * (size - tile) / max(n - 1, 1))
        x, y = (offset, (size - tile) // 2) if motion[0] else ((size - tile) // 2, offset)
        frame = Image.new("RGB", (size, size), background)
        frame.paste(tile_image, (x, y))
        frames.append(frame)
    return frames


@dataclass(frozen=True)
class _Clip:
    index: int
    stem: str          # colour_shape_motion: the clip's file stem
    shape: str
    colour: tuple
    background: tuple
    motion: tuple
    frames: int
    prompt: str

    def target(self, size: int) -> list[Image.Image]:
        return moving_shape_frames(self.shape, self.colour, self.background, self.motion, self.frames, size)

    def silhouette(self, size: int) -> list[Image.Image]:
        """The shape white on black in the same frames: a control clip."""
        return moving_shape_frames(self.shape, (255, 255, 255), (0, 0, 0), self.motion, self.frames, size)


def _clips() -> list[_Clip]:
    """The 8 moving-shapes clips: 4 colours x 2 motions, shapes, lengths and backgrounds cycling."""
    shapes = ("circle", "square", "triangle", "cross")
    clips = []
    for motion_name, motion in MOTIONS.items():
        for colour_name, colour in COLOURS.items():
            k = len(clips)
            shape, bg_name = shapes[k % len(shapes)], "white" if k % 2 == 0 else "black"
            clips.append(_Clip(k, f"{colour_name}_{shape}_{motion_name.replace(' ', '_')}", shape, colour,
                               BACKGROUNDS[bg_name], motion, CLIP_FRAMES[k % len(CLIP_FRAMES)],
                               f"a {colour_name} {shape} moving {motion_name} on a {bg_name} background"))
    return clips


def _write_metadata(folder: Path, header: list[str], rows: list) -> None:
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def build_moving_shapes_dataset(out_dir: str | Path, size: int = 64) -> Path:
    """Write 8 clips (4 colours, 2 motions, shapes and lengths cycling) and ``metadata.csv`` (video,prompt)."""
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as tmp:
        rows = []
        for clip in _clips():
            write_mp4(tmp / f"{clip.stem}.mp4", clip.target(size))
            rows.append((f"{clip.stem}.mp4", clip.prompt))
        _write_metadata(tmp, ["video", "prompt"], rows)
    return out_dir / "metadata.csv"


CAMERA_MOVES = ("Left", "Right", "Up", "Down")


def build_moving_shapes_conditioned_dataset(out_dir: str | Path, size: int = 64) -> Path:
    """The moving_shapes clips with the conditioning columns of video-conditioning recipes beside them:
    ``control_video`` (the clip's silhouette: the shape white on black, same frames), ``reference_image`` (the
    shape alone on its background, a png), ``camera_control_direction`` / ``camera_control_speed`` (a camera move
    per row) and ``motion_bucket_id`` (the shape's speed: frames per crossing). The moving_shapes rows are unchanged."""
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as tmp:
        rows = []
        for clip in _clips():
            write_mp4(tmp / f"{clip.stem}.mp4", clip.target(size))
            write_mp4(tmp / f"{clip.stem}_control.mp4", clip.silhouette(size))
            draw_shape(clip.shape, clip.colour, clip.background, size).save(tmp / f"{clip.stem}_reference.png")
            k = clip.index
            rows.append((f"{clip.stem}.mp4", clip.prompt, f"{clip.stem}_control.mp4", f"{clip.stem}_reference.png",
                         CAMERA_MOVES[k % len(CAMERA_MOVES)], round(1 / 54 * (1 + k % 2), 6), clip.frames))
        _write_metadata(tmp, ["video", "prompt", "control_video", "reference_image", "camera_control_direction",
                              "camera_control_speed", "motion_bucket_id"], rows)
    return out_dir / "metadata.csv"


# text columns a conditioning column brings along (Wan2.2-Animate-2's reference prompt, beside its reference video)
TEXT_COLUMNS = {"animate2_reference_video": ("animate2_prompt_ref", "the shape in the video moves, the background "
                                                                    "stays still")}


def build_moving_shapes_control_dataset(out_dir: str | Path, keys: tuple[str, ...] = ("control_video",),
                                        size: int = 64) -> Path:
    """The moving-shapes clips with conditioning columns beside ``video`` (Wan's control/reference variants): a
    column named ``*video`` gets the clip's silhouette (white shape on black, same frames: a control or reference
    video), any other column a still of the shape on the clip's background (a reference image), and a key of
    ``TEXT_COLUMNS`` its text column too. ``metadata.csv``: video,<keys...>,prompt[,<text columns>]; the target
    clips and prompts are those of :func:`build_moving_shapes_dataset`."""
    out_dir = Path(out_dir)
    texts = dict(TEXT_COLUMNS[k] for k in keys if k in TEXT_COLUMNS)
    with staged_dir(out_dir) as tmp:
        rows = []
        for clip in _clips():
            write_mp4(tmp / f"{clip.stem}.mp4", clip.target(size))
            row = [f"{clip.stem}.mp4"]
            for key in keys:
                if key.endswith("video"):
                    write_mp4(tmp / f"{clip.stem}_{key}.mp4", clip.silhouette(size))
                    row.append(f"{clip.stem}_{key}.mp4")
                else:
                    still = Image.new("RGB", (size, size), clip.background)
                    still.paste(draw_shape(clip.shape, clip.colour, clip.background, size // 2), (size // 4, size // 4))
                    still.save(tmp / f"{clip.stem}_{key}.png")
                    row.append(f"{clip.stem}_{key}.png")
            rows.append((*row, clip.prompt, *texts.values()))
        _write_metadata(tmp, ["video", *keys, "prompt", *texts], rows)
    return out_dir / "metadata.csv"
