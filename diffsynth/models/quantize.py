"""Dynamic quantization of frozen Linear weights for LoRA training (DiffSynth's ``--quant_options``).

Grammar, as DiffSynth parses it: entries separated by ``;``, each ``<model>:<method>[/<exclude patterns>]``.
The method is what follows the LAST ``:`` (so ``<model>`` may itself be ``model_id:glob``); an entry with
nothing after that ``:`` is skipped; the exclude patterns are a comma list of module names kept in full
precision, each matching a module whose dotted name equals it or ends with ``.<pattern>``.

Methods and their verdicts are DiffSynth's (its ``core/quant/backends``): a method is accepted for training
only if its quantized Linear passes gradients to its input (DiffSynth's ``is_differentiable``), because LoRA
branches sit on top of frozen quantized layers. Weight-only methods pass; methods that also quantize the
activation (``*_w8a8``, ``*_w4a4``, ``*_w4a8``) and torchao's int4 weight-only (tinygemm packing) are refused,
except comfy-kitchen's two W8A8 methods, which DiffSynth declares differentiable (its fp8 one through a
custom backward). Each quantized layer keeps ``nn.Linear`` as a base class so peft and our checks see it.

Quantization here is applied AFTER LoRA injection, to each frozen Linear (a peft layer's ``base_layer``); the
result equals DiffSynth's order (quantize, then inject) because a LoRA layer computes base(x) + lora(x). No
family is named here: the training loop passes the pipeline's models and name mapping.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError

EXTRA = "pip install -e '.[quant]'"


@dataclass(frozen=True)
class Method:
    backend: str            # bitsandbytes | torchao | comfy_kitchen
    label: str
    differentiable: bool    # DiffSynth's capabilities()["is_differentiable"]
    why_not: str = ""       # refusal reason for non-differentiable methods


_ACT = "it also quantizes the activation (a quantize op with no gradient), so no gradient reaches LoRA below it"
METHODS: dict[str, Method] = {
    "bitsandbytes_nf4": Method("bitsandbytes", "4bit, nf4, weight-only", True),
    "bitsandbytes_fp4": Method("bitsandbytes", "4bit, fp4, weight-only", True),
    "torchao_int8_w8a16": Method("torchao", "8bit, int8, weight-only", True),
    "torchao_fp8_w8a16": Method("torchao", "8bit, fp8, weight-only", True),
    "torchao_nvfp4_w4a16": Method("torchao", "W4A16, NVFP4 weight-only", True),
    "torchao_int4_w4a16": Method("torchao", "W4A16, int4 weight-only", False,
                                 "its packed int4 kernel has no backward"),
    "torchao_int8_w8a8": Method("torchao", "W8A8, int8 weight + int8 dynamic activation", False, _ACT),
    "torchao_fp8_w8a8": Method("torchao", "W8A8, fp8 weight + fp8 dynamic activation", False, _ACT),
    "torchao_int4_w4a8": Method("torchao", "W4A8, int4 weight + fp8 dynamic activation", False, _ACT),
    "torchao_mxfp8_w8a8": Method("torchao", "W8A8, MXFP8 microscaling weight + activation", False, _ACT),
    "torchao_mxfp4_w4a4": Method("torchao", "W4A4, MXFP4 microscaling weight + activation", False, _ACT),
    "torchao_nvfp4_w4a4": Method("torchao", "W4A4, NVFP4 weight + activation", False, _ACT),
    "comfy_kitchen_int8_w8a8": Method("comfy_kitchen", "W8A8, int8 weight + int8 dynamic activation "
                                      "(ComfyUI int8_tensorwise)", True),
    "comfy_kitchen_fp8_w8a8": Method("comfy_kitchen", "W8A8, fp8 E4M3 weight + fp8 activation "
                                     "(ComfyUI float8_e4m3fn)", True),
}
PACKAGES = {"bitsandbytes": "bitsandbytes", "torchao": "torchao", "comfy_kitchen": "comfy_kitchen"}
DIST_NAMES = {"bitsandbytes": "bitsandbytes", "torchao": "torchao", "comfy_kitchen": "comfy-kitchen"}
# Methods still usable when a probe fails on this device, offered in the error.
FALLBACK = "bitsandbytes_nf4 or torchao_int8_w8a16"


class QuantError(ConfigError):
    """A ``model.quant_options`` entry that cannot work here; the message names the entry, method and fix."""


@dataclass(frozen=True)
class QuantSpec:
    method: str
    exclude: tuple[str, ...] = ()


def parse_quant_options(text: str | None) -> dict[str, QuantSpec]:
    """``model.quant_options`` -> {model string: QuantSpec}, refusing what DiffSynth refuses."""
    out: dict[str, QuantSpec] = {}
    for entry in (text or "").split(";"):
        if entry == "":
            continue
        model, sep, spec = entry.rpartition(":")
        if sep == "":
            raise QuantError(f"model.quant_options entry {entry!r}: expected <model>:<method>[/<exclude modules>], "
                             "e.g. 'Qwen/Qwen-Image:transformer/diffusion_pytorch_model*.safetensors:bitsandbytes_nf4'")
        if spec == "":
            continue  # DiffSynth skips an entry with an empty method
        method, _, excludes = spec.partition("/")
        check_method(method)
        out[model] = QuantSpec(method, tuple(excludes.split(",")) if excludes else ())
    return out


def check_method(method: str) -> Method:
    """The method, if DiffSynth knows it and it can train; else one line naming it and the alternatives."""
    if method not in METHODS:
        usable = ", ".join(n for n, m in METHODS.items() if m.differentiable)
        raise QuantError(f"model.quant_options: unknown quantization method {method!r}; trainable methods: {usable}")
    m = METHODS[method]
    if not m.differentiable:
        raise QuantError(f"model.quant_options: method {method!r} ({m.label}) is not differentiable, so it cannot be "
                         f"used for training ({m.why_not}; frozen quantized layers must pass gradients to the LoRA "
                         f"branches); use a weight-only method such as bitsandbytes_nf4 or torchao_int8_w8a16")
    return m


def _import_backend(method: str):
    backend = METHODS[method].backend
    try:
        return importlib.import_module(PACKAGES[backend])
    except ImportError as e:
        raise QuantError(f"model.quant_options method {method!r} needs the {DIST_NAMES[backend]} package ({e}); "
                         f"install the optional extra: {EXTRA}") from None


# ---- backends: an fp nn.Linear -> a frozen quantized module that is still an nn.Linear ----------------------

def _bnb_linear(linear: nn.Linear, method: str, device) -> nn.Module:
    bnb = _import_backend(method)
    quant_type = method.rsplit("_", 1)[1]  # nf4 | fp4
    with torch.device("meta"):
        q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=linear.weight.dtype, compress_statistics=True, quant_type=quant_type,
                              quant_storage=torch.uint8)
    # Params4bit quantizes when it is moved to a device
    q.weight = bnb.nn.Params4bit(linear.weight.data.contiguous(), requires_grad=False, compress_statistics=True,
                                 quant_type=quant_type, quant_storage=torch.uint8).to(device)
    if linear.bias is not None:
        q.bias = nn.Parameter(linear.bias.data.to(device), requires_grad=False)
    # On CPUs with AVX512-BF16, bitsandbytes repacks the weight at the first no-grad forward in blocks of 32 rows by
    # `blocksize` columns, and fails on a layer narrower than that (the tiny twins): such a layer keeps the plain kernel.
    if linear.in_features % q.weight.blocksize or linear.out_features % 32:
        q.support_avx512bf16_for_cpu = False
    return q


class TorchaoLinear(nn.Linear):
    """An nn.Linear whose weight is a torchao quantized tensor subclass (marker class)."""


def _torchao_config(method: str):
    _import_backend(method)
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig
    if method == "torchao_int8_w8a16":
        return Int8WeightOnlyConfig(version=2)
    if method == "torchao_fp8_w8a16":
        return Float8WeightOnlyConfig()
    from torchao.prototype.mx_formats.inference_workflow import NVFP4WeightOnlyConfig
    return NVFP4WeightOnlyConfig()


def _torchao_linear(linear: nn.Linear, method: str, device) -> nn.Module:
    from torchao.quantization import quantize_
    with torch.device("meta"):
        q = TorchaoLinear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    q.weight = nn.Parameter(linear.weight.data.to(device), requires_grad=False)
    q.bias = nn.Parameter(linear.bias.data.to(device), requires_grad=False) if linear.bias is not None else None
    quantize_(q, _torchao_config(method))
    return q


class ComfyKitchenLinear(nn.Linear):
    """An nn.Linear whose weight is a comfy-kitchen QuantizedTensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.contiguous())


