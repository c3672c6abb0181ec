"""Activation memory of one transformer block, counted from the block itself: the block runs on the meta device
(no memory, no compute) with the tensor shapes of a training step, and every tensor autograd saves for the
backward is recorded once (views and repeated saves share a storage). Parameters are weights, counted elsewhere;
the timestep embedding and rotary tables are shared by all blocks and counted once.

Attention is counted as the fused kernels that training uses run it (flash / memory-efficient SDPA on CUDA, the
flash kernel on CPU): they save q, k, v, the output and one float32 log-sum-exp per query and head, never the
tokens x tokens score matrix.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn


class _FusedAttention(torch.autograd.Function):
    """What a fused SDPA keeps for backward, without computing anything (meta tensors)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(q.shape[:-1] + v.shape[-1:])
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: the meta trace only counts what forward saved
        raise NotImplementedError


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return _FusedAttention.apply(query, key, value)


@contextlib.contextmanager
def fused_attention_on_meta():
    original = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = _fused_sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


@dataclass
class BlockActivations:
    saved_bytes: int    # what one block keeps for backward (its inputs included), shared inputs excluded
    input_bytes: int    # the block's hidden-state inputs: what gradient checkpointing keeps per block
    output_bytes: int   # its outputs (the next block's inputs)
    shared_bytes: int   # timestep embedding and rotary tables, held once for all blocks
    retained_bytes: int  # what the forward adds and keeps: saved tensors and outputs, minus the inputs


# the blocks' hidden-state arguments (Z-Image's blocks call theirs x): they carry the gradient between blocks
HIDDEN_INPUTS = ("hidden_states", "encoder_hidden_states", "x")


def saved_tensor_bytes(block: nn.Module, kwargs: dict, grad_inputs=HIDDEN_INPUTS) -> BlockActivations:
    """Run ``block(**kwargs)`` with gradients and count the bytes autograd saves. The hidden-state inputs require
    grad, as in any block after the first one of a LoRA-trained DiT; on the meta device attention is fused."""
    kwargs = dict(kwargs)
    for name in grad_inputs:
        if isinstance(kwargs.get(name), torch.Tensor):
            kwargs[name] = kwargs[name].detach().requires_grad_(True)
    params = {_key(p) for p in block.parameters()} | {_key(b) for b in block.buffers()}
    flat = [t for v in kwargs.values() for t in (v if isinstance(v, (tuple, list)) else [v]) if isinstance(t, torch.Tensor)]
    hidden = {_key(kwargs[n]) for n in grad_inputs if isinstance(kwargs.get(n), torch.Tensor)}
    shared = {_key(t): t.untyped_storage().nbytes() for t in flat if _key(t) not in hidden}
    saved: dict[int, int] = {}

    def pack(t):
        k = _key(t)
        if k not in params and k not in shared:
            saved[k] = t.untyped_storage().nbytes()
        return t

    on_meta = any(t.device.type == "meta" for t in flat)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            (fused_attention_on_meta() if on_meta else contextlib.nullcontext()):
        out = block(**kwargs)
    outs = [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]
    kept = dict(saved)
    kept.update({_key(t): t.untyped_storage().nbytes() for t in outs})
    return BlockActivations(retained_bytes=sum(v for k, v in kept.items() if k not in hidden),saved_bytes=sum(saved.values()),
                            input_bytes=sum(kwargs[n].untyped_storage().nbytes() for n in grad_inputs
                                            if isinstance(kwargs.get(n), torch.Tensor)),
                            output_bytes=sum(t.untyped_storage().nbytes() for t in outs),
                            shared_bytes=sum(shared.values()))
