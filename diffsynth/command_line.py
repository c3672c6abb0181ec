"""DiffSynth's ``train.py`` command line: its flags (same names, types, defaults) <-> params.yaml, the flag
table (docs/flags.md), and ``diffsynth params --from-args``. Family-specific rules come from the family specs."""
from __future__ import annotations

import argparse
import functools
from dataclasses import fields
from typing import Any, get_args, get_type_hints

import yaml

from .config import SECTIONS, Config, config_from_dict, read_params_file
from .errors import ConfigError
from .families import get_spec
from .families.upstream import recognise, recognise_argv
from .upstream_flags import all_upstream_flags, families_of, refuse_upstream_flags

# DiffSynth flags we parse but do not implement yet: giving them is an error, never silently ignored.
UNSUPPORTED_FLAGS: dict[str, Any] = {
    "template_model_id_or_path": None, "enable_lora_hot_loading": False,
    "audio_processor_path": None, "framewise_decoding": False,
}


def unsupported_why() -> dict[str, str]:
    """The unsupported flags that belong to a model a family refuses by name (``Family.refused_flags``): the error
    names it, as a generic "remove the flag" would mislead."""
    from .families import all_specs
    return {flag: why for spec in all_specs() for flag, why in vars(spec).get("refused_flags", {}).items()}


def _flag_fields():
    """(section name, dataclass field, flag name) for every flag."""
    for section, cls in SECTIONS.items():
        if section in ("validation", "sample", "export", "cache"):
            continue  # structured values; params.yaml only
        for f in fields(cls):
            yield section, f, f.metadata.get("flag") or f.name


@functools.cache
def _type_hints(section: str) -> dict:
    return get_type_hints(SECTIONS[section])  # slow (evaluates every annotation): once per section, not per flag


def build_arg_parser(prog: str = "diffsynth train") -> argparse.ArgumentParser:
    """DiffSynth's ``train.py`` flags (same names, types, defaults) plus ours; defaults are DiffSynth's."""
    parser = argparse.ArgumentParser(prog=prog, description="Train with DiffSynth-Studio's flags.",
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--params", default=argparse.SUPPRESS,
                        help="start from this params.yaml; flags given on the command line override it")
    for section, f, flag in _flag_fields():
        annotation = _type_hints(section)[f.name]
        base = next((a for a in get_args(annotation) if a is not type(None)), annotation)
        help_text = f"{f.metadata.get('help', '')} [{section}.{f.name}]"
        if base is bool:
            parser.add_argument(f"--{flag}", dest=f"{section}.{f.name}", action="store_true", help=help_text)
        else:
            parser.add_argument(f"--{flag}", dest=f"{section}.{f.name}", type=str, help=help_text,
                                metavar=base.__name__.upper())
    for flag in UNSUPPORTED_FLAGS:
        is_bool = isinstance(UNSUPPORTED_FLAGS[flag], bool)
        parser.add_argument(f"--{flag}", dest=f"unsupported.{flag}", help="not supported yet",
                            **({"action": "store_true"} if is_bool else {"type": str}))
    return parser


def config_from_args(argv: list[str], base: dict | None = None, check: bool = True) -> Config:
    """Parse DiffSynth flags over ``base`` (a params dict) and return the config they mean."""
    if not base:
        recognise_argv(argv)  # the model ids name the family before any other flag or extra input is judged
    refuse_upstream_flags(argv)  # another DiffSynth family's flag: say whose, not "unrecognized arguments"
    parser = build_arg_parser()
    ns = vars(parser.parse_args(argv))
    unsupported = sorted(k.split(".", 1)[1] for k in ns if k.startswith("unsupported."))
    if unsupported:
        named = unsupported_why()
        why = dict.fromkeys(named[u] for u in unsupported if u in named)
        if why:
            raise ConfigError(" ".join(why))
        raise ConfigError("Not supported yet: " + ", ".join(f"--{u}" for u in unsupported)
                          + ". Remove these flags; see the flag table in docs/flags.md (`diffsynth flags`).")
    data: dict = {}
    flags_only = "params" not in ns and not base  # a pasted DiffSynth command line, nothing else
    if "params" in ns:
        data = read_params_file(ns.pop("params"))
    elif base:
        data = base
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for dest, value in ns.items():
        section, key = dest.split(".", 1)
        data.setdefault(section, {})[key] = value
    model = data.setdefault("model", {})
    if not model.get("family"):
        # DiffSynth picks the family by which train.py runs; we read it from the model ids (--family wins); a model
        # of no family of ours is refused, and the default family applies only when no model is named
        inferred = recognise(model.get("model_id_with_origin_paths"), model.get("model_paths"))
        # the family folder's name: its variants are chosen by the extra inputs (edit_image: Qwen-Image-Edit), and
        # the DVC stages depend on diffsynth/families/<model.family>
        model["family"] = inferred or Config().model.family
    if flags_only:
        # what the family's DiffSynth train.py forces (Wan: gradient checkpointing, in DiffSynth-Studio's
        # examples/wanvideo/model_training/train.py), so its command line means it; params.yaml leaves it to the user
        spec = get_spec(model.get("family") or Config().model.family)
        for section, values in spec.command_line_defaults.items():
            for key, value in values.items():
                data.setdefault(section, {}).setdefault(key, value)
    return config_from_dict(data, check)


