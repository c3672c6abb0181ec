"""Block swap (``train.blocks_to_swap``): the frozen weights of N transformer blocks live on the host and are
streamed to the device for each use: once for the forward, once again for the backward (where gradient
checkpointing also recomputes the block's forward, while the block is loaded).

How it works (musubi-tuner and diffusion-pipe do the same in spirit; this is written for peft-wrapped diffusers
DiTs):

- The blocks are found generically: every ``ModuleList`` of two or more modules of one class (diffusers'
  ``transformer_blocks``, ``single_transformer_blocks``, ``blocks``), chained in registration order, which is the
  order the DiTs run them. The *last* N blocks of that chain are swapped.
- Only frozen parameters move (the base weights, fp8 ones included). Trainable parameters (LoRA) stay on the
  device with their gradients and optimizer states; a block with no frozen parameter gains nothing, so a fully
  trained DiT is refused.
- The host keeps one copy of each frozen weight (pinned, so copies run asynchronously); "offloading" a block just
  points its parameters back at that copy (frozen weights never change, so nothing is copied back). Transfer per
  training step is therefore 2 x the swapped bytes, host to device.
- Forward: a pre-hook makes sure the block is loaded (waiting for its prefetch) and starts copying the next
  swapped block on a side CUDA stream; a post-hook releases it. Backward: a hook on the block's outputs loads it
  before its backward runs and prefetches the block before it; the block after it (whose backward the autograd
  engine has finished: it runs later-created nodes first) is released; the end of backward releases the rest.
  Setting ``param.data`` keeps the tensor object autograd saved, so without checkpointing the saved weight is
  whatever is loaded at backward time.
- On a CPU the device *is* the host: loading is free. ``check=True`` (the tests) makes a released parameter NaN,
  so any use of a block outside its load window poisons the result instead of silently working.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import DiffSynthError


class BlockSwapError(DiffSynthError, ValueError):
    """train.blocks_to_swap cannot be applied to this model or setup."""


def block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """(name, list) of the model's lists of repeated blocks, in registration order; lists nested inside a found
    block are not searched."""
    found: list[tuple[str, nn.ModuleList]] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if isinstance(child, nn.ModuleList) and len(child) >= 2 and len({type(b) for b in child}) == 1:
                found.append((path, child))
                continue
            visit(child, f"{path}.")

    visit(model, "")
    return found


def swap_chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every block of the model in the order the forward runs them: ``[(\"transformer_blocks.3\", block), ...]``."""
    return [(f"{name}.{i}", block) for name, blocks in block_lists(model) for i, block in enumerate(blocks)]


def frozen_bytes(block: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in block.parameters() if not p.requires_grad)


def _poisoned(t: torch.Tensor) -> torch.Tensor:
    """A stand-in for a released weight under ``check``: NaN (any use poisons the loss and the LoRA weights),
    or empty for non-float tensors (any use fails on its shape)."""
    if t.is_floating_point():
        return torch.full(t.shape, float("nan"), dtype=torch.float32).to(t.dtype)
    return t.new_empty(0)


@dataclass
class _Swapped:
    name: str
    block: nn.Module
    params: list[nn.Parameter]
    host: list[torch.Tensor]
    bytes: int
    loaded: bool = False
    pending: list | None = None   # device copies in flight, with their event
    event: object = None
    backward_loaded: bool = False


