"""The data recipe: which datasets a run trains on and, per dataset, its repeats, size, caption options,
masks and loss weight (issue 21). ``dataset.datasets: []`` (the default) is today's single dataset, whose
options are the ``dataset.*`` / ``resolution.*`` keys themselves.

Per-sample choices made at training time (caption dropout) are drawn from ``(train.seed, epoch, index)``
alone: the same sample of the same epoch makes the same choice in any run, so a resumed run repeats them.
Takes the config duck-typed (no import of ``config.py``: data code sits below it).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, fields, replace

from ..errors import ConfigError

# keys a ``dataset.datasets`` entry may set: each inherits dataset.<key> / resolution.<key> when unset
ENTRY_FROM_DATASET = ("source", "dataset_base_path", "dataset_metadata_path", "caption_extension",
                      "missing_caption", "trigger_word", "caption_dropout", "masked_loss", "mask_column")
ENTRY_FROM_RESOLUTION = ("max_pixels", "height", "width")
ENTRY_SOURCES = ("local", "folder")
MASK_KEY = "_mask"        # validated rows: the mask file (relative to the dataset's base), None = all ones
DATASET_KEY = "_dataset"  # validated rows of a multi-dataset run: the entry's position in dataset.datasets
CAPTION_MISSING_KEY = "_caption_missing"
_INTS = ("dataset_repeat", "max_pixels", "height", "width")
_FLOATS = ("caption_dropout", "weight")


@dataclass(frozen=True)
class DatasetEntry:
    source: str = "local"
    dataset_base_path: str = ""
    dataset_metadata_path: str | None = None
    dataset_repeat: int = 1
    max_pixels: int = 1024 * 1024
    height: int | None = None
    width: int | None = None
    caption_extension: str = ".txt"
    missing_caption: str = "empty"
    trigger_word: str = ""
    caption_dropout: float = 0.0
    masked_loss: bool = False
    mask_column: str = "mask"
    weight: float = 1.0

    def label(self, k: int | None) -> str:
        return "dataset" if k is None else f"dataset.datasets[{k}]"


def _entry(config, raw: dict | None, k: int | None) -> DatasetEntry:
    d, r = config.dataset, config.resolution
    base = DatasetEntry(**{key: getattr(d, key) for key in ENTRY_FROM_DATASET},
                        **{key: getattr(r, key) for key in ENTRY_FROM_RESOLUTION},
                        dataset_repeat=1 if raw is not None else d.dataset_repeat)
    if raw is None:
        # the single dataset: dataset_repeat stays the global multiplier (the datasets read it there)
        return replace(base, dataset_repeat=1)
    if not isinstance(raw, dict):
        raise ConfigError(f"dataset.datasets[{k}] must be a mapping of dataset keys, got {type(raw).__name__}")
    known = {f.name for f in fields(DatasetEntry)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"dataset.datasets[{k}]: unknown key(s) {unknown}; known: {sorted(known)}")
    values = {}
    for key, value in raw.items():
        try:
            if value is None:
                if key not in ("dataset_metadata_path", "height", "width"):
                    raise ValueError(value)
                values[key] = None
            elif key in _INTS:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError(value)
                values[key] = int(value)
            elif key in _FLOATS:
                values[key] = float(value)
            elif key == "masked_loss":
                if not isinstance(value, bool) and str(value).lower() not in ("true", "false"):
                    raise ValueError(value)
                values[key] = value if isinstance(value, bool) else str(value).lower() == "true"
            else:
                values[key] = str(value)
        except (TypeError, ValueError):
            raise ConfigError(f"dataset.datasets[{k}].{key} = {value!r} is not a valid value") from None
    return replace(base, **values)


def raw_entries(config) -> list:
    """``dataset.datasets`` as a list (the command line's ``--datasets`` is one JSON string)."""
    raw = list(config.dataset.datasets or [])
    if len(raw) == 1 and isinstance(raw[0], str):  # the command line's --datasets '[{...}, ...]' (JSON)
        try:
            raw = json.loads(raw[0])
        except json.JSONDecodeError as e:
            raise ConfigError(f"dataset.datasets: {raw[0]!r} is not a JSON list of mappings ({e})") from None
        raw = raw if isinstance(raw, list) else [raw]
    return raw


def is_multi(config) -> bool:
    return bool(raw_entries(config))


def dataset_entries(config) -> list[DatasetEntry]:
    raw = raw_entries(config)
    return [_entry(config, None, None)] if not raw else [_entry(config, e, k) for k, e in enumerate(raw)]


def check_recipe(config) -> None:
    """The whole-run checks of the data recipe (called by ``Config.validate``)."""
    multi = is_multi(config)
    for k, e in enumerate(dataset_entries(config)):
        where = e.label(k if multi else None)
        if multi and e.source not in ENTRY_SOURCES:
            raise ConfigError(f"{where}.source = {e.source!r}: a dataset of a list is one of {list(ENTRY_SOURCES)} "
                              "(fetch builtin/modelscope data first and list its folder)")
        if multi and not e.dataset_base_path:
            raise ConfigError(f"{where}.dataset_base_path is empty: set the folder of this dataset")
        if not 0.0 <= e.caption_dropout <= 1.0:
            raise ConfigError(f"{where}.caption_dropout = {e.caption_dropout}: a probability between 0 and 1")
        if e.weight <= 0:
            raise ConfigError(f"{where}.weight = {e.weight}: must be > 0 (drop the dataset instead)")
        if e.dataset_repeat < 1:
            raise ConfigError(f"{where}.dataset_repeat = {e.dataset_repeat}: must be >= 1")
        if e.missing_caption not in ("empty", "error"):
            raise ConfigError(f"{where}.missing_caption = {e.missing_caption!r} is not one of ['empty', 'error']")
        if e.caption_dropout > 0 and config.cache.enabled and config.model.extra_inputs:
            raise ConfigError(f"{where}.caption_dropout with model.extra_inputs ({config.model.extra_inputs}) and "
                              "cache.enabled: the empty prompt is encoded once, but with extra inputs the prompt "
                              "encoding may depend on each row's images; set cache.enabled: false (encodes the empty "
                              "prompt per sample) or caption_dropout: 0")


def apply_trigger(caption: str, trigger: str) -> str:
    """ai-toolkit's rule: ``[trigger]`` is replaced by the trigger word; a caption without the placeholder gets
    it prepended (``"<trigger> <caption>"``; the trigger alone for an empty caption)."""
    if not trigger:
        return caption
    if "[trigger]" in caption:
        return caption.replace("[trigger]", trigger)
    return f"{trigger} {caption}" if caption else trigger


def caption_dropped(p: float, seed: int, epoch: int | None, index: int) -> bool:
    """Whether sample ``index`` of ``epoch`` trains on the empty prompt. ``epoch`` None (validation rows, the
    cache stage) never drops. A string seed makes ``random.Random`` hash it (stable across runs and machines)."""
    if p <= 0 or epoch is None:
        return False
    return random.Random(f"caption_dropout:{seed}:{epoch}:{index}").random() < p


@dataclass
class DataRecipe:
    entries: list[DatasetEntry]
    seed: int = 0
    multi: bool = False  # a dataset.datasets list: rows carry DATASET_KEY

    @property
    def uses_masks(self) -> bool:
        return any(e.masked_loss for e in self.entries)

    @property
    def uses_weights(self) -> bool:
        return any(e.weight != 1.0 for e in self.entries)

    @property
    def uses_dropout(self) -> bool:
        return any(e.caption_dropout > 0 for e in self.entries)

    def entry_index(self, row: dict) -> int:
        k = row.get(DATASET_KEY, 0) if self.multi else 0
        return int(k) if k is not None else 0

    def entry(self, row: dict) -> DatasetEntry:
        return self.entries[self.entry_index(row)]

    def order(self, rows: list[dict]) -> list[int]:
        """Row positions of one pass: each row as many times as its dataset's ``dataset_repeat`` (all
        repeats of a dataset in a row: the epoch's shuffle mixes them). Single dataset: ``range(len(rows))``."""
        if not self.multi:
            return list(range(len(rows)))
        return [i for i, row in enumerate(rows) for _ in range(self.entry(row).dataset_repeat)]

    def dropped(self, row: dict, epoch: int | None, index: int) -> bool:
        return caption_dropped(self.entry(row).caption_dropout, self.seed, epoch, index)

    def weight(self, row: dict) -> float:
        return self.entry(row).weight


def data_recipe(config) -> DataRecipe:
    return DataRecipe(dataset_entries(config), seed=config.train.seed, multi=is_multi(config))


def set_epoch(dataset, epoch: int) -> None:
    """Tell a dataset which epoch its items are drawn for (caption dropout); datasets without choices ignore it."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
