"""The training module and what makes a pipeline trainable: the loss of a batch, DiffSynth's order of freezing,
fusing and LoRA injection, full-checkpoint loading, fp8 storage, and where encoded inputs come from."""
from __future__ import annotations

import contextlib

import torch

from .. import cache
from ..config import Config
from ..data.dataset import split_keys
from ..data.masks import attach as attach_loss_extras
from ..errors import ConfigError
from ..families import Family
from ..models.fp8 import enable_fp8, fp8_entries
from ..models.safetensors_io import read_tensors
from ..models.adapters import adapter_scale
from . import distill
from .lora import (add_lora, fuse_lora, load_adapter_checkpoint, load_lora_checkpoint,
                   parse_target_modules)
from .loss import flow_match_loss
from .preservation import Preservation
from .schedule import FlowMatchSchedule


def item_list(batch: list) -> list:
    """The DataLoader's collate: the batch's dataset items as they are (the family collates encoded inputs)."""
    return list(batch)


class TrainingModule(torch.nn.Module):
    """Wraps the family pipeline as ``self.pipe`` so parameter names read ``pipe.dit.<...>`` as in DiffSynth."""

    def __init__(self, pipe: Family, schedule: FlowMatchSchedule, generator: torch.Generator,
                 boundaries: tuple[float, float] = (0.0, 1.0), offload_activations: bool = False,
                 task: str = "sft"):
        super().__init__()
        self.distill = task == distill.TASK  # DiffSynth's DirectDistillLoss instead of its FlowMatchSFTLoss
        self.pipe = pipe
        self.schedule = schedule
        self.generator = generator
        self.boundaries = boundaries
        self.offload_activations = offload_activations
        self.preservation = None  # train.dop_weight (configure_trainable sets it)
        self.trajectory = None  # train.task trajectory_imitation: its teacher and LPIPS (trajectory.attach sets it)

    def train(self, mode: bool = True) -> "TrainingModule":
        """Train mode for the trained models only: frozen encoders stay in eval mode, as in DiffSynth (T5/UMT5
        have dropout 0.1; in train mode every online encoding would be noised)."""
        super().train(mode)
        for child in self.pipe.children():
            if not any(p.requires_grad for p in child.parameters()):
                child.eval()
        return self

    def encode(self, item: dict) -> dict:
        """The model inputs of one dataset item: encoded now, or read from the encoder cache."""
        if "cached_inputs" in item:
            return to_device(item["cached_inputs"], self.pipe.device)
        return attach_loss_extras(self.pipe.encode(item), item)

    @property
    def _no_split_modules(self) -> list[str]:
        """Read by accelerate's FSDP transformer-based wrapping: the block classes (diffusers lists them in
        ``_no_split_modules``) of the models being trained, so that each block is its own shard group."""
        names: set[str] = set()
        for child in self.pipe.children():
            if any(p.requires_grad for p in child.parameters()):
                present = {type(m).__name__ for m in child.modules()}
                names |= set(getattr(child, "_no_split_modules", None) or []) & present
        return sorted(names)

    def forward(self, items: list[dict]) -> torch.Tensor:
        """The loss of one batch: the items' dataset rows (one shape bucket); a single item is a batch of one."""
        if isinstance(items, dict):
            items = [items]
        encoded = [self.encode(item) for item in items]
        if self.distill:  # each row's own seeded noise and step count
            encoded = [distill.attach(inputs, item, self.pipe, self.generator) for inputs, item in zip(encoded, items)]
        batch = self.pipe.collate(encoded)
        ctx = torch.autograd.graph.save_on_cpu() if self.offload_activations else contextlib.nullcontext()
        with ctx:
            if self.distill:
                return distill.direct_distill_loss(self.pipe, batch)
            if self.trajectory is not None:
                return self.trajectory.loss(self.pipe, batch, self.generator)
            return flow_match_loss(self.pipe, self.schedule, batch, self.generator, *self.boundaries,
                                   extra=self._preservation(items, batch))

    def _preservation(self, items: list[dict], batch: dict):
        """train.dop_weight: the DOP term on the items' class prompts (encoded online), or None."""
        if self.preservation is None:
            return None
        encoded = self.pipe.collate([self.encode(self.preservation.class_item(item)) for item in items])
        # the class prompt's conditioning on the main batch's latents (its own encode saw the same image)
        class_inputs = {**encoded, **{k: batch[k] for k in ("latents", "first_frame_latents") if k in batch}}
        return lambda noisy, t: self.preservation.loss(self.pipe, self.pipe, noisy, t, class_inputs)


def to_device(inputs: dict, device) -> dict:
    return {k: [t.to(device) for t in v] if isinstance(v, list) else v.to(device) for k, v in inputs.items()}


