"""The family registry: every family class registers itself here, by name, aliases and tiny-twin names.

Training, export, data validation and the command-line layer ask the registry (:func:`spec_for`,
:func:`get_spec`) for the family class and never name a family. A family class registers what it declares for
the engines below it too (checkpoint kinds, real architectures, tiny twins, redirected files), so the engines in
``diffsynth/models/`` detect and build its models without naming it.
"""
from __future__ import annotations

from ..config import TASK_EXTRA_INPUTS
from ..errors import ConfigError
from ..models import block_shapes, components, model_config, real_configs, tiny


class UnknownFamilyError(ConfigError):
    """A family or tiny-preset name no family registers; the message lists the known ones."""


_REGISTRY: dict[str, type] = {}
_NAMES: dict[str, str] = {}   # normalised name, alias or tiny-twin name -> canonical family name


def normalise(name: str) -> str:
    """``Qwen-Image``, ``qwen_image`` and ``qwen-image`` are one name; so are ``flux.1`` and ``flux1``."""
    return str(name).strip().lower().replace("-", "_").replace(".", "")


def register(family: type) -> type:
    """Register a family class (its own declarations only: a variant lists its own aliases and twins)."""
    own = vars(family)
    names = (family.name, *own.get("aliases", ()), *own.get("tiny_twins", {}))
    for key in map(normalise, names):
        if _NAMES.get(key, family.name) != family.name:
            raise ValueError(f"family name {key!r} registered twice ({_NAMES[key]} and {family.name})")
        _NAMES[key] = family.name
    _REGISTRY[family.name] = family
    components.register_kinds(own.get("component_kinds", ()))
    real_configs.register(own.get("real_models", {}), own.get("weight_files", {}))
    model_config.register_redirects(own.get("redirected_files", ()))
    block_shapes.register(own.get("block_inputs", {}), own.get("text_tokens", {}),
                          own.get("reference_image_inputs", ()), own.get("unchecked_blocks", ()))
    for twin, (repo, writer) in own.get("tiny_twins", {}).items():
        tiny.register_twin(twin, family.model_family, repo, writer, (family.name, *own.get("aliases", ())))
    return family


def default_family() -> str:
    """The family a run without any model named trains (DiffSynth's own train.py default): the one declaring
    ``default = True``."""
    return next(s.name for s in _REGISTRY.values() if vars(s).get("default"))


def all_specs() -> list[type]:
    return list(_REGISTRY.values())


def get_spec(name: str) -> type:
    """The family class of a family name, alias or tiny-twin name (any of ``-``/``_``/``.`` spellings)."""
    key = normalise(name or "")
    if key not in _NAMES:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownFamilyError(f"Unknown model family {name!r}; known families: {known} (aliases: "
                                 f"{', '.join(sorted(a for s in _REGISTRY.values() for a in vars(s).get('aliases', ())))})")
    return _REGISTRY[_NAMES[key]]


def split_inputs(extra_inputs: str | None) -> list[str]:
    return [k.strip() for k in str(extra_inputs or "").split(",") if k.strip()]


def select_variant(family: str, extra_inputs: str | None) -> type:
    """``family``'s class, or the registered variant of it that one of ``extra_inputs`` selects (Qwen-Image with
    ``edit_image`` is Qwen-Image-Edit, as DiffSynth's one train.py decides)."""
    spec = get_spec(family)
    wanted = split_inputs(extra_inputs)
    for variant in all_specs():
        if variant.variant_of == spec.name and variant.selected_by in wanted:
            return variant
    return spec


def spec_for(config) -> type:
    """The family class a config trains: ``model.family`` with its variant resolved."""
    return select_variant(config.model.family, config.model.extra_inputs)


def check_extra_inputs(config) -> type:
    """Every extra input must be one the family implements: anything else would be silently ignored."""
    spec = spec_for(config)
    wanted = split_inputs(config.model.extra_inputs)
    task_inputs = TASK_EXTRA_INPUTS.get(config.train.task, ())  # read by the task's loss, in every family
    unknown = [k for k in wanted if k not in spec.extra_inputs and k not in task_inputs]
    refused = dict.fromkeys(spec.refused_inputs[k] for k in unknown if k in spec.refused_inputs)
    if refused:  # a variant of the family that is not implemented: say which, and what it lacks
        raise ConfigError(" ".join(refused))
    if unknown:
        supported = ", ".join(spec.extra_inputs) or "none"
        them = "it" if len(unknown) == 1 else "them"
        raise ConfigError(
            f"model.extra_inputs {', '.join(unknown)}: the {spec.name} family does not implement "
            f"{'this input' if len(unknown) == 1 else 'these inputs'} (supported: {supported}). Remove {them}, or "
            f"choose the family whose recipe uses {them}; training would otherwise ignore {them}.")
    missing = [k for k in spec.required_extra_inputs if k not in wanted]
    if missing:
        raise ConfigError(f"the {spec.name} family needs model.extra_inputs to include "
                          f"{', '.join(missing)} (DiffSynth: --extra_inputs {','.join(missing)})")
    return spec
