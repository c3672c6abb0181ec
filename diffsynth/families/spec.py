"""The family spec: everything that makes up one model family, declared once in the family's own module.

Training, export, data validation and the command-line layer ask the spec (through :func:`spec_for` /
:func:`get_spec`) and never name a family. Adding a family or a DiffSynth recipe variant is one module that
builds a :class:`FamilySpec` and calls :func:`register` (see README, "Adding a family").
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from ..errors import ConfigError


class UnknownFamilyError(ConfigError):
    """A family or tiny-preset name no spec registers; the message lists the known ones."""


@dataclass(frozen=True)
class DataRules:
    """How a dataset row becomes a training sample: size multiples, the 4k+1 frame rule, which columns are
    videos, and which extra inputs the family derives from other columns (no metadata column needed)."""

    size_factor: int = 16
    width_factor: int = 16
    time_division_factor: int = 4
    time_division_remainder: int = 1
    video_keys: tuple[str, ...] = ()
    derived_inputs: tuple[str, ...] = ()

    def as_kwargs(self) -> dict:
        """Keyword arguments of ``diffsynth.data.validate.check_dataset``."""
        return {"size_factor": self.size_factor, "width_factor": self.width_factor,
                "time_division_factor": self.time_division_factor,
                "time_division_remainder": self.time_division_remainder,
                "video_keys": self.video_keys, "derived_inputs": self.derived_inputs}


def _identity_targets(model: torch.nn.Module, targets: list[str]) -> list[str]:
    return list(targets)


@dataclass(frozen=True)
class FamilySpec:
    name: str                                   # canonical name, as params.yaml's model.family writes it
    summary: str                                # one line for help texts and errors
    load_pipeline: Callable                     # (config, dtype, device, role) -> Pipeline (role: base.ROLES)
    train_sigmas: Callable[[int], torch.Tensor]  # n -> the n-point training grid (float64, 1 -> small)
    model_family: str = ""                      # the model tables' family that loads it (models/components.py);
                                                # "" = the spec's name (a variant inherits its base's)
    aliases: tuple[str, ...] = ()               # other accepted spellings (the only alias table)
    auxiliary_entries: Callable = lambda config: {}  # config -> {name: tokenizer/processor folder entry}
    data: DataRules = field(default_factory=DataRules)
    data_rules_for: Callable | None = None      # config -> DataRules, where the model entries change them
    encoders: tuple[str, ...] = ("text_encoder",)  # components only encoding needs (not held when training cached)
    extra_inputs: tuple[str, ...] = ()          # model.extra_inputs values the family implements
    required_extra_inputs: tuple[str, ...] = ()
    variant_of: str | None = None               # a variant is chosen over its base when ...
    selected_by: str | None = None              # ... this extra input is given (DiffSynth's one script per base)
    lora_targets: str = ""                      # DiffSynth's default --lora_target_modules of the recipe
    map_lora_targets: Callable = _identity_targets  # (dit, DiffSynth target names) -> loaded module names
    lora_to_original: Callable | None = None    # ({module: (A, B)}, shapes) -> same in original checkpoint names
    original_state_dict: Callable | None = None  # diffusers DiT state dict -> original checkpoint names
    # DiffSynth-Studio's own DiT names (what its trainer saves and its loaders read); None: the loaded names
    lora_to_diffsynth: Callable | None = None   # ({module: (A, B)}, shapes) -> same in DiffSynth's DiT names
    diffsynth_state_dict: Callable | None = None  # diffusers DiT state dict -> DiffSynth's DiT names
    lora_names_without_model: Callable | None = None  # LoRA modules in foreign names -> loaded names, no model
    opensource_lora_format: str | None = None   # output.align_to_opensource_format writes this export format
    tiny_presets: tuple[str, ...] = ()          # `diffsynth tiny-model` twins; the first is the family's default
    model_id_patterns: tuple[str, ...] = ()     # substrings of model ids/files that name the family (flag-only runs)
    command_line_defaults: dict = field(default_factory=dict)  # {section: {key: value}} DiffSynth's script forces
    # DiffSynth's sft:data_process file keys -> our input names (its `.pth` cache read by --task sft:train)
    diffsynth_cache_keys: dict = field(default_factory=lambda: {"input_latents": "latents"})

    def __post_init__(self):
        if not self.model_family:
            object.__setattr__(self, "model_family", self.name)

    def data_rules(self, config=None) -> DataRules:
        return self.data_rules_for(config) if (config is not None and self.data_rules_for) else self.data

    def with_changes(self, **changes) -> "FamilySpec":
        return replace(self, **changes)


_REGISTRY: dict[str, FamilySpec] = {}
_NAMES: dict[str, str] = {}   # normalised name or alias -> canonical name


def normalise(name: str) -> str:
    """``Qwen-Image``, ``qwen_image`` and ``qwen-image`` are one name; so are ``flux.1`` and ``flux1``."""
    return str(name).strip().lower().replace("-", "_").replace(".", "")


def register(spec: FamilySpec) -> FamilySpec:
    for key in (spec.name, *spec.aliases, *spec.tiny_presets):
        key = normalise(key)
        if _NAMES.get(key, spec.name) != spec.name:
            raise ValueError(f"family name {key!r} registered twice ({_NAMES[key]} and {spec.name})")
        _NAMES[key] = spec.name
    _REGISTRY[spec.name] = spec
    return spec


def _load_all() -> None:
    # importing a family module registers its spec; a module imported directly registers only itself
    from . import flux, flux_kontext, qwen_image, qwen_image_edit, wan  # noqa: F401


def all_specs() -> list[FamilySpec]:
    _load_all()
    return list(_REGISTRY.values())


def get_spec(name: str) -> FamilySpec:
    """The spec of a family name, alias or tiny-preset name (any of ``-``/``_``/``.`` spellings)."""
    _load_all()
    key = normalise(name or "")
    if key not in _NAMES:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownFamilyError(f"Unknown model family {name!r}; known families: {known} (aliases: "
                                 f"{', '.join(sorted(a for s in _REGISTRY.values() for a in s.aliases))})")
    return _REGISTRY[_NAMES[key]]


def split_inputs(extra_inputs: str | None) -> list[str]:
    return [k.strip() for k in str(extra_inputs or "").split(",") if k.strip()]


def select_variant(family: str, extra_inputs: str | None) -> FamilySpec:
    """``family``'s spec, or the registered variant of it that one of ``extra_inputs`` selects (Qwen-Image with
    ``edit_image`` is Qwen-Image-Edit, as DiffSynth's one train.py decides)."""
    spec = get_spec(family)
    wanted = split_inputs(extra_inputs)
    for variant in all_specs():
        if variant.variant_of == spec.name and variant.selected_by in wanted:
            return variant
    return spec