def cache_source(config: Config, metadata_path: str | None) -> tuple[str | None, dict | None]:
    """(folder, expected fingerprint) of the encoder cache training reads, or (None, None) to encode online.

    ``--task sft:train`` (DiffSynth's split training) reads ``dataset_base_path``; the pipeline's cache stage
    writes ``cache.data_dir`` and training checks it was built from the same data, resolution and models."""
    if config.train.task == "sft:train":
        return config.dataset.dataset_base_path, {"family": config.model.family,
                                                  "torch_dtype": config.model.torch_dtype}
    if config.cache.enabled:
        return config.cache.data_dir, cache.fingerprint(config, metadata_path)
    return None, None


def pipe_model(pipe: Family, name: str, what: str) -> torch.nn.Module:
    try:
        return pipe.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"{what}: {name!r} is not a model of this pipeline; models: "
                          f"{[n for n, _ in pipe.named_children()]}") from None


def configure_trainable(module: TrainingModule, config: Config, dtype: torch.dtype) -> list[str]:
    """DiffSynth's order: load a full checkpoint, freeze all but ``trainable_models``, fuse the
    preset LoRA, inject LoRA (optionally from ``lora_checkpoint``). Returns the trainable parameter names."""
    pipe = module.pipe
    pipe.eval().requires_grad_(False)
    for name in split_keys(config.train.trainable_models):
        pipe_model(pipe, name, "train.trainable_models").train().requires_grad_(True)
    if config.lora.preset_lora_path:
        target = pipe_model(pipe, config.lora.preset_lora_model, "lora.preset_lora_model")
        fuse_lora(target, read_tensors(config.lora.preset_lora_path, "lora.preset_lora_path"), type(pipe),
                  source=config.lora.preset_lora_path)
    if config.lora.lora_base_model:
        base = pipe_model(pipe, config.lora.lora_base_model, "lora.lora_base_model")
        name = config.lora.lora_base_model
        targets = type(pipe).lora_targets_for(name, base, parse_target_modules(config.lora.lora_target_modules, base))
        add_lora(base, targets, config.lora.lora_rank, alpha=config.lora.lora_alpha, dtype=dtype,
                 exclude=type(pipe).modules_without_gradient(name, base), adapter=config.lora.adapter,
                 lokr_factor=config.lora.lokr_factor)
        if config.lora.lora_checkpoint and config.lora.adapter != "lora":
            load_adapter_checkpoint(base, read_tensors(config.lora.lora_checkpoint, "lora.lora_checkpoint"),
                                    config.lora.adapter, adapter_scale(config), source=config.lora.lora_checkpoint)
        elif config.lora.lora_checkpoint:
            load_lora_checkpoint(base, read_tensors(config.lora.lora_checkpoint, "lora.lora_checkpoint"), type(pipe),
                                 source=config.lora.lora_checkpoint)
    module.preservation = Preservation.from_config(config)
    if config.gradient.use_gradient_checkpointing or config.gradient.use_gradient_checkpointing_offload:
        for child in pipe.children():
            if hasattr(child, "enable_gradient_checkpointing") and any(p.requires_grad for p in child.parameters()):
                child.enable_gradient_checkpointing()
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    if not names:
        raise ConfigError("No trainable parameters: check train.trainable_models and lora.* settings")
    return names


def load_full_checkpoint(module: TrainingModule, path: str, prefix: str | None) -> None:
    """``--resume_from_checkpoint``: a saved full state dict, keys re-prefixed."""
    state = {f"{prefix or ''}{k}": v for k, v in read_tensors(path, "train.resume_from_checkpoint").items()}
    own = dict(module.named_parameters())
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise ConfigError(f"resume_from_checkpoint {path}: {len(unexpected)} keys fit no parameter (e.g. "
                          f"{unexpected[:3]}). It takes full fine-tune checkpoints; continue a LoRA with "
                          "lora.lora_checkpoint instead.")
    with torch.no_grad():
        for k, v in state.items():
            own[k].data.copy_(v.to(own[k].dtype))


def apply_fp8(pipe: Family, config: Config, dtype: torch.dtype) -> None:
    """``model.fp8_models``: frozen weights of the listed entries stored in fp8 (after LoRA injection)."""
    wanted = fp8_entries(config.model.fp8_models)
    unknown = wanted - set(pipe.component_sources.values())
    if unknown:
        raise ConfigError(f"model.fp8_models entries {sorted(unknown)} are not model entries; write them exactly as "
                          f"in the model flags: {sorted(pipe.component_sources.values())}")
    for component, source in pipe.component_sources.items():
        # a component this role does not hold (the encoders when training from the cache) has nothing to store
        if source in wanted and getattr(pipe, component, None) is not None:
            enable_fp8(getattr(pipe, component), compute_dtype=dtype)  # computed in model.torch_dtype


def trains_unused(module: TrainingModule, trainable: list[str]) -> bool:
    unused = [f"pipe.{name}.{m}." for name, child in module.pipe.named_children()
              for m in type(module.pipe).modules_without_gradient(name, child)]
    return any(n.startswith(tuple(unused)) for n in trainable) if unused else False
