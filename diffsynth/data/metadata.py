"""Reading DiffSynth metadata files: .json (list of rows), .jsonl (one row per line), anything else as CSV.

Two readers over one parser: ``read_metadata`` (training) stops at the first bad row; ``read_metadata_records``
(validation) keeps going and returns a bad JSONL line as a record carrying its error, so one broken line can be
reported and skipped instead of hiding the state of every other row.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import DiffSynthError


class MetadataError(DiffSynthError, ValueError):
    """The metadata file itself cannot be read; the message names the file (and line) and the fix."""


@dataclass
class MetadataRecord:
    index: int                  # the row's position in the dataset (0-based)
    row: dict | None            # None when the row could not be parsed
    error: str | None = None
    line: int | None = None     # 1-based line in a .jsonl file

    def where(self, path) -> str:
        return f"{path}:{self.line}" if self.line else f"{path} row {self.index}"


def read_metadata_records(path: str | Path) -> list[MetadataRecord]:
    path = Path(path)
    if not path.exists():
        raise MetadataError(f"Metadata file {path} does not exist: check dataset.dataset_metadata_path")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise MetadataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}; "
                                "fix the file (a list of objects) or use .jsonl, one object per line") from None
        except UnicodeDecodeError as e:
            raise MetadataError(f"{path}: not UTF-8 text ({e})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise MetadataError(f"{path}: a .json metadata file must hold a list of objects (one per sample)")
        return [MetadataRecord(i, r) for i, r in enumerate(rows)]
    if suffix == ".jsonl":
        return _jsonl_records(path)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise MetadataError(f"{path}: not a readable CSV file ({e}); files not ending in .json/.jsonl are "
                            "read as CSV (DiffSynth's rule): rename JSON files accordingly") from None
    return [MetadataRecord(i, {k: _plain(v) for k, v in frame.iloc[i].to_dict().items()})
            for i in range(len(frame))]


def _jsonl_records(path: Path) -> list[MetadataRecord]:
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as e:
        raise MetadataError(f"{path}: not UTF-8 text ({e})") from None
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # DiffSynth crashes on blank lines; skipping them is harmless
        index = len(records)
        try:
            row = json.loads(line.strip())
        except json.JSONDecodeError as e:
            records.append(MetadataRecord(index, None, f"invalid JSON ({e.msg} at column {e.colno})", lineno))
            continue
        if not isinstance(row, dict):
            records.append(MetadataRecord(index, None, "the line is not a JSON object", lineno))
            continue
        records.append(MetadataRecord(index, row, None, lineno))
    return records


def read_metadata(path: str | Path) -> list[dict]:
    """All rows; a MetadataError naming the first unreadable one (run `diffsynth data validate` for all)."""
    rows = []
    for record in read_metadata_records(path):
        if record.error:
            raise MetadataError(f"{record.where(path)}: {record.error}; fix or delete the line")
        rows.append(record.row)
    return rows


def _plain(value):
    """pandas gives numpy scalars; rows should hold plain Python values (NaN kept: it means an empty cell)."""
    if hasattr(value, "item"):
        value = value.item()
    return value


def is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
