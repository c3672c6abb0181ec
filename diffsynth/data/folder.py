"""The ``folder`` dataset source: images or videos under a folder (recursive) with same-name caption files,
as kohya's sd-scripts and ai-toolkit lay them out (``cat/001.png`` + ``cat/001.txt``). Files named
``<name>_mask.<ext>`` are masks (masked loss), not samples.

A missing caption follows kohya (empty caption, a warning per file) unless ``missing_caption: error``.
The rows are what a metadata file would hold (file path relative to the folder, ``prompt``), so validation,
the cache and training read them like any other rows.
"""
from __future__ import annotations

import os
from pathlib import Path

from .metadata import MetadataError, MetadataRecord
from .recipe import CAPTION_MISSING_KEY
from .video import GIF_EXTENSIONS, STILL_EXTENSIONS, VIDEO_EXTENSIONS

MEDIA_EXTENSIONS = STILL_EXTENSIONS | GIF_EXTENSIONS | VIDEO_EXTENSIONS
MASK_SUFFIX = "_mask"


def is_mask_file(path: Path) -> bool:
    return path.stem.endswith(MASK_SUFFIX)


def media_files(root: Path) -> list[Path]:
    """Every image/video under ``root`` (hidden folders skipped), sorted by relative path."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = Path(folder) / name
            if path.suffix.lower().lstrip(".") in MEDIA_EXTENSIONS and not is_mask_file(path):
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def folder_records(root: str | Path, file_key: str, caption_extension: str = ".txt",
                   missing_caption: str = "empty") -> list[MetadataRecord]:
    """One record per media file: ``{file_key: relative path, "prompt": caption}``. A missing caption is a
    record error (``missing_caption: error``) or an empty prompt flagged ``_caption_missing``."""
    root = Path(root)
    if not root.is_dir():
        raise MetadataError(f"dataset source folder {root} is not a folder: set dataset_base_path to the folder "
                            "holding your images/videos and their caption files")
    records = []
    for i, path in enumerate(media_files(root)):
        rel = path.relative_to(root).as_posix()
        caption_path = path.with_suffix(caption_extension)
        row = {file_key: rel}
        if caption_path.is_file():
            try:
                row["prompt"] = caption_path.read_text(encoding="utf-8").strip()
            except UnicodeDecodeError as e:
                records.append(MetadataRecord(i, None, f"caption {caption_path} is not UTF-8 text ({e})"))
                continue
            records.append(MetadataRecord(i, row))
        elif missing_caption == "error":
            records.append(MetadataRecord(i, None, f"{rel} has no caption file {caption_path} "
                                                   "(dataset missing_caption is error): write it, or set "
                                                   "missing_caption: empty"))
        else:
            row["prompt"], row[CAPTION_MISSING_KEY] = "", True
            records.append(MetadataRecord(i, row))
    if not records:
        raise MetadataError(f"dataset source folder {root} holds no image or video files "
                            f"({', '.join(sorted(MEDIA_EXTENSIONS))}), recursively")
    return records
