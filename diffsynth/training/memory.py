"""Low-memory modes of the train stage, applied to the loaded pipeline after LoRA injection and fp8:
``model.quant_options`` (frozen Linear weights quantized), ``train.enable_model_cpu_offload`` (+ optimizer offload
and the split threshold) and ``model.offload_models``. Engines: ``models/quantize.py``, ``models/offload.py``.

The training loop calls :func:`apply_memory_modes` once after ``_apply_fp8`` and ``MemoryModes.after_backward``
after each backward. Everything here names models by pipeline attribute or model entry, never a family.
"""
from __future__ import annotations

import json

import torch

from ..data.dataset import split_keys
from ..errors import ConfigError
from ..models.fp8 import fp8_entries
from ..models.offload import OffloadManager
from ..models.quantize import parse_quant_options, probe, quantize_model


class MemoryModes:
    """What :func:`apply_memory_modes` installed; ``after_backward`` runs the offload bookkeeping of a step."""

    def __init__(self):
        self.managers: list[OffloadManager] = []
        self.quantized: dict[str, int] = {}  # pipeline attribute -> quantized Linear count

    def after_backward(self) -> None:
        for manager in self.managers:
            manager.after_backward()


def model_entries(config) -> set[str]:
    """Every model entry as written in the model flags (the strings quant_options/offload_models/fp8_models use)."""
    m = config.model
    out = set(split_keys(m.model_id_with_origin_paths))
    if m.model_paths:
        try:
            items = json.loads(m.model_paths)
        except (TypeError, ValueError):
            items = []
        out |= {item if isinstance(item, str) else json.dumps(item) for item in items}
    return out


def _resolve(pipe, key: str, what: str, config) -> str | None:
    """A pipeline attribute for ``key`` (a model entry, or our shorthand: the attribute itself); None when the
    entry is a model of the run that this stage does not hold (split training: DiffSynth's recipes name them)."""
    sources = dict(pipe.component_sources)
    by_source = {v: k for k, v in sources.items()}
    if key in by_source:
        name = by_source[key]
    elif key in sources:
        name = key
    elif key in model_entries(config):
        return None
    else:
        raise ConfigError(f"{what}: {key!r} is not a model entry of this run; write it exactly as in the model "
                          f"flags ({sorted(sources.values()) or sorted(model_entries(config))}) or as a "
                          f"pipeline model ({sorted(sources)})")
    module = getattr(pipe, name, None)
    if module is None or all(p.is_meta for p in module.parameters()):
        return None
    return name


def _refuse_distributed(accelerator, what: str) -> None:
    kind = accelerator.distributed_type.value
    if accelerator.num_processes > 1 or kind in ("DEEPSPEED", "FSDP"):
        raise ConfigError(f"{what} trains on one process without DDP/DeepSpeed/FSDP (as DiffSynth, which does not "
                          f"wrap an offloaded model); this run has {accelerator.num_processes} processes ({kind}): "
                          "use accelerate.config single, or deepspeed_zero3_offload for multi-GPU offload")


def apply_memory_modes(module: torch.nn.Module, config, dtype: torch.dtype, accelerator) -> MemoryModes:
    """Quantize, then install the offload hooks, on ``module`` (the TrainingModule; its ``pipe`` holds the models)."""
    pipe, modes, device = module.pipe, MemoryModes(), accelerator.device
    t = config.train
    _quantize(pipe, config, dtype, accelerator, modes)
    if not t.enable_model_cpu_offload and (t.enable_optimizer_cpu_offload or t.cpu_offload_split_threshold):
        # DiffSynth reads both only under --enable_model_cpu_offload and ignores them otherwise
        if accelerator.is_main_process:
            print("[train] enable_optimizer_cpu_offload / cpu_offload_split_threshold take effect only with "
                  "enable_model_cpu_offload; ignored", flush=True)
    if t.enable_model_cpu_offload:
        _refuse_distributed(accelerator, "train.enable_model_cpu_offload")
        if modes.quantized:
            raise ConfigError("train.enable_model_cpu_offload with model.quant_options: the offloader moves plain "
                              "tensors and quantized weights are packed tensor subclasses; use one of the two")
        accelerator.device_placement = False  # accelerate must not move the offloaded model onto the device
        modes.managers.append(OffloadManager(module, device, t.enable_optimizer_cpu_offload,
                                             t.cpu_offload_split_threshold))
        return modes  # every model is offloaded already
    _offload_frozen(pipe, config, accelerator, modes)
    return modes


def _quantize(pipe, config, dtype: torch.dtype, accelerator, modes: MemoryModes) -> None:
    """``model.quant_options``: the named models' frozen Linear weights quantized in place."""
    m, t, device = config.model, config.train, accelerator.device
    quant = parse_quant_options(m.quant_options)
    trained_fully = set(split_keys(t.trainable_models))
    fp8 = fp8_entries(m.fp8_models)
    for key, spec in quant.items():
        name = _resolve(pipe, key, "model.quant_options", config)
        if name is None:
            continue
        if key in fp8 or pipe.component_sources.get(name) in fp8:
            raise ConfigError(f"model.quant_options and model.fp8_models both name {key!r}: a model is stored either "
                              "in fp8 or quantized; drop it from one of them")
        if any(n == name or n.startswith(name + ".") for n in trained_fully):
            raise ConfigError(f"model.quant_options quantizes {name!r}, which train.trainable_models trains fully: "
                              f"quantized weights cannot be trained; train a LoRA on it (lora.lora_base_model: {name})"
                              " or drop the quant option")
        probe(spec.method, device, dtype)
        # DiffSynth's module names for the excludes -> this pipeline's names (as for LoRA targets)
        exclude = [mapped for p in spec.exclude
                   for mapped in type(pipe).lora_targets_for(name, getattr(pipe, name), [p])]
        names = quantize_model(getattr(pipe, name), spec, device, exclude)
        modes.quantized[name] = len(names)
        if accelerator.is_main_process:
            print(f"[train] quant_options: {len(names)} Linear layers of {name} quantized ({spec.method}; "
                  f"{len(spec.exclude)} exclude patterns)", flush=True)


def _offload_frozen(pipe, config, accelerator, modes: MemoryModes) -> None:
    """``model.offload_models``: the named frozen models kept in CPU memory, loaded per layer for each use."""
    for key in split_keys(config.model.offload_models):
        name = _resolve(pipe, key, "model.offload_models", config)
        if name is None:
            continue  # this stage does not hold it: nothing to offload
        model = getattr(pipe, name)
        if any(p.requires_grad for p in model.parameters()):
            raise ConfigError(f"model.offload_models names {name!r}, which this run trains: offload_models is for "
                              "frozen models between uses; use train.enable_model_cpu_offload to offload a trained one")
        if name in modes.quantized:
            raise ConfigError(f"model.offload_models and model.quant_options both name {name!r}: use one of the two")
        _refuse_distributed(accelerator, "model.offload_models")
        modes.managers.append(OffloadManager(model, accelerator.device, only_frozen=True))
