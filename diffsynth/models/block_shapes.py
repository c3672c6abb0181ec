"""What one transformer block of each DiT class is called with during training, as tensors of the right shapes:
the memory plan runs a block on the meta device with these to count the activations it saves, and the benchmarks run
a real-width block with them. Each family registers its block classes' input builders and its text-token counts
(``Family.block_inputs``, ``Family.text_tokens``); this module names no family.

Token counts come from the caller (resolution, frames, VAE and patch factors); the text-token counts are assumptions
about the prompts, stated by each family so the plan can print them.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

BUILDERS: dict[str, Callable] = {}      # block class name -> builder(block, batch, image, text, rand, index) -> kwargs
TEXT_TOKENS: dict[str, Callable] = {}   # DiT class name -> text tokens it attends to (dit -> int)
REFERENCE_IMAGE_INPUTS: set[str] = set()  # extra inputs whose images join the image tokens (one image's worth each)
UNCHECKED: set[str] = set()  # block class names the forward runs outside gradient checkpoints


def register(builders: dict, text_tokens: dict, reference_inputs=(), unchecked=()) -> None:
    """Add a family's block input builders, text-token counts, reference-image inputs and unchecked block classes
    (the family registry)."""
    BUILDERS.update(builders)
    TEXT_TOKENS.update(text_tokens)
    REFERENCE_IMAGE_INPUTS.update(reference_inputs)
    UNCHECKED.update(unchecked)


def text_tokens(dit: nn.Module) -> int:
    count = TEXT_TOKENS.get(type(dit).__name__)
    return count(dit) if count is not None else 512


def linear_in(module: nn.Module) -> int:
    return next(m for m in module.modules() if isinstance(m, nn.Linear)).in_features


def block_inputs(block: nn.Module, batch: int, image_tokens: int, txt_tokens: int, dtype: torch.dtype,
                 device="meta", generator: torch.Generator | None = None, index: int = 0) -> dict:
    """Keyword arguments for ``block(**kwargs)``: hidden states of ``image_tokens`` (video tokens for video DiTs),
    ``txt_tokens`` of text context, the timestep embedding and the rotary tables, as the DiT passes them.
    ``index`` is the block's position in its list (a Z-Image ControlNet block receives the hints stacked so far)."""
    name = type(block).__name__
    if name not in BUILDERS:
        raise KeyError(f"no block input table for {name}")

    def rand(*shape, dt=dtype):
        if device == "meta":
            return torch.empty(*shape, dtype=dt, device="meta")
        return torch.randn(*shape, dtype=dt, device=device, generator=generator)
    return BUILDERS[name](block, batch, image_tokens, txt_tokens, rand, index)
