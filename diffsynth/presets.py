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

# reading and merging overlays is config loading (config.py); this module lists, renders and writes presets
from .config import (EXTENDS, PRESETS_DIR, SECTIONS, Config, config_from_dict, layers, load_preset,  # noqa: F401
                     merge, preset_params, resolve)
from .files import write_text

# passthrough sections have no dataclass: their keys' comments live here
PASSTHROUGH_HELP = {
    ("accelerate", "config"): "configs/accelerate/<name>.yaml: single | ddp | deepspeed_zero2 | "
                              "deepspeed_zero2_offload | deepspeed_zero3 | deepspeed_zero3_offload | fsdp",
    ("accelerate", "num_processes"): "processes (GPUs) the train stage launches; overrides the config file's value",
}


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
