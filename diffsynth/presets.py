"""Presets: a recipe is an overlay listing only the keys it sets; the full params.yaml is the schema's defaults
(DiffSynth's, ``Config().to_dict()``) with each overlay of its ``extends`` chain merged on top, then its own keys.

``presets/base.yaml`` holds the pipeline settings every recipe starts from (``extends: base.yaml``); a tiny twin
extends its real recipe and ``tiny/cpu.yaml`` (what every twin changes to run offline on a CPU). Changing a default
is one edit, in the schema or in base.yaml; ``diffsynth preset NAME`` writes the merged, commented params.yaml.
"""
from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

import yaml

from .config import SECTIONS, Config, config_from_dict
from .errors import ConfigError
from .files import write_text

PRESETS_DIR = Path("presets")  # relative to the project root (the working directory of `diffsynth` and DVC)
EXTENDS = "extends"
# passthrough sections have no dataclass: their keys' comments live here
PASSTHROUGH_HELP = {
    ("accelerate", "config"): "configs/accelerate/<name>.yaml: single | ddp | deepspeed_zero2 | "
                              "deepspeed_zero2_offload | deepspeed_zero3 | deepspeed_zero3_offload | fsdp",
    ("accelerate", "num_processes"): "processes (GPUs) the train stage launches; overrides the config file's value",
}


def resolve(name: str | Path, presets_dir: Path = PRESETS_DIR) -> Path:
    """A preset file: an existing path, or a name under ``presets/`` (``flux.1-dev-lora``, ``tiny/flux.1-dev-lora``)."""
    path = Path(name)
    for candidate in (path, presets_dir / path, presets_dir / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(p.relative_to(presets_dir).with_suffix("").as_posix() for p in presets_dir.rglob("*.yaml")
                   if p.name not in ("base.yaml", "cpu.yaml")) if presets_dir.is_dir() else []
    raise ConfigError(f"No preset {str(name)!r}: give a file or one of {', '.join(known) or '(no presets/ folder here)'}")


def _read(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a preset is a mapping of params sections, got {type(data).__name__}")
    return data


def layers(path: Path, _seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """The overlays that make up ``path``, first to last: its ``extends`` chain (paths relative to the file), then
    the file itself (without its ``extends`` key)."""
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"{path}: `extends` loops back to itself ({' -> '.join(p.name for p in (*_seen, path))})")
    data = _read(path)
    parents = data.pop(EXTENDS, None) or []
    out = []
    for parent in [parents] if isinstance(parents, str) else list(parents):
        target = path.parent / parent
        if not target.is_file():
            raise ConfigError(f"{path}: extends {parent!r}, which does not exist ({target})")
        out += layers(target, (*_seen, path))
    return out + [(path, data)]


def merge(base: dict, overlay: dict, where: str = "") -> dict:
    """``overlay`` over ``base``: sections merge key by key, values (lists too) replace."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in overlay.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: params section {section!r} must be a mapping, got {type(values).__name__}")
        out.setdefault(section, {}).update(values)
    return out


def preset_params(name: str | Path, presets_dir: Path = PRESETS_DIR) -> dict:
    """The full params dict of a preset: the schema's defaults, then every overlay of its chain."""
    data = Config().to_dict()
    for path, overlay in layers(resolve(name, presets_dir)):
        data = merge(data, overlay, str(path))
    return data


def load_preset(name: str | Path, presets_dir: Path = PRESETS_DIR) -> Config:
    """The checked config a preset means (unknown keys and bad values fail here, naming the key)."""
    return config_from_dict(preset_params(name, presets_dir))


def _help(section: str, key: str) -> str:
    if (section, key) in PASSTHROUGH_HELP:
        return PASSTHROUGH_HELP[(section, key)]
    f = next((f for f in fields(SECTIONS[section]) if f.name == key), None) if section in SECTIONS else None
    if f is None:
        return ""
    text = f.metadata.get("help", "")
    return f"{text} (ours)" if f.metadata.get("ours") else f"--{f.metadata.get('flag') or key}: {text}"


def _scalar(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def render(data: dict, header: str = "") -> str:
    """params.yaml text: every key with its value and what it means (a comment from the schema)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for section, values in data.items():
        lines += ["", f"{section}:"]
        for key, value in values.items():
            text, note = f"  {key}: {_scalar(value)}", _help(section, key)
            lines.append(f"{text}  # {note}" if note else text)
    return "\n".join(lines).lstrip("\n") + "\n"


def write_preset(name: str | Path, out: str | Path = "params.yaml", presets_dir: Path = PRESETS_DIR) -> Path:
    """Write the full params.yaml of a preset (checked first: a bad preset leaves ``out`` untouched)."""
    path = resolve(name, presets_dir)
    config = config_from_dict(preset_params(path, presets_dir))
    chain = " <- ".join(os.path.relpath(p, path.parent.resolve()) for p, _ in layers(path))
    header = (f"Written by `diffsynth preset {name}`: the schema's defaults <- {chain}.\n"
              "Every flag of the pipeline; edit freely, or run `diffsynth preset` again to start over.")
    write_text(out, render(config.to_dict(), header))
    return Path(out)
