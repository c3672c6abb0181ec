"""Full training state for an exact resume (DiffSynth saves weights only): trainable parameters, optimizer,
scheduler, RNG, step and data position, and the MLflow run id. No pickles: tensors go to safetensors,
everything else to JSON. The folder is written beside itself and renamed, so a crash never leaves half a state.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STATE_DIR = "state"


def _split_tensors(obj, prefix: str, tensors: dict):
    """Replace tensors in a nested structure by ``{"__tensor__": key}``, collecting them in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = prefix.strip(".")
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_split_tensors(k, f"{prefix}.k{i}", tensors), _split_tensors(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a training state")


def _join_tensors(obj, tensors: dict):
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {_join_tensors(k, tensors): _join_tensors(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [_join_tensors(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
    return obj


def save_structure(obj, folder: Path, name: str) -> None:
    tensors: dict = {}
    tree = _split_tensors(obj, "", tensors)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(tree))


def load_structure(folder: Path, name: str):
    tensors = load_file(str(folder / f"{name}.safetensors"))
    return _join_tensors(json.loads((folder / f"{name}.json").read_text()), tensors)


def staging_dir(output: Path) -> Path:
    return output / f".{STATE_DIR}.tmp"


def begin(output: Path) -> Path:
    tmp = staging_dir(output)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(output: Path) -> Path:
    """Swap the staged folder in as ``<output>/state``."""
    final, tmp, old = output / STATE_DIR, staging_dir(output), output / f".{STATE_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_meta(output: Path) -> dict | None:
    path = output / STATE_DIR / "meta.json"
    return json.loads(path.read_text()) if path.exists() else None


def save_history(folder: Path, history: dict) -> None:
    """What the run has logged so far (loss and validation points, checkpoints): a resume continues the lists, so
    the stage's plots and metrics cover every step, and a finished run can be published without training."""
    (folder / "history.json").write_text(json.dumps(history))


def load_history(folder: Path) -> dict | None:
    path = folder / "history.json"
    return json.loads(path.read_text()) if path.exists() else None