# How a supported DiffSynth flag behaves differently here (shown in the flag table, docs/flags.md).
DIFFERENCES = {
    "dataset_metadata_path": "empty with --task sft:train: the cache in dataset_base_path is read (ours or DiffSynth's .pth)",
    "model_paths": "safetensors only (pickled .bin/.pth are refused); shard lists and globs",
    "model_id_with_origin_paths": "files recognised by key names and shapes, not a hash: partial key sets load",
    "fp8_models": "per-tensor scaled fp8 (more precise than a plain cast)",
    "trainable_models": "",
    "find_unused_parameters": "rarely needed: LoRA is not put on modules that get no gradient, and a full "
                              "fine-tune turns it on by itself under DDP",
    "task": "sft, direct_distill, trajectory_imitation (Z-Image), and split training: sft:data_process writes the "
            "encoder cache, sft:train reads it",
    "resume_from_checkpoint": "weights only, as DiffSynth; full-state resume is train.resume",
    "lora_target_modules": "DiffSynth's FLUX and Wan names are mapped to the loaded modules",
    "save_steps": "also writes a resumable state (optimizer, RNG, data position) beside the checkpoint",
    "use_gradient_checkpointing_offload": "saved activations of the whole forward go to CPU memory",
    "enable_csv_log": "every metric (loss, lr, grad_norm, validation), not only loss",
    "enable_tensorboard_log": "every metric",
    "enable_swanlab_log": "every metric and the save-point sample images, beside MLflow (extra `swanlab`)",
    "enable_wandb_log": "every metric and the save-point sample images, beside MLflow (extra `wandb`)",
    "num_frames": "",
    "quant_options": "DiffSynth's grammar and methods; non-differentiable methods refused as DiffSynth does; "
                     "the model string may also be a pipeline model (dit); trained-fully models refused; extra `.[quant]`",
    "offload_models": "frozen models only, kept in CPU memory and loaded per layer for each use in the train stage "
                      "(not disk); an entry the step does not hold (split training) is a no-op, said in one line",
    "enable_model_cpu_offload": "one process only (refused under DDP/DeepSpeed/FSDP); not with quant_options",
    "enable_optimizer_cpu_offload": "",
    "cpu_offload_split_threshold": "counted in 2**20 parameters, as DiffSynth's code does",
}


def flag_table() -> str:
    """Markdown: every DiffSynth flag (and ours) -> params.yaml key -> status."""
    rows = ["| flag | params.yaml key | status |", "|-|-|-|"]
    for section, f, flag in _flag_fields():
        if f.metadata.get("ours"):
            status = "ours (not in DiffSynth): " + f.metadata.get("help", "").replace("|", "\\|")
        else:
            note = DIFFERENCES.get(f.name, "")
            status = "supported" + (f"; {note}" if note else "")
        rows.append(f"| `--{flag}` | `{section}.{f.name}` | {status} |")
    named = unsupported_why()
    for flag in UNSUPPORTED_FLAGS:
        model = f" (the error names {named[flag].split(' (', 1)[0]})" if flag in named else ""
        rows.append(f"| `--{flag}` | — | not supported yet: refused with an error{model} |")
    for flag in all_upstream_flags():
        rows.append(f"| `--{flag}` | — | only DiffSynth's {' and '.join(families_of(flag))} train.py: refused, "
                    "naming the family |")
    return "\n".join(rows)


def diffsynth_defaults() -> dict:
    """Every section at DiffSynth's defaults (what a bare ``train.py`` command line means)."""
    return Config().to_dict()


def dump_params(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None)