class ComfyKitchenFP8Linear(ComfyKitchenLinear):
    """fp8 W8A8: the activation is quantized too, so the input gradient is computed by hand from the
    dequantized weight (straight-through), as DiffSynth's comfy-kitchen backend does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _CkFp8.apply(x.contiguous(), self.weight, self.bias)


class _CkFp8(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        from comfy_kitchen.tensor import QuantizedTensor
        x2 = x.detach().reshape(-1, x.shape[-1])
        out = torch.nn.functional.linear(QuantizedTensor.from_float(x2, "TensorCoreFP8Layout"), weight, bias)
        ctx.save_for_backward(weight)
        ctx.x_shape = x.shape
        return out.reshape(*x.shape[:-1], out.shape[-1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (weight,) = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1])
        return torch.mm(g, weight.dequantize().to(g.dtype)).reshape(ctx.x_shape), None, None


def _comfy_kitchen_linear(linear: nn.Linear, method: str, device) -> nn.Module:
    ck = _import_backend(method)
    from comfy_kitchen.tensor import QuantizedTensor
    if torch.version.cuda is None or tuple(int(v) for v in torch.version.cuda.split(".")[:2]) < (13, 0):
        ck.registry.disable("cuda")  # its CUDA kernels are built for CUDA 13; the eager backend runs elsewhere
    w = linear.weight.data.to(device)
    if method == "comfy_kitchen_int8_w8a8":
        # DiffSynth's defaults: per-channel scales, rotation ("convrot") in groups of 256 where they divide
        group = 256
        while group >= 4 and linear.in_features % group:
            group //= 4
        kwargs = {"is_weight": True, "per_channel": True, "convrot": group >= 4, "convrot_groupsize": max(group, 4)}
        qw, cls = QuantizedTensor.from_float(w, "TensorWiseINT8Layout", **kwargs), ComfyKitchenLinear
    else:
        qw, cls = QuantizedTensor.from_float(w, "TensorCoreFP8Layout"), ComfyKitchenFP8Linear
    with torch.device("meta"):
        q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
    q.weight = nn.Parameter(qw, requires_grad=False)
    q.bias = nn.Parameter(linear.bias.data.to(device), requires_grad=False) if linear.bias is not None else None
    return q


_BUILDERS = {"bitsandbytes": _bnb_linear, "torchao": _torchao_linear, "comfy_kitchen": _comfy_kitchen_linear}


def quantized_linear(linear: nn.Linear, method: str, device=None) -> nn.Module:
    """A frozen quantized copy of ``linear`` (kept in ``linear``'s dtype for compute), on ``device``."""
    device = torch.device(device) if device is not None else linear.weight.device
    return _BUILDERS[check_method(method).backend](linear, method, device)


def is_quantized(module: nn.Module) -> bool:
    try:
        import bitsandbytes as bnb
        if isinstance(module, bnb.nn.Linear4bit):
            return True
    except ImportError:
        pass
    return isinstance(module, (TorchaoLinear, ComfyKitchenLinear))


_PROBED: set[tuple[str, str, torch.dtype]] = set()


def probe(method: str, device, dtype: torch.dtype) -> None:
    """Quantize a small Linear and run forward and backward on ``device`` in ``dtype``: a method whose kernels
    do not run here fails now, in one line, not deep inside the first training step (DiffSynth's
    ``check_differentiable`` run on the training device)."""
    device = torch.device(device)
    key = (method, str(device), dtype)
    if key in _PROBED:
        return
    check_method(method)
    _import_backend(method)
    try:
        lin = nn.Linear(256, 64, dtype=dtype, device=device).requires_grad_(False)
        q = quantized_linear(lin, method, device)
        x = torch.randn(4, 256, dtype=dtype, device=device, requires_grad=True)
        (grad,) = torch.autograd.grad(q(x).float().square().sum(), x)
        ok = grad is not None and bool(torch.isfinite(grad).all())
        reason = "" if ok else "no finite gradient reached the input"
    except Exception as e:  # the library's own error for an unsupported device/dtype
        ok, reason = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if not ok:
        where = "a CUDA GPU" if device.type != "cuda" else "a newer GPU or library build"
        raise QuantError(f"model.quant_options method {method!r} does not run on {device} with {dtype} ({reason}): "
                         f"it needs {where}; use {FALLBACK} here")
    _PROBED.add(key)


def _matches(name: str, patterns) -> bool:
    for p in patterns:
        if name == p or name.endswith("." + p) or ("|" in p and re.fullmatch(p, name)):
            return True
    return False


def _is_lora(name: str) -> bool:
    return any(part.startswith("lora_") for part in name.split("."))


def quantize_model(model: nn.Module, spec: QuantSpec, device=None, exclude: list[str] | None = None) -> list[str]:
    """Replace every frozen nn.Linear of ``model`` (a LoRA layer's ``base_layer`` included) by its quantized
    version, except modules matching ``spec.exclude`` or ``exclude`` (already mapped to this model's names).
    Returns the quantized module names (as the user would write them, without ``.base_layer``).
    Trainable Linear weights are an error: quantized weights cannot be trained."""
    patterns = list(exclude if exclude is not None else spec.exclude)
    # modules the model class keeps in full precision (diffusers' _keep_in_fp32_modules, which its own bnb
    # quantizer also leaves alone): their code casts inputs to their first weight's dtype
    keep = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    todo = []
    for name, module in model.named_modules():
        if not name or not isinstance(module, nn.Linear) or is_quantized(module) or _is_lora(name):
            continue
        logical = name[:-len(".base_layer")] if name.endswith(".base_layer") else name
        if _matches(logical, patterns) or any(f".{k}." in f".{logical}." for k in keep):
            continue
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            raise QuantError(f"model.quant_options ({spec.method}) would quantize {logical!r}, which is trained "
                             "fully: quantized weights cannot be trained; train a LoRA on this model instead, or "
                             "list the module in the exclude patterns")
        if module.weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise QuantError(f"model.quant_options: {logical!r} is stored as {module.weight.dtype} (fp8_models?); "
                             "a model is either fp8 or quantized, not both")
        todo.append((name, logical))
    for name, _ in todo:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, quantized_linear(getattr(parent, leaf), spec.method, device))
    return [logical for _, logical in todo]