def spec_for(config) -> FamilySpec:
    """The spec a config trains: ``model.family`` with its variant resolved."""
    return select_variant(config.model.family, config.model.extra_inputs)


def check_extra_inputs(config) -> FamilySpec:
    """Every extra input must be one the family implements: anything else would be silently ignored."""
    spec = spec_for(config)
    wanted = split_inputs(config.model.extra_inputs)
    unknown = [k for k in wanted if k not in spec.extra_inputs]
    if unknown:
        supported = ", ".join(spec.extra_inputs) or "none"
        raise ConfigError(
            f"model.extra_inputs {', '.join(unknown)}: the {spec.name} family does not implement "
            f"{'this input' if len(unknown) == 1 else 'these inputs'} (supported: {supported}). Remove "
            f"{'it' if len(unknown) == 1 else 'them'}, or choose the family whose recipe uses "
            f"{'it' if len(unknown) == 1 else 'them'}; training would otherwise ignore "
            f"{'it' if len(unknown) == 1 else 'them'}.")
    missing = [k for k in spec.required_extra_inputs if k not in wanted]
    if missing:
        raise ConfigError(f"the {spec.name} family needs model.extra_inputs to include "
                                     f"{', '.join(missing)} (DiffSynth: --extra_inputs {','.join(missing)})")
    return spec


def infer_family(text: str) -> str | None:
    """The one family whose model-id patterns occur in ``text`` (model entries of a command line), or None."""
    text = text.lower()
    found = {s.name for s in all_specs() if any(p.lower() in text for p in s.model_id_patterns)}
    return found.pop() if len(found) == 1 else None
