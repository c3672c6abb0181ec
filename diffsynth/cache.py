"""The encoder cache: every validated row encoded once by the family's frozen encoders (DiffSynth's split
training, ``--task sft:data_process`` / ``sft:train``), stored as safetensors shards plus ``index.json``.

The cache stage writes it (``write_cache``; sample prompts separately with ``write_prompt_cache``), training reads
it (``CachedDataset``, ``read_prompt_cache``). The index records a fingerprint of everything that shapes the
encoding; training recomputes it from its own params and refuses a cache built from other data, resolution or
model entries, naming what differs. DiffSynth's own cache files (one ``torch.save`` per sample) are read with
``weights_only=True`` and nothing else.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import code_closure
from .config import Config
from .data.recipe import DATASET_KEY, DataRecipe, dataset_entries, is_multi, raw_entries
from .errors import ConfigError
from .files import staged_dir, write_json

INDEX = "index.json"
VERSION = 1
SHARD_BYTES = 1 << 30  # ~1 GB per shard: few files, and a shard's samples are read together


class CacheError(ConfigError):
    """A cache that is missing, damaged or from other inputs; the message names the file and the fix."""


# ------------------------------------------------------------------------------------------ fingerprint

def encoding_code(config: Config) -> set[Path]:
    """The source files that shape an encoding: what the encoding code imports (data loading, resize/crop, model
    loading...) and the family's own module(s); the families not in use are left out."""
    from .families import spec_for  # the family whose encode code runs

    family = getattr(spec_for(config).load_pipeline, "__module__", None)
    roots = ["diffsynth.encoding"] + ([family] if family and code_closure.module_file(family) else [])
    return code_closure.closure(roots)


def code_digest(config: Config) -> str:
    return code_closure.source_digest(encoding_code(config))


def fingerprint(config: Config, metadata_path: str | Path | None, what: str = "data") -> dict:
    """Everything that changes what the encoders produce, as plain values (compared key by key): the params, and a
    digest of the source files that encode (``code``; the same on every machine and checkout of the same code).

    ``what="prompts"`` adds the sample prompts and sizes (the prompt cache) and leaves the data out."""
    m, r = config.model, config.resolution
    out = {"version": VERSION, "code": code_digest(config), "family": config.model.family, "extra_inputs": m.extra_inputs or "",
           "torch_dtype": m.torch_dtype, "model_paths": m.model_paths or "",
           "model_id_with_origin_paths": m.model_id_with_origin_paths or "",
           "tokenizer_path": m.tokenizer_path or "", "tokenizer_1_path": m.tokenizer_1_path or "",
           "tokenizer_2_path": m.tokenizer_2_path or "", "processor_path": m.processor_path or "",
           "edit_image_area": m.edit_image_area, "max_pixels": r.max_pixels, "height": r.height, "width": r.width,
           "num_frames": r.num_frames, "data_file_keys": config.dataset.data_file_keys}
    r = config.resolution
    if r.frame_sampling != "first":  # keys only when set: caches built before them stay valid
        out.update(frame_sampling=r.frame_sampling, frame_seed=r.frame_seed)
    if what == "data" and is_multi(config):  # the prompt cache does not depend on them (nor does its stage)
        out["datasets"] = json.dumps(raw_entries(config), sort_keys=True, default=str)
    if what == "data" and any(e.caption_dropout > 0 for e in dataset_entries(config)):
        out["empty_prompt"] = True  # caption dropout: the cache holds the empty prompt's encoding
    if metadata_path is not None:
        out["metadata_sha256"] = hashlib.sha256(Path(metadata_path).read_bytes()).hexdigest()
    if what == "prompts":
        s = config.sample
        out.update(prompts=list(s.prompts), sample_height=s.height, sample_width=s.width,
                   sample_num_frames=s.num_frames)
        # keys only when set (the negative prompts encoded, the sample images' contents)
        if s.cfg_scale != 1 or any(isinstance(p, dict) for p in s.prompts):
            out.update(sample_negative_prompt=s.negative_prompt, sample_cfg_scale=s.cfg_scale)
        from .sampling import image_digests
        if image_digests(config):
            out["sample_images"] = image_digests(config)
    return out


