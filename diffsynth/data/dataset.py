"""The training dataset: DiffSynth's ``UnifiedDataset`` semantics (DiffSynth-Studio's
``diffsynth/core/data/unified_dataset.py``) for image and video rows."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

from torch.utils.data import Dataset

from ..errors import DiffSynthError
from .buckets import row_key
from .masks import load_mask
from .metadata import MetadataError, read_metadata
from .operators import load_image_cell, load_video_cell
from .recipe import MASK_KEY, DataRecipe, DatasetEntry, data_recipe
from .resolution import resize_for_training

DEFAULT_VIDEO_KEYS = ("video",)


@dataclass(frozen=True)
class ImageRules:
    """How files are sized: DiffSynth's height/width/max_pixels plus the family's size multiple, and for
    video columns how many leading frames are kept (``n % time_division_factor == time_division_remainder``)."""

    max_pixels: int = 1024 * 1024
    height: int | None = None
    width: int | None = None
    height_factor: int = 16
    width_factor: int = 16
    num_frames: int = 81
    time_division_factor: int = 4
    time_division_remainder: int = 1
    frame_sampling: str = "first"   # which frames of a clip (video.frame_indices)
    frame_seed: int = 0
    # ((column, width, height), ...): columns loaded at a fixed size whatever the sizes above say (DataRules)
    fixed_sizes: tuple = ()

    def for_key(self, key: str) -> "ImageRules":
        """The rules of one column: a fixed-size column (Wan2.2-Animate's face clip) at its own size."""
        for column, width, height in self.fixed_sizes:
            if column == key:
                return replace(self, width=width, height=height)
        return self

    def apply(self, image):
        return resize_for_training(image, self.max_pixels, self.height, self.width,
                                   self.height_factor, self.width_factor)


VideoRules = ImageRules  # one set of rules covers both; the alias reads better at video call sites


class DataLoadError(DiffSynthError, RuntimeError):
    """A row's file could not be loaded; names the row, the column and the cause."""


def split_keys(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, str):
        return [k.strip() for k in value if k.strip()]
    return [k.strip() for k in value.split(",") if k.strip()]


class UnifiedDataset(Dataset):
    """Rows of a metadata file; columns in ``data_file_keys`` are loaded as files, others pass through raw.

    A file column listed in ``video_keys`` is loaded as a video (list of frames), any other as an image
    (or a list of images when the cell is a list). Keys missing from a row are skipped, as in DiffSynth.

    ``recipe`` (``data/recipe.py``): several datasets, each row read from its own folder at its own size and
    repeated its own number of times (``rows`` lists each repeat), plus the per-sample loss extras (mask,
    weight) and caption dropout for the epoch set with ``set_epoch``. The default recipe changes nothing.
    """

    def __init__(self, base_path: str | Path, metadata_path: str | Path, data_file_keys,
                 rules: ImageRules, repeat: int = 1, *, video_keys: Iterable[str] = DEFAULT_VIDEO_KEYS,
                 max_data_items: int | None = None, recipe: DataRecipe | None = None, each_row_once: bool = False):
        self.base_path = str(base_path)
        self.metadata_path = str(metadata_path)
        rows = read_metadata(metadata_path)
        if not rows:
            raise MetadataError(f"{metadata_path} holds no rows: nothing to train on; add rows or point "
                                "dataset.dataset_metadata_path at the right file")
        self.recipe = recipe or DataRecipe([DatasetEntry(dataset_base_path=self.base_path)])
        # per-dataset repeats (one pass); the encoder cache reads each row once
        self.rows = rows if each_row_once else [rows[i] for i in self.recipe.order(rows)]
        self.data_file_keys = split_keys(data_file_keys)  # a str would iterate characters (a DiffSynth bug)
        self.video_keys = set(video_keys)
        self.rules = rules
        self.repeat = repeat
        self.max_data_items = max_data_items
        self.epoch = None  # caption dropout draws only once an epoch is set (never for validation rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.max_data_items or len(self.rows) * self.repeat

    def _where(self, row: dict) -> tuple[str, ImageRules]:
        """The folder and size rules of the row's dataset."""
        if not self.recipe.multi:
            return self.base_path, self.rules
        e = self.recipe.entry(row)
        return e.dataset_base_path, replace(self.rules, max_pixels=e.max_pixels, height=e.height, width=e.width)

    def bucket_keys(self) -> list[str]:
        """Each row's shape bucket, each read from its own dataset's folder at its size."""
        keys = []
        for row in self.rows:
            base_path, rules = self._where(row)
            keys.append(row_key(row, base_path, self.data_file_keys, self.video_keys, rules))
        return keys

    def load_file(self, value, key: str = "image", base_path: str | None = None, rules: ImageRules | None = None):
        loader = load_video_cell if key in self.video_keys else load_image_cell
        return loader(self.base_path if base_path is None else base_path, value, (rules or self.rules).for_key(key))

    def load_row(self, row: dict, index: int | None = None) -> dict:
        item = dict(row)
        base_path, rules = self._where(row)
        if self.recipe.uses_masks:
            item["loss_mask_image"] = load_mask(base_path, row.get(MASK_KEY), rules)
        if self.recipe.uses_weights:
            item["loss_weight"] = self.recipe.weight(row)
        for key in self.data_file_keys:
            if key in item:
                try:
                    item[key] = self.load_file(item[key], key, base_path, rules)
                except Exception as e:
                    where = f"row {index}" if index is not None else "a row"
                    raise DataLoadError(f"{self.metadata_path} {where}, column {key!r}: {type(e).__name__}: {e}. "
                                        "Run `diffsynth data validate` (or set dataset.on_invalid: skip) to find "
                                        "and drop bad rows before training.") from e
        return item

    def __getitem__(self, index: int) -> dict:
        i = index % len(self.rows)
        item = self.load_row(self.rows[i], i)
        if self.recipe.dropped(self.rows[i], self.epoch, index):
            item["prompt"] = ""
        return item


def metadata_dataset(config, metadata_path, rules, repeat: int | None = None,
                     each_row_once: bool = False) -> UnifiedDataset:
    """The dataset a config trains on: its metadata rows sized by ``resolution.*`` and the family's data ``rules``
    (a ``DataRules``: size multiples, frame rule, video columns); ``repeat`` defaults to ``dataset_repeat``.
    ``each_row_once``: no per-dataset repeats either (the encoder cache)."""
    r = config.resolution
    image_rules = ImageRules(r.max_pixels, r.height, r.width, rules.size_factor, rules.width_factor,
                             num_frames=r.num_frames, time_division_factor=rules.time_division_factor,
                             time_division_remainder=rules.time_division_remainder,
                             frame_sampling=r.frame_sampling, frame_seed=r.frame_seed,
                             fixed_sizes=tuple(getattr(rules, "fixed_size_keys", ())))
    recipe = data_recipe(config)
    if (recipe.multi or config.dataset.source == "folder") and \
            str(metadata_path) == str(config.dataset.dataset_metadata_path):
        raise MetadataError("dataset.source folder / dataset.datasets are read through the data stage: run "
                            "`dvc repro` (or `diffsynth data validate`) and train on its validated metadata")
    return UnifiedDataset(config.dataset.dataset_base_path, metadata_path, split_keys(config.dataset.data_file_keys),
                          image_rules, repeat=config.dataset.dataset_repeat if repeat is None else repeat,
                          video_keys=rules.video_keys, recipe=recipe, each_row_once=each_row_once)