@dataclass
class BlockSwap:
    """The engine installed on one model. ``bytes_moved`` counts host-to-device bytes since the last reset."""
    model: nn.Module
    device: torch.device
    swapped: list[_Swapped]
    check: bool = False
    bytes_moved: int = 0
    handles: list = field(default_factory=list)
    copy_stream: object = None
    on_release: object = None   # called with each released block (disk offload drops its pages)
    _graph_tasks: set = field(default_factory=set)

    @property
    def swapped_bytes(self) -> int:
        return sum(s.bytes for s in self.swapped)

    @property
    def planned_transfer_per_step(self) -> int:
        """Bytes copied host->device in one forward + backward."""
        return 2 * self.swapped_bytes

    # ------------------------------------------------------------------ moving
    def _prefetch(self, s: _Swapped) -> None:
        if s.loaded or s.pending is not None:
            return
        self.bytes_moved += s.bytes
        if self.device.type != "cuda":
            s.pending = list(s.host)  # the host copy is usable as it is
            return
        self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.copy_stream):
            s.pending = [h.to(self.device, non_blocking=True) for h in s.host]
            s.event = torch.cuda.Event()
            s.event.record(self.copy_stream)

    def _load(self, s: _Swapped) -> None:
        if s.loaded:
            return
        self._prefetch(s)
        if s.event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(s.event)
            for t in s.pending:
                t.record_stream(stream)  # memory allocated on the copy stream, used on the compute stream
        for p, t in zip(s.params, s.pending):
            p.data = t
        s.pending, s.event, s.loaded = None, None, True

    def _release(self, s: _Swapped) -> None:
        if s.pending is not None:  # a prefetch never used: let it finish, then drop it
            self._load(s)
        if not s.loaded:
            return
        for p, h in zip(s.params, s.host):
            p.data = _poisoned(h) if self.check else h
        s.loaded = s.backward_loaded = False
        if self.on_release is not None:
            self.on_release(s)

    def release_all(self) -> None:
        for s in self.swapped:
            self._release(s)

    # ------------------------------------------------------------------ hooks
    @staticmethod
    def _in_backward() -> bool:
        return torch._C._current_graph_task_id() != -1

    def _forward_pre(self, index: int):
        def hook(module, args, kwargs=None):
            s = self.swapped[index] if index >= 0 else None
            if s is not None:
                self._load(s)
            if not self._in_backward() and index + 1 < len(self.swapped):
                self._prefetch(self.swapped[index + 1])  # overlaps with this block's compute
        return hook

    def _forward_post(self, index: int):
        def hook(module, args, output):
            if self._in_backward():  # checkpoint recomputation: the backward hook owns the block
                return output
            if torch.is_grad_enabled():
                tensors = [t for t in (output if isinstance(output, (tuple, list)) else [output])
                           if isinstance(t, torch.Tensor) and t.requires_grad]
                for t in tensors:
                    t.register_hook(self._backward_hook(index))
            self._release(self.swapped[index])
            return output
        return hook

    def _backward_hook(self, index: int):
        def hook(grad):
            task = torch._C._current_graph_task_id()
            if task not in self._graph_tasks:  # first swapped block of this backward: clean up at its end
                self._graph_tasks.add(task)
                torch.autograd.Variable._execution_engine.queue_callback(lambda: self._end_backward(task))
            s = self.swapped[index]
            for later in self.swapped[index + 1:]:
                if later.backward_loaded:  # its backward is done: later-created nodes run first
                    self._release(later)
            self._load(s)
            s.backward_loaded = True
            if index > 0:
                self._prefetch(self.swapped[index - 1])
            return grad
        return hook

    def _end_backward(self, task: int) -> None:
        self._graph_tasks.discard(task)
        self.release_all()

    def remove(self) -> None:
        """Put every swapped weight back on the device and remove the hooks."""
        for h in self.handles:
            h.remove()
        self.handles.clear()
        for s in self.swapped:
            self._load(s)


def enable_block_swap(model: nn.Module, blocks_to_swap: int, device: torch.device | str,
                      check: bool = False) -> BlockSwap:
    """Keep the frozen weights of the last ``blocks_to_swap`` blocks of ``model`` on the host (see the module
    docstring). Call it once the model is on ``device`` (after LoRA, fp8 and accelerate's ``prepare``)."""
    device = torch.device(device)
    chain = swap_chain(model)
    if not chain:
        raise BlockSwapError(f"train.blocks_to_swap: {type(model).__name__} has no list of repeated blocks to swap")
    if not 0 < blocks_to_swap <= len(chain):
        raise BlockSwapError(f"train.blocks_to_swap: {blocks_to_swap} is not between 1 and the {len(chain)} blocks "
                             f"of {type(model).__name__} ({', '.join(n for n, _ in block_lists(model))})")
    first = len(chain) - blocks_to_swap
    swapped = []
    for name, block in chain[first:]:
        params = [p for p in block.parameters() if not p.requires_grad]
        if not params:
            raise BlockSwapError(f"train.blocks_to_swap: block {name} has no frozen weights (the model is fully "
                                 "trained); block swap moves frozen base weights: train LoRA, or use model CPU offload")
        host = [p.detach().to("cpu") for p in params]
        if device.type == "cuda":
            host = [h.pin_memory() for h in host]
        swapped.append(_Swapped(name, block, params, host, sum(h.numel() * h.element_size() for h in host)))
    return _install(BlockSwap(model, device, swapped, check=check), chain, first)


def _install(engine: BlockSwap, chain: list, first: int) -> BlockSwap:
    device, swapped = engine.device, engine.swapped
    if device.type == "cuda":
        engine.copy_stream = torch.cuda.Stream(device)
    for i, s in enumerate(swapped):
        engine.handles.append(s.block.register_forward_pre_hook(engine._forward_pre(i)))
        engine.handles.append(s.block.register_forward_hook(engine._forward_post(i)))
    if first > 0:  # the block before the first swapped one starts its copy
        engine.handles.append(chain[first - 1][1].register_forward_pre_hook(engine._forward_pre(-1)))
    for s in swapped:
        s.loaded = True
    engine.release_all()
    engine.bytes_moved = 0
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return engine
