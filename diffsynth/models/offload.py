"""Layer-wise CPU offload for training (DiffSynth's ``--enable_model_cpu_offload``, ``--enable_optimizer_cpu_offload``,
``--cpu_offload_split_threshold``) and per-model offload between uses (``--offload_models``).

What the flags mean, as DiffSynth's ``core/offload_training`` implements them:

- A *unit* is a module whose parameters move together. With no threshold every leaf module that has parameters
  is a unit; with ``cpu_offload_split_threshold = T`` a module is one unit unless it holds more than ``T * 2**20``
  parameters (DiffSynth counts parameters, though its help says MB), or has no ``forward`` of its own, or has
  ``encode`` and ``decode`` (a VAE): then its children are split the same way. Parameters and buffers no unit
  holds become units of their owning module.
- Frozen parameters live on the host (pinned when CUDA is present, so copies can be asynchronous); on the
  device each is an empty placeholder of its dtype, filled by a forward pre-hook and a backward pre-hook and
  emptied again after the module's forward and backward.
- Trainable parameters stay on the device, unless optimizer offload is on: then they also live on the host,
  move in for their module's use, and their gradients are moved to the host after backward
  (:meth:`after_backward`), so the optimizer runs and keeps its states on the host.
- With gradient checkpointing a module's second forward in one step is the recomputation inside backward: its
  weights stay on the device until its backward hook (as DiffSynth does), else backward would find them gone.

On a CPU-only machine host and device are the same memory, so placement changes nothing, but the hooks, the
placeholders and the moves run exactly as on a GPU; tests compare it bit for bit with resident training.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect to "
                                          "module outputs")


def _pinned(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    host = t.detach().to("cpu").contiguous()
    if device.type == "cuda" and torch.cuda.is_available():
        host = host.pin_memory()
    return host


class _Frozen:
    def __init__(self, param: nn.Parameter, device: torch.device):
        self.param, self.device = param, device
        self.host = _pinned(param.data, device)
        self.placeholder = torch.empty(0, dtype=param.dtype, device=device)
        param.data = self.placeholder

    def onload(self):
        self.param.data = self.host.to(self.device, non_blocking=True)

    def offload(self):
        self.param.data = self.placeholder

    def grad_to_host(self):
        pass


class _Trainable:
    """Optimizer offload: the parameter's home is the host; it visits the device for its module's use."""

    def __init__(self, param: nn.Parameter, device: torch.device):
        self.param, self.device = param, device
        param.data = _pinned(param.data, device) if device.type == "cuda" else param.data.to("cpu")

    def onload(self):
        self.param.data = self.param.data.to(self.device, non_blocking=True)
        if self.param.grad is not None:  # gradient accumulation: the next backward adds to it on the device
            self.param.grad = self.param.grad.to(self.device, non_blocking=True)

    def offload(self):
        self.param.data = self.param.data.to("cpu", non_blocking=True)

    def grad_to_host(self):
        if self.param.grad is not None:
            self.param.grad = self.param.grad.to("cpu", non_blocking=True)


class _Resident:
    def __init__(self, param: nn.Parameter, device: torch.device):
        param.data = param.data.to(device)

    onload = offload = grad_to_host = lambda self: None


class _Buffer:
    def __init__(self, module: nn.Module, name: str, device: torch.device):
        self.module, self.name, self.device = module, name, device
        self.host = _pinned(module._buffers[name], device)
        module._buffers[name] = self.host

    def onload(self):
        self.module._buffers[self.name] = self.host.to(self.device, non_blocking=True)

    def offload(self):
        self.module._buffers[self.name] = self.host

    def grad_to_host(self):
        pass


def _is_leaf(m: nn.Module) -> bool:
    return next(m.children(), None) is None


def _has_params(m: nn.Module) -> bool:
    return next(m.parameters(), None) is not None


def find_units(model: nn.Module, split_threshold: int | None = None) -> list[nn.Module]:
    """DiffSynth's unit search (see the module docstring); ``split_threshold`` in units of 2**20 parameters."""
    if split_threshold is None:
        return [m for m in model.modules() if _is_leaf(m) and _has_params(m)]
    limit = split_threshold * 1024 * 1024

    def split(m: nn.Module) -> bool:
        return not _is_leaf(m) and (sum(p.numel() for p in m.parameters()) > limit
                                    or "forward" not in type(m).__dict__
                                    or (hasattr(m, "encode") and hasattr(m, "decode")))

    def walk(m: nn.Module) -> list[nn.Module]:
        return [u for c in m.children() for u in walk(c)] if split(m) else [m]
    return walk(model)


