"""Tiny presets: random-initialised tiny models of the real architectures, written in the real repository
layouts (folder and file names, sharded safetensors with index, config.json, tokenizer).

They exist so that the fetch -> detect -> load path that serves a real checkpoint runs in tests and in the
offline demo. A tiny preset learns nothing useful; every folder carries ``TINY_PRESET.md`` saying so.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable

from ..files import staged_dir, write_json, write_text
from .model_config import ModelConfigError
from .safetensors_io import save_sharded

TINY_NOTE = ("# Tiny preset ({family})\n\nRandom-initialised tiny model in the real `{repo}` layout, written by "
             "`diffsynth tiny-model`. It is a test/demo device, not a trained model: results from it mean nothing.\n")


def write_config(folder: Path, config: dict) -> None:
    write_json(folder / "config.json", config)


def save_model(state: dict, folder: Path, stem: str, shards: int = 1, config: dict | None = None) -> None:
    """``state`` as ``<folder>/<stem>.safetensors`` (or ``shards`` shards with an index) and its config.json."""
    save_sharded(state, folder, stem, num_shards=shards)
    if config is not None:
        write_config(folder, config)


# twin name -> (family, real repository it mirrors, writer(out_dir, seed)); registered by each family
TINY_PRESETS: dict[str, tuple[str, str, Callable]] = {}
DEFAULT_TWINS: dict[str, str] = {}  # normalised family name or alias -> that family's default twin


def _key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


def register_twin(name: str, family: str, repo: str, writer: Callable, family_names: tuple[str, ...] = ()) -> None:
    """Add a family's tiny twin (called by the family registry); the family's first twin is its default, which
    ``family_names`` (its name and aliases) resolve to."""
    TINY_PRESETS[name] = (family, repo, writer)
    for family_name in family_names:
        DEFAULT_TWINS.setdefault(_key(family_name).replace(".", ""), name)


def resolve_tiny_preset(name: str) -> str:
    """A tiny preset name in any spelling (``qwen_image`` = ``qwen-image``), or a family name or alias, which means
    its default twin. An unknown name is a ModelConfigError naming the choices."""
    presets = {_key(p): p for p in TINY_PRESETS}
    if _key(name) in presets:
        return presets[_key(name)]
    if _key(name).replace(".", "") in DEFAULT_TWINS:
        return DEFAULT_TWINS[_key(name).replace(".", "")]
    close = difflib.get_close_matches(_key(name), presets, n=1)
    raise ModelConfigError(f"Unknown tiny preset {name!r} (model.tiny_preset / --family)"
                           + (f"; did you mean {presets[close[0]]!r}?" if close else "")
                           + f" Available: {', '.join(sorted(TINY_PRESETS))} (or a family name, for its default "
                           "twin); \"\" uses real weights.")


def tiny_preset(name: str) -> tuple:
    """(family, real repository, writer) of a tiny preset (any name :func:`resolve_tiny_preset` takes)."""
    return TINY_PRESETS[resolve_tiny_preset(name)]


def write_tiny_model(preset: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny ``preset`` (any name :func:`resolve_tiny_preset` takes) into ``out_dir`` (rebuilt in a
    temporary sibling, then swapped in)."""
    family, repo, writer = tiny_preset(preset)
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as tmp:
        writer(tmp, seed=seed)
        write_text(tmp / "TINY_PRESET.md", TINY_NOTE.format(family=family, repo=repo))
    return out_dir


def is_tiny_preset(folder: str | Path) -> bool:
    return (Path(folder) / "TINY_PRESET.md").exists()


__all__ = ["write_tiny_model", "resolve_tiny_preset", "tiny_preset", "TINY_PRESETS", "is_tiny_preset", "save_model",
           "write_config", "register_twin"]
