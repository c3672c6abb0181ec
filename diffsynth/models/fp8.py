"""fp8 storage for frozen weights (``model.fp8_models``; DiffSynth's ``parse_vram_config``).

Frozen Linear/Conv weights are stored as ``torch.float8_e4m3fn`` (1 byte per value instead of 2 for bf16);
each forward upcasts the weight (and bias) to the computation dtype (bf16) and runs the ordinary op, as
DiffSynth's ``AutoWrappedLinear`` does, except that each tensor also keeps one float32 scale (its absolute
maximum / 448) so small weights keep their precision (measured in tests/test_models_fp8.py). There is no fp8
matmul: this saves memory, not time. The fp8 weights are scaled: never save them as a checkpoint (training saves
only the trainable LoRA/full weights, which stay in the computation dtype).

Use it on a loaded module **after** LoRA has been injected: peft moves a new adapter to the dtype of its base
layer, so LoRA injected into an fp8 layer would become fp8 too (``enable_fp8`` repairs that case by casting
trainable LoRA weights back to the computation dtype). Trainable parameters are never converted.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
_CLASSES: dict[type, type] = {}


def _upcast(self, weight: torch.Tensor) -> torch.Tensor:
    return weight.to(self.fp8_compute_dtype) * self.fp8_scale.to(self.fp8_compute_dtype)


def _fp8_linear_forward(self, x: torch.Tensor) -> torch.Tensor:
    dtype = self.fp8_compute_dtype
    bias = self.bias.to(dtype) if self.bias is not None else None
    return F.linear(x.to(dtype), _upcast(self, self.weight), bias)


def _fp8_conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    dtype = self.fp8_compute_dtype
    return type(self).__mro__[1]._conv_forward(self, x.to(dtype), _upcast(self, weight),
                                                bias.to(dtype) if bias is not None else None)


def _fp8_class(cls: type) -> type:
    """A subclass of ``cls`` (kept so isinstance checks, e.g. peft's, still pass) that upcasts per forward."""
    if cls not in _CLASSES:
        body = {"forward": _fp8_linear_forward} if issubclass(cls, nn.Linear) else {"_conv_forward": _fp8_conv_forward}
        _CLASSES[cls] = type(f"Fp8{cls.__name__}", (cls,), body)
    return _CLASSES[cls]


def _is_lora(name: str) -> bool:
    return any(part.startswith("lora_") for part in name.split("."))


def enable_fp8(module: nn.Module, compute_dtype: torch.dtype = torch.bfloat16,
               layer_types: tuple = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) -> int:
    """Store every frozen Linear/Conv weight of ``module`` in fp8, computing in ``compute_dtype``.

    Returns the number of layers converted. LoRA layers and layers with trainable parameters are left alone.
    Other parameters (norms, embeddings) are cast to ``compute_dtype`` unless trainable.
    """
    converted = 0
    for name, layer in module.named_modules():
        if _is_lora(name) or type(layer) in _CLASSES.values() or not isinstance(layer, layer_types):
            continue
        params = list(layer.parameters(recurse=False))
        if not params or any(p.requires_grad for p in params):
            continue
        # one scale per tensor maps its largest value to fp8's largest (448): small weights (~1e-2) would
        # otherwise sit in e4m3's subnormal range and lose most of their precision
        w = layer.weight.data.float()
        scale = (w.abs().amax() / torch.finfo(FP8).max).clamp(min=1e-12)
        layer.weight.data = (w / scale).to(FP8)
        layer.register_buffer("fp8_scale", scale.reshape(()), persistent=False)
        if layer.bias is not None:
            layer.bias.data = layer.bias.data.to(compute_dtype)
        layer.fp8_compute_dtype = compute_dtype
        layer.__class__ = _fp8_class(type(layer))
        converted += 1
    for name, p in module.named_parameters():
        if p.dtype == FP8 and (p.requires_grad or _is_lora(name)):
            p.data = p.data.to(compute_dtype)  # LoRA injected after enable_fp8 inherited fp8 from its base
        elif p.is_floating_point() and p.dtype != FP8 and not p.requires_grad:
            p.data = p.data.to(compute_dtype)
    return converted


def fp8_entries(fp8_models: str | None) -> set[str]:
    """``model.fp8_models`` (comma list of model entries as written in the model flags) as a set."""
    return {s.strip() for s in (fp8_models or "").split(",") if s.strip()}


def parameter_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())