def _check_fingerprint(folder: Path, index: dict, expected: dict) -> None:
    """Every key of ``expected`` must match (a partial ``expected`` checks only what it names)."""
    found = index.get("fingerprint", {})
    changed = sorted(k for k in expected if found.get(k) != expected.get(k))
    if changed == ["sample_images"]:  # the paths (params) are the same: DVC does not see a file replaced in place
        raise CacheError(f"The prompt cache in {folder} was built from other sample images (sample.prompts images "
                         "changed on disk since): rebuild it with `dvc repro --force --single-item cache_prompts`, "
                         "or `python stages/cache.py prompts`")
    if changed:
        details = "; ".join("code: the encoding code changed since the cache was built" if k == "code" else
                            f"{k}: cache {found.get(k)!r} vs params {expected.get(k)!r}" for k in changed[:4])
        raise CacheError(f"The encoder cache in {folder} was built from other inputs ({details}). Rebuild it with "
                         "`dvc repro` (the cache stage re-runs) or `diffsynth train --task sft:data_process ...`, or "
                         "set cache.enabled: false to encode during training.")


def read_index(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / INDEX
    if not path.exists():
        raise CacheError(f"No encoder cache in {folder} ({INDEX} is missing): run the cache stage (`dvc repro`) or "
                         "`diffsynth train --task sft:data_process ...` first, or set cache.enabled: false.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CacheError(f"{path} is damaged ({e}); delete {folder} and rebuild the cache (`dvc repro`)") from None


# ------------------------------------------------------------------------------------------ layout

def flatten(inputs: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Encoded inputs -> flat tensors and a layout: a tensor is ``name``, a list of tensors ``name.0``, ..."""
    tensors, layout = {}, {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            tensors[name], layout[name] = value.detach().to("cpu").contiguous(), "tensor"
        elif isinstance(value, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in value):
            for i, v in enumerate(value):
                tensors[f"{name}.{i}"] = v.detach().to("cpu").contiguous()
            layout[name] = len(value)
        else:
            raise CacheError(f"encoded input {name!r} is a {type(value).__name__}: only tensors and lists of "
                             "tensors can be cached")
    return tensors, layout


def shape_key(shapes: dict[str, list[int]]) -> str:
    """A bucket key from tensor shapes (sorted names), e.g. ``latents=1x16x8x8;prompt_emb=1x12x32``; prompt
    embeddings of different lengths still stack (the family pads them), so their length is left out."""
    return ";".join(f"{name}={'x'.join(map(str, shape[:1] + shape[2:] if name.startswith('prompt_emb') else shape))}"
                    for name, shape in sorted(shapes.items()))


def unflatten(tensors: dict[str, torch.Tensor], layout: dict) -> dict:
    return {name: tensors[name] if kind == "tensor" else [tensors[f"{name}.{i}"] for i in range(kind)]
            for name, kind in layout.items()}


class _ShardWriter:
    """Samples go into ``shard-NNNNN.safetensors`` files of about ``SHARD_BYTES`` each."""

    def __init__(self, folder: Path, shard_bytes: int = SHARD_BYTES):
        self.folder, self.shard_bytes = folder, shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.size, self.shards, self.entries = 0, [], []

    def add(self, key: str, inputs: dict, **extra) -> None:
        tensors, layout = flatten(inputs)
        self.pending.update({f"{key}/{name}": t for name, t in tensors.items()})
        self.size += sum(t.numel() * t.element_size() for t in tensors.values())
        self.entries.append({"key": key, "shard": len(self.shards), "layout": layout,
                             "shapes": {name: list(t.shape) for name, t in tensors.items()}, **extra})
        if self.size >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            name = f"shard-{len(self.shards):05d}.safetensors"
            save_file(self.pending, str(self.folder / name))
            self.shards.append({"file": name, "bytes": (self.folder / name).stat().st_size})
            self.pending, self.size = {}, 0


# ------------------------------------------------------------------------------------------ writing

def write_cache(out_dir: str | Path, encode: Callable[[dict], dict], items: Iterable[tuple[int, dict]],
                fp: dict, total: int | None = None, progress: Callable | None = None,
                null_prompt: dict | None = None) -> dict:
    """Encode every ``(row index, dataset item)`` once into ``out_dir`` (built beside, then swapped in: a crash
    leaves the previous cache or none, never half of one). Returns the index. ``null_prompt``: the empty
    prompt's inputs (caption dropout), stored once beside the rows. A row of a multi-dataset run records its
    dataset (``dataset``)."""
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as tmp:
        writer = _ShardWriter(tmp)
        empty = None
        if null_prompt is not None:
            writer.add("null_prompt", null_prompt)
            empty = writer.entries.pop()
        for row, item in (progress(items, total=total, desc="cache", unit="row") if progress else items):
            extra = {"dataset": item[DATASET_KEY]} if DATASET_KEY in item else {}
            with torch.no_grad():
                writer.add(f"row{row}", encode(item), row=row, **extra)
        writer.flush()
        index = {"version": VERSION, "kind": "data", "fingerprint": fp, "rows": len(writer.entries),
                 "shards": writer.shards, "samples": writer.entries}
        if empty is not None:
            index["null_prompt"] = empty
        write_json(tmp / INDEX, index)
    return index


def write_prompt_cache(out_dir: str | Path, items: Iterable[tuple[str, str, Callable[[], dict]]], fp: dict) -> dict:
    """``items``: (key, prompt, its encoding) per encoded prompt (a sample entry's prompt, and its negative
    prompt when guided); read back as ``{key: inputs}``."""
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as tmp:
        writer = _ShardWriter(tmp)
        for key, prompt, encode in items:
            with torch.no_grad():
                writer.add(key, encode(), prompt=prompt)
        writer.flush()
        index = {"version": VERSION, "kind": "prompts", "fingerprint": fp, "shards": writer.shards,
                 "samples": writer.entries}
        write_json(tmp / INDEX, index)
    return index


def write_disabled(out_dir: str | Path, kind: str) -> None:
    """``cache.enabled: false``: the stage output says so (DVC needs the folder), and holds nothing."""
    with staged_dir(Path(out_dir)) as tmp:
        write_json(tmp / INDEX, {"version": VERSION, "kind": kind, "enabled": False})


# ------------------------------------------------------------------------------------------ reading

def _open(folder: str | Path, kind: str, expected: dict | None) -> tuple[Path, dict]:
    folder = Path(folder)
    index = read_index(folder)
    if index.get("enabled") is False:
        raise CacheError(f"{folder} was written with cache.enabled: false; set cache.enabled: true and run "
                         "`dvc repro` to build the cache")
    if index.get("kind") != kind or index.get("version") != VERSION:
        raise CacheError(f"{folder / INDEX} is not a version-{VERSION} {kind} cache; rebuild it (`dvc repro`)")
    for shard in index["shards"]:
        path = folder / shard["file"]
        if path.exists() and path.stat().st_size != shard["bytes"]:
            raise CacheError(f"Encoder cache file {path} has {path.stat().st_size} bytes, the index says "
                             f"{shard['bytes']}: it is truncated or was replaced. Rebuild the cache (`dvc repro`).")
    if expected is not None:
        _check_fingerprint(folder, index, expected)
    return folder, index


def _open_shard(path: Path):
    """A lazy handle on one shard: tensors are read one by one, only when asked for."""
    if not path.exists():
        raise CacheError(f"Encoder cache file {path} is missing: rebuild the cache (`dvc repro` re-runs the cache "
                         "stage; or delete the folder and run it)")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as e:
        raise CacheError(f"Encoder cache file {path} is damaged or truncated ({e}): delete {path.parent} and "
                         "rebuild the cache (`dvc repro`)") from None


def _tensor_names(layout: dict) -> list[str]:
    return [n if kind == "tensor" else f"{n}.{i}" for n, kind in layout.items()
            for i in range(1 if kind == "tensor" else kind)]


class CachedDataset(torch.utils.data.Dataset):
    """The cached rows, ``repeat`` times per epoch (``dataset_repeat`` repeats reads, never the encoding).

    Items are ``{"cached_inputs": {...}}``: what the family's ``encode`` returned for that row. A row reads only
    its own tensors from its shard (training visits rows in shuffled order, across shards).

    ``recipe`` (``data/recipe.py``): per-dataset repeats (``rows`` lists each repeat), loss weights, and caption
    dropout, which swaps in the empty prompt's inputs the cache holds, for the epoch set with ``set_epoch``."""

    def __init__(self, folder: str | Path, repeat: int = 1, expected: dict | None = None,
                 recipe: DataRecipe | None = None):
        self.folder, self.index = _open(folder, "data", expected)
        self.samples = self.index["samples"]
        if not self.samples:
            raise CacheError(f"The encoder cache in {self.folder} holds no rows: nothing to train on")
        self.repeat = repeat
        self.recipe, self.epoch = recipe, None
        self.order = recipe.order([self._row(s) for s in self.samples]) if recipe else list(range(len(self.samples)))
        if recipe and recipe.uses_dropout and "null_prompt" not in self.index:
            raise CacheError(f"The encoder cache in {self.folder} has no empty-prompt encoding for caption dropout: "
                             "rebuild it (`dvc repro` re-runs the cache stage)")
        self._handles: dict[int, tuple] = {}  # shard -> (open handle, its keys); per process: workers open their own

    @staticmethod
    def _row(sample: dict) -> dict:
        return {DATASET_KEY: sample["dataset"]} if "dataset" in sample else {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def rows(self) -> list[dict]:
        return [{"cached_row": self.samples[i]["row"]} for i in self.order]

    def bucket_keys(self) -> list[str]:
        """Each cached row's shape bucket: the shapes of its cached tensors (batches must stack)."""
        return [shape_key(self.samples[i]["shapes"]) for i in self.order]

    def __len__(self) -> int:
        return len(self.order) * self.repeat

    def __getstate__(self) -> dict:  # open handles do not pickle into DataLoader workers
        return {**self.__dict__, "_handles": {}}

    def _tensors(self, entry: dict) -> dict:
        shard = entry["shard"]
        if shard not in self._handles:
            handle = _open_shard(self.folder / self.index["shards"][shard]["file"])
            self._handles[shard] = (handle, set(handle.keys()))
        (handle, keys), wanted = self._handles[shard], _tensor_names(entry["layout"])
        missing = [n for n in wanted if f"{entry['key']}/{n}" not in keys]
        if missing:
            raise CacheError(f"Encoder cache {self.folder}: {entry['key']} lacks {missing}; rebuild the cache")
        return unflatten({n: handle.get_tensor(f"{entry['key']}/{n}") for n in wanted}, entry["layout"])

    def load(self, i: int) -> dict:
        return {"cached_inputs": self._tensors(self.samples[i])}

    def __getitem__(self, index: int) -> dict:
        i = self.order[index % len(self.order)]
        item = self.load(i)
        if self.recipe is None:
            return item
        row = self._row(self.samples[i])
        if self.recipe.dropped(row, self.epoch, index):
            item["cached_inputs"].update(self._tensors(self.index["null_prompt"]))
        if self.recipe.uses_weights:
            item["cached_inputs"]["loss_weight"] = torch.tensor([self.recipe.weight(row)])
        return item


def read_prompt_cache(folder: str | Path, expected: dict | None = None) -> dict[str, dict]:
    """``{key: sample inputs}`` from the prompt cache (``SampleEntry.key`` / ``negative_key``)."""
    folder, index = _open(folder, "prompts", expected)
    shards = [_open_shard(folder / s["file"]) for s in index["shards"]]
    return {entry["key"]: unflatten({n: shards[entry["shard"]].get_tensor(f"{entry['key']}/{n}")
                                        for n in _tensor_names(entry["layout"])}, entry["layout"])
            for entry in index["samples"]}


# ------------------------------------------------------------------------------------------ DiffSynth's files

def load_diffsynth_sample(path: str | Path, rename: dict[str, str]) -> dict:
    """One DiffSynth cache file (``torch.save`` of a dict per sample, ``<output_path>/<rank>/<id>.pth``), read
    with ``weights_only=True``: tensors, numbers, strings and containers only; anything needing full unpickling
    (arbitrary objects, code) is refused. Keys are renamed to our input names with the family's ``rename``."""
    import pickle
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        raise CacheError(f"{path}: refused, it needs full unpickling to load ({str(e).splitlines()[0][:160]}). Only "
                         "files of tensors, numbers and strings are read (torch.load weights_only=True); re-create "
                         "the cache with `--task sft:data_process`.") from None
    except (EOFError, OSError) as e:
        raise CacheError(f"{path} is truncated or unreadable ({e}); re-create the cache") from None
    if not isinstance(data, dict):
        raise CacheError(f"{path} holds a {type(data).__name__}, not a dict of model inputs")
    inputs = {rename.get(k, k): v for k, v in data.items() if isinstance(v, torch.Tensor) or
              (isinstance(v, (list, tuple)) and v and all(isinstance(x, torch.Tensor) for x in v))}
    if "latents" not in inputs:
        raise CacheError(f"{path} has no target latents (keys: {sorted(data)}); is it a DiffSynth "
                         "sft:data_process cache of this model family?")
    return inputs


class DiffSynthCacheDataset(torch.utils.data.Dataset):
    """DiffSynth's ``sft:train`` data: every ``.pth`` file under ``folder`` (its ``<rank>/`` subfolders), sorted."""

    def __init__(self, folder: str | Path, rename: dict[str, str], repeat: int = 1):
        self.folder = Path(folder)
        self.files = sorted(self.folder.rglob("*.pth"))
        if not self.files:
            raise CacheError(f"No cache in {self.folder}: neither {INDEX} nor DiffSynth .pth files. Run "
                             "`--task sft:data_process` with --output_path there first.")
        self.rename, self.repeat = rename, repeat

    @property
    def rows(self) -> list[dict]:
        return [{"cached_file": str(f.relative_to(self.folder))} for f in self.files]

    def __len__(self) -> int:
        return len(self.files) * self.repeat

    def load(self, i: int) -> dict:
        return {"cached_inputs": load_diffsynth_sample(self.files[i], self.rename)}

    def bucket_keys(self) -> list[str]:
        keys = []
        for i in range(len(self.files)):
            tensors, _ = flatten(self.load(i)["cached_inputs"])
            keys.append(shape_key({name: list(t.shape) for name, t in tensors.items()}))
        return keys

    def __getitem__(self, index: int) -> dict:
        return self.load(index % len(self.files))


def open_cached_dataset(folder: str | Path, repeat: int, expected: dict | None, rename: dict[str, str],
                        recipe: DataRecipe | None = None):
    """Our cache (``index.json``) if there is one, else DiffSynth's ``.pth`` files (which know no recipe: a
    recipe with per-sample choices is refused)."""
    if (Path(folder) / INDEX).exists():
        return CachedDataset(folder, repeat, expected, recipe)
    if recipe is not None and (recipe.multi or recipe.uses_dropout or recipe.uses_weights or recipe.uses_masks):
        raise CacheError(f"{folder} is a DiffSynth cache (.pth files): dataset.datasets, caption_dropout and "
                         "masked_loss need the pipeline's encoder cache (cache stage); unset them for sft:train")
    return DiffSynthCacheDataset(folder, rename, repeat)