class _Unit:
    """One unit's parameters/buffers and its hooks."""

    def __init__(self, module: nn.Module, slots: list, owner: "OffloadManager"):
        self.module, self.slots, self.owner = module, slots, owner
        self.ran_forward = False
        self.loaded = False
        self.handles = [module.register_forward_pre_hook(lambda m, a: self.onload()),
                        module.register_forward_hook(lambda m, a, o: self._after_forward()),
                        module.register_full_backward_pre_hook(lambda m, g: self.onload())]
        # a parent's full backward hook fires before its children's backward has run: use its leaves
        leaves = [module] if _is_leaf(module) else [m for m in module.modules() if _is_leaf(m) and _has_params(m)]
        self.handles += [leaf.register_full_backward_hook(lambda m, gi, go: self.offload()) for leaf in leaves]

    def onload(self):
        if not self.loaded:
            for s in self.slots:
                s.onload()
            self.loaded = True

    def offload(self):
        if self.loaded:
            for s in self.slots:
                s.offload()
            self.loaded = False

    def _after_forward(self):
        if not torch.is_grad_enabled():
            self.offload()  # no backward will need it
        elif not self.ran_forward:
            self.ran_forward = True
            self.offload()
        # else: recomputation inside backward (gradient checkpointing): keep until the backward hook


class OffloadManager:
    """Installs the offload hooks on ``model``; call :meth:`after_backward` after each backward (before the
    optimizer step) and :meth:`remove` to put every weight back on ``device``."""

    def __init__(self, model: nn.Module, device, optimizer_offload: bool = False, split_threshold: int | None = None,
                 only_frozen: bool = False):
        self.model, self.device = model, torch.device(device)
        self.optimizer_offload = optimizer_offload
        self.units: list[_Unit] = []
        claimed: set[int] = set()

        def slots_for(params, buffers) -> list:
            out = []
            for p in params:
                if id(p) in claimed or p.is_meta:  # meta: a part this stage holds without data
                    continue
                claimed.add(id(p))
                if not p.requires_grad:
                    out.append(_Frozen(p, self.device))
                elif only_frozen:
                    out.append(_Resident(p, self.device))
                else:
                    out.append((_Trainable if optimizer_offload else _Resident)(p, self.device))
            for mod, name in buffers:
                buf = mod._buffers.get(name)
                if buf is None or id(buf) in claimed or buf.is_meta:
                    continue
                claimed.add(id(buf))
                out.append(_Buffer(mod, name, self.device))
            return out

        for unit in find_units(model, split_threshold):
            slots = slots_for(list(unit.parameters()),
                              [(m, n) for m in unit.modules() for n in list(m._buffers)])
            if slots:
                self.units.append(_Unit(unit, slots, self))
        for mod in model.modules():  # parameters and buffers of modules no unit covers
            slots = slots_for(list(mod.parameters(recurse=False)), [(mod, n) for n in list(mod._buffers)])
            if slots:
                self.units.append(_Unit(mod, slots, self))

    def after_backward(self) -> None:
        for u in self.units:
            u.offload()
            u.ran_forward = False
            if self.optimizer_offload:
                for s in u.slots:
                    s.grad_to_host()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def remove(self) -> None:
        """Hooks off, every weight back on the device (resident)."""
        for u in self.units:
            u.onload()
            for h in u.handles:
                h.remove()
        self.units = []
