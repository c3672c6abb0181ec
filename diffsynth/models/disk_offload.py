"""Disk offload: a DiT's transformer blocks keep their frozen weights in a safetensors file, memory-mapped, and
page them in per block. It is the block-swap engine (block_swap.py) with the host copy replaced by views of the
mapped file: a block's pages are read when its forward (or backward) touches them, and dropped from the
process (``madvise(MADV_DONTNEED)``: they stay in the page cache, not in the process's memory) when it is
released. On a CUDA device the views are copied in per block as block swap does.

API (for ``--offload_models`` disk mode): ``enable_disk_offload(model, path, device)`` before the optimizer is
built; ``write_block_weights(model, path)`` writes the file from loaded weights where the checkpoint's own
layout cannot be mapped (the checkpoint's tensors must be stored in the module's names and dtype).
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .block_swap import BlockSwap, BlockSwapError, _install, _Swapped, swap_chain

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn,
           "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}
PAGE = mmap.PAGESIZE


def write_block_weights(model: nn.Module, path: str | Path) -> Path:
    """The frozen parameters of every block of ``model`` (its names) into a safetensors file."""
    tensors = {f"{name}.{k}": p.detach().to("cpu").contiguous() for name, block in swap_chain(model)
               for k, p in block.named_parameters() if not p.requires_grad}
    save_file(tensors, str(path))
    return Path(path)


def _mapped_tensors(path: Path) -> tuple[mmap.mmap, dict[str, tuple[torch.Tensor, int, int]]]:
    """name -> (view into the mapped file, byte start, byte end) for every tensor of a safetensors file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    (n,) = struct.unpack("<Q", mm[:8])
    header = json.loads(mm[8:8 + n])
    base, out = 8 + n, {}
    with warnings.catch_warnings():  # the views are read-only: frozen weights are never written
        warnings.simplefilter("ignore", UserWarning)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = _DTYPES[info["dtype"]]
            start, end = (base + o for o in info["data_offsets"])
            numel = (end - start) // torch.tensor([], dtype=dtype).element_size()
            t = torch.frombuffer(mm, dtype=dtype, count=numel, offset=start).view(info["shape"]) if numel else \
                torch.empty(info["shape"], dtype=dtype)
            out[name] = (t, start, end)
    return mm, out


def enable_disk_offload(model: nn.Module, path: str | Path, device: torch.device | str = "cpu",
                        blocks: int | None = None) -> BlockSwap:
    """Map the frozen block weights of ``model`` from ``path`` (written by write_block_weights, or any file with
    the same names) and page them in per block. ``blocks``: the last N blocks (default all). Works on a model
    built on the meta device: its block parameters are replaced by the mapped views."""
    device = torch.device(device)
    mm, mapped = _mapped_tensors(Path(path))
    chain = swap_chain(model)
    n = len(chain) if blocks is None else blocks
    if not 0 < n <= len(chain):
        raise BlockSwapError(f"disk offload: {n} blocks is not between 1 and the {len(chain)} blocks of "
                             f"{type(model).__name__}")
    first = len(chain) - n
    swapped, ranges = [], {}
    for name, block in chain[first:]:
        params, host, spans = [], [], []
        for mod_name, module in block.named_modules():
            for k, p in list(module._parameters.items()):
                if p is None or p.requires_grad:
                    continue
                key = f"{name}.{mod_name}.{k}" if mod_name else f"{name}.{k}"
                if key not in mapped:
                    raise BlockSwapError(f"disk offload: {path} has no tensor {key!r}; write it with "
                                         "write_block_weights(model, path)")
                view, start, end = mapped[key]
                if tuple(view.shape) != tuple(p.shape):
                    raise BlockSwapError(f"disk offload: {key} is {tuple(view.shape)} in {path}, the model has "
                                         f"{tuple(p.shape)}")
                new = nn.Parameter(view, requires_grad=False)
                module._parameters[k] = new
                params.append(new)
                host.append(view)
                spans.append((start, end))
        if not params:
            raise BlockSwapError(f"disk offload: block {name} has no frozen weights (the model is fully trained)")
        s = _Swapped(name, block, params, host, sum(h.numel() * h.element_size() for h in host))
        swapped.append(s)
        lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
        ranges[id(s)] = (lo // PAGE * PAGE, -(-hi // PAGE) * PAGE)

    def drop_pages(s: _Swapped) -> None:
        start, end = ranges[id(s)]
        mm.madvise(mmap.MADV_DONTNEED, start, min(end, len(mm)) - start)

    engine = BlockSwap(model, device, swapped)
    engine.on_release = drop_pages
    engine.mapping = mm  # keeps the map open as long as the engine lives
    return _install(engine, chain, first)
