"""The training dataset: DiffSynth's UnifiedDataset semantics for image rows (spec §2.1, §2.4)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from .loading import absolute, load_image
from .metadata import read_metadata
from .resolution import resize_for_training


@dataclass(frozen=True)
class ImageRules:
    """How image files are sized: DiffSynth's height/width/max_pixels plus the family's size multiple."""

    max_pixels: int = 1024 * 1024
    height: int | None = None
    width: int | None = None
    height_factor: int = 16
    width_factor: int = 16

    def apply(self, image):
        return resize_for_training(image, self.max_pixels, self.height, self.width,
                                   self.height_factor, self.width_factor)


def split_keys(value: str | None) -> list[str]:
    return [k.strip() for k in (value or "").split(",") if k.strip()]


class UnifiedDataset(Dataset):
    """Rows of a metadata file; columns in ``data_file_keys`` are loaded as files, others pass through."""

    def __init__(self, base_path: str | Path, metadata_path: str | Path, data_file_keys: list[str],
                 rules: ImageRules, repeat: int = 1):
        self.base_path = str(base_path)
        self.rows = read_metadata(metadata_path)
        if not self.rows:
            raise ValueError(f"{metadata_path} holds no rows: nothing to train on")
        self.data_file_keys = list(data_file_keys)
        self.rules = rules
        self.repeat = repeat

    def __len__(self) -> int:
        return len(self.rows) * self.repeat

    def load_file(self, value):
        if isinstance(value, list):
            return [self.load_file(v) for v in value]
        if not isinstance(value, str):
            raise ValueError(f"expected a file path, got {value!r}")
        return self.rules.apply(load_image(absolute(self.base_path, value)))

    def load_row(self, row: dict) -> dict:
        item = dict(row)
        for key in self.data_file_keys:
            if key in item:
                item[key] = self.load_file(item[key])
        return item

    def __getitem__(self, index: int) -> dict:
        return self.load_row(self.rows[index % len(self.rows)])
