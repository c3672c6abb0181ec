"""Reading DiffSynth metadata files: .json (list of rows), .jsonl (one row per line), anything else as CSV."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd


class MetadataError(ValueError):
    """The metadata file itself cannot be read; the message names the file (and line) and the fix."""


def read_metadata(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise MetadataError(f"Metadata file {path} does not exist: check dataset.dataset_metadata_path")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise MetadataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise MetadataError(f"{path}: a .json metadata file must hold a list of objects (one per sample)")
        return rows
    if suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue  # DiffSynth crashes on blank lines; skipping them is harmless
            try:
                row = json.loads(line.strip())
            except json.JSONDecodeError as e:
                raise MetadataError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise MetadataError(f"{path}:{lineno}: each line must be a JSON object")
            rows.append(row)
        return rows
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise MetadataError(f"{path}: not a readable CSV file ({e}); use .json/.jsonl for other formats") from None
    return [{k: _clean(v) for k, v in frame.iloc[i].to_dict().items()} for i in range(len(frame))]


def _clean(value):
    """pandas gives numpy scalars; rows should hold plain Python values (NaN kept: it means an empty cell)."""
    if hasattr(value, "item"):
        value = value.item()
    return value


def is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
