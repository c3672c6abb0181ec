"""Reading model files (one file or a shard list) and writing sharded safetensors with an index."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import DiffSynthError
from ..files import atomic_path, write_json


class ModelFileError(DiffSynthError, ValueError):
    pass


def unreadable(path, error: Exception) -> ModelFileError:
    return ModelFileError(f"{path} is not a readable safetensors file ({error}); it is probably truncated by an "
                          "interrupted download or copy: delete it and run `dvc repro -f -s models` (the models "
                          "stage fetches it again; outside DVC, download it again)")


def read_tensors(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A file the user named (``what``: its flag, e.g. lora.lora_checkpoint) as a state dict."""
    if not os.path.isfile(path):
        raise ModelFileError(f"{what} {path} does not exist; check the path")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ModelFileError(f"{what} {path} is not a readable safetensors file ({e}); check that it is "
                             "the .safetensors file meant, or copy it again if it was cut short") from None


def read_keys_and_shapes(files: list[str]) -> dict[str, tuple[int, ...]]:
    """Key -> shape for all tensors of a file set, without reading tensor data."""
    shapes = {}
    for path in files:
        if not str(path).endswith(".safetensors"):
            raise ModelFileError(f"{path}: only .safetensors files are loaded (pickled .bin/.pth are refused for "
                                 "safety); convert it or use DiffSynth-Studio/Wan-Series-Converted-Safetensors")
        try:
            with safe_open(path, "pt") as f:
                for key in f.keys():
                    shapes[key] = tuple(f.get_slice(key).get_shape())
        except (SafetensorError, OSError) as e:
            raise unreadable(path, e) from None
    return shapes


def load_state_dict(files: list[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    state = {}
    for path in files:
        try:
            with safe_open(path, "pt") as f:
                for key in f.keys():
                    t = f.get_tensor(key)
                    state[key] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        except (SafetensorError, OSError) as e:
            raise unreadable(path, e) from None
    return state


def save_sharded(state: dict[str, torch.Tensor], folder: str | Path, stem: str, num_shards: int) -> list[Path]:
    """Write ``<stem>-0000i-of-0000n.safetensors`` + ``<stem>.safetensors.index.json`` (HF layout).

    With ``num_shards == 1`` writes ``<stem>.safetensors`` and no index, as the real repositories do.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    if num_shards <= 1:
        target = folder / f"{stem}.safetensors"
        with atomic_path(target) as tmp:
            save_file({k: state[k].contiguous() for k in keys}, str(tmp), metadata={"format": "pt"})
        return [target]
    chunks = [keys[i::num_shards] for i in range(num_shards)]
    chunks = [sorted(c) for c in chunks if c]
    n = len(chunks)
    written, weight_map, total = [], {}, 0
    for i, chunk in enumerate(chunks, start=1):
        name = f"{stem}-{i:05d}-of-{n:05d}.safetensors"
        with atomic_path(folder / name) as tmp:
            save_file({k: state[k].contiguous() for k in chunk}, str(tmp), metadata={"format": "pt"})
        written.append(folder / name)
        for k in chunk:
            weight_map[k] = name
            total += state[k].numel() * state[k].element_size()
    write_json(folder / f"{stem}.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    return written


def config_beside(files: list[str]) -> dict | None:
    """The ``config.json`` in the folder of the first file, if there is one."""
    path = Path(os.path.dirname(files[0])) / "config.json"
    return json.loads(path.read_text()) if path.exists() else None


def check_shards(files: list[str]) -> None:
    """If an HF shard index sits beside the files, every shard it lists must be among them."""
    folder = Path(os.path.dirname(files[0]))
    names = {os.path.basename(f) for f in files}
    for index in folder.glob("*.safetensors.index.json"):
        listed = set(json.loads(index.read_text()).get("weight_map", {}).values())
        if not listed & names:
            continue  # an index of another model in the same folder
        lacking = sorted(listed - names)
        if lacking:
            present = [n for n in lacking if (folder / n).exists()]
            raise ModelFileError(
                f"{index} lists {len(lacking)} shard(s) that are not in this model entry: {lacking[:4]}. "
                + ("They exist on disk: add them to the shard list (or use a glob pattern)." if present else
                   "They are missing on disk: the download is incomplete; fetch again."))
