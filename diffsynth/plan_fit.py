"""The train stage's device memory per memory mode, activations included, and which cards it fits.

Activations: one block of each block class of the DiT runs on the meta device at the recipe's token counts
(resolution, frames, batch, VAE and patch factors, text tokens) with the recipe's trainable weights marked, and
autograd's saved tensors are counted (diffsynth/models/activations.py). From that:

- without gradient checkpointing every block keeps what it saved: sum over blocks;
- with it every block keeps only its hidden-state inputs, and the backward rematerialises one block at a time:
  sum of inputs + the largest block's saved tensors;
- with its offload (gradient.use_gradient_checkpointing_offload: the forward runs under autograd's save_on_cpu)
  the kept inputs live in host memory and come back one block at a time: one input + the largest block's saved
  tensors, and the inputs cross the bus twice a step;
- both add the backward's working gradients (2 x the largest block input), the shared timestep/rotary tensors,
  and 2 x the largest block input for the layers outside the blocks;
- an fp8 DiT upcasts each weight per forward, and autograd keeps that copy for the input gradient: the blocks'
  Linear weights in model.torch_dtype, for every block without checkpointing, for one with it.

Modes (each evaluated; the fit columns take the first that fits along LADDER, cheapest first):
encoder cache, gradient checkpointing (and its offload), fp8 / int8 / nf4 DiT base, block swap N, model + optimizer
CPU offload.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from .errors import ConfigError

GIB = 2 ** 30
CARDS = (24, 16, 12)
RESERVE_BYTES = GIB  # CUDA context and allocator fragmentation: a card of N GB holds N GiB - 1 GiB of tensors
NF4_GROUP = 64       # bitsandbytes nf4: 4 bits per weight plus one float32 absmax per 64 weights
FIT_ASSUMPTIONS = [
    "activations: the real blocks traced on the meta device at the recipe's resolution, frames and batch; fused "
    "attention (flash / memory-efficient SDPA: q, k, v, output and log-sum-exp saved, no score matrix); LoRA's "
    "rank-sized intermediates ignored",
    "text tokens: Qwen-Image 256 (a long caption), FLUX 512 and Wan 512 (padded), Wan2.1 I2V + 257 CLIP tokens, Z-Image 256 (the prompt's own tokens); "
    "a reference image (edit, Kontext) adds one image's tokens (the family's reference_image_inputs)",
    "a card of N GB holds N GiB minus 1 GiB (CUDA context, fragmentation) of tensors",
    "int8 weight-only: 1 byte per frozen Linear weight + a bf16 scale per output row; nf4: 0.5 byte + a float32 "
    "absmax per 64 weights (bitsandbytes without double quantisation); other parameters in model.torch_dtype",
    "block swap N: the last N blocks' frozen weights on the host, two blocks in flight on the device; transfer "
    "per step = 2 x swapped bytes (forward and backward), host to device",
    "model + optimizer CPU offload: two blocks of weights and no optimizer state on the device; transfer per step "
    "= 2 x the DiT's weights + the trainable weights and their gradients",
    "checkpointing offload: the blocks' kept inputs in host memory; transfer per step = 2 x their bytes",
    "not modelled: sample rendering at save points (VAE decoding), DDP buckets",
]


# ----------------------------------------------------------------------------------------------- tokens

def _cfg(module: nn.Module) -> dict:
    return dict(getattr(module, "config", {}) or {})


def token_counts(config, entries: dict, video: bool) -> dict:
    """Image (video) tokens and text tokens one sample gives the DiT at the recipe's resolution."""
    from .data.dataset import split_keys
    from .models.block_shapes import REFERENCE_IMAGE_INPUTS, text_tokens
    dit = entries["dit"].module
    r = config.resolution
    if r.height and r.width:
        height, width = r.height, r.width
    else:  # dynamic resolution: the largest square within max_pixels
        height = width = int(math.isqrt(r.max_pixels))
    vae = _cfg(entries["vae"].module) if "vae" in entries else {}
    spatial = vae.get("scale_factor_spatial") or 2 ** (len(vae.get("block_out_channels") or vae.get("dim_mult")
                                                           or [0] * 4) - 1)
    temporal = vae.get("scale_factor_temporal") or 2 ** sum(vae.get("temperal_downsample") or [])
    d = _cfg(dit)
    patch = d.get("patch_size", 1)
    if isinstance(patch, (list, tuple)):  # a 3-D patch embedding: (frames, rows, columns)
        pt, ps = patch[0], patch[-1]
    elif d.get("all_patch_size"):  # 2-D patches cut inside the DiT, one size per patch embedder: the first
        pt, ps = 1, d["all_patch_size"][0]
    else:  # latents packed into channels: in_channels = latent channels x p x p
        latent = vae.get("z_dim") or vae.get("latent_channels") or d.get("in_channels")
        pt, ps = 1, max(1, int(math.isqrt(max(1, d.get("in_channels", latent) // latent))))
    frames = r.num_frames if video else 1
    latent_frames = (frames - 1) // temporal + 1 if video else 1
    per_image = (latent_frames // pt) * (height // spatial // ps) * (width // spatial // ps)
    references = sum(1 for x in split_keys(config.model.extra_inputs or "") if x in REFERENCE_IMAGE_INPUTS)
    return {"height": height, "width": width, "frames": frames, "latent_frames": latent_frames,
            "vae_factor": spatial, "patch": ps, "image_tokens": per_image * (1 + references),
            "reference_images": references, "text_tokens": text_tokens(dit)}


# ------------------------------------------------------------------------------------------ activations

def _linear_weight_numel(block: nn.Module) -> int:
    return sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Linear))


def activation_estimate(config, entries: dict, lora_targets: dict, full: list[str], video: bool) -> dict:
    """Per block class: count, saved bytes, input bytes; totals with and without checkpointing."""
    from .models.activations import saved_tensor_bytes
    from .models.block_shapes import block_inputs
    from .models.block_swap import swap_chain
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[config.model.torch_dtype]
    size = torch.tensor([], dtype=dtype).element_size()
    dit = entries["dit"].module
    tokens = token_counts(config, entries, video)
    batch = config.train.batch_size
    classes: dict[str, dict] = {}
    for name, block in swap_chain(dit):
        cls = type(block).__name__
        if cls in classes:
            classes[cls]["count"] += 1
            continue
        meta = copy.deepcopy(block).to("meta").requires_grad_(False)
        if "dit" in full:
            meta.requires_grad_(True)
        elif config.lora.lora_base_model == "dit":
            for sub, module in meta.named_modules():
                if f"{name}.{sub}" in lora_targets:
                    module.weight.requires_grad_(True)
        a = saved_tensor_bytes(meta, block_inputs(meta, batch, tokens["image_tokens"], tokens["text_tokens"], dtype))
        classes[cls] = {"count": 1, "first": name, "saved_bytes": a.saved_bytes, "input_bytes": a.input_bytes,
                        "shared_bytes": a.shared_bytes, "fp8_upcast_bytes": _linear_weight_numel(block) * size}
    if not classes:
        raise ConfigError(f"the memory plan finds no list of repeated blocks in {type(dit).__name__}")
    c = classes.values()
    max_in = max(x["input_bytes"] for x in c)
    extra = 2 * max_in + 2 * max_in + max(x["shared_bytes"] for x in c)  # backward gradients, outside layers, shared
    no_gc = sum(x["count"] * x["saved_bytes"] for x in c) + extra
    inputs = sum(x["count"] * x["input_bytes"] for x in c)
    gc = inputs + max(x["saved_bytes"] for x in c) + extra
    gc_offload = max_in + max(x["saved_bytes"] for x in c) + extra
    return {"tokens": tokens, "batch_size": batch, "blocks": classes, "offloaded_input_bytes": inputs,
            "total_bytes": {"no_checkpointing": no_gc, "checkpointing": gc, "checkpointing_offload": gc_offload},
            "fp8_upcast_bytes": {"no_checkpointing": sum(x["count"] * x["fp8_upcast_bytes"] for x in c),
                                 "checkpointing": max(x["fp8_upcast_bytes"] for x in c),
                                 "checkpointing_offload": max(x["fp8_upcast_bytes"] for x in c)}}


# ---------------------------------------------------------------------------------------------- modes

@dataclass(frozen=True)
class Mode:
    cache: bool = True
    checkpointing: bool = False
    offload_checkpoints: bool = False  # gradient.use_gradient_checkpointing_offload
    base: str = "bf16"          # bf16 (model.torch_dtype) | fp8 | int8 | nf4: how the frozen DiT is stored
    swap: int = 0               # block swap N (-1: the smallest N that fits)
    cpu_offload: bool = False   # model + optimizer CPU offload

    def name(self) -> str:
        parts = ["encoder cache" if self.cache else "online encoders"]
        if self.checkpointing:
            parts.append("checkpointing offload" if self.offload_checkpoints else "checkpointing")
        if self.base != "bf16":
            parts.append(f"{self.base} DiT")
        if self.swap:
            parts.append(f"swap {self.swap}")
        if self.cpu_offload:
            parts.append("model+optimizer CPU offload")
        return " + ".join(parts)


# cheapest first: what costs nothing, then compute (recompute), then precision, then transfers
LADDER = (Mode(), Mode(checkpointing=True), Mode(checkpointing=True, base="fp8"),
          Mode(checkpointing=True, base="fp8", swap=-1),
          Mode(checkpointing=True, offload_checkpoints=True, base="fp8", swap=-1), Mode(checkpointing=True, base="nf4"),
          Mode(checkpointing=True, base="nf4", swap=-1), Mode(checkpointing=True, cpu_offload=True))
EVALUATED = (Mode(cache=False), Mode(cache=False, checkpointing=True), Mode(checkpointing=True, base="int8"),
             Mode(checkpointing=True, base="int8", swap=-1))


def frozen_block_bytes(block: nn.Module, base: str, dtype_bytes: int) -> int:
    """The (base, untrained) weights of ``block`` stored as ``base``: Linear weights in the quantised format, the
    other parameters in model.torch_dtype. The plan's modules carry no LoRA, so every parameter is a base weight."""
    total = 0
    linear_weights = {id(m.weight): m for m in block.modules() if isinstance(m, nn.Linear)}
    for p in block.parameters():
        m = linear_weights.get(id(p))
        if m is None or base == "bf16":
            total += p.numel() * dtype_bytes
        elif base == "fp8":
            total += p.numel() + 4
        elif base == "int8":
            total += p.numel() + 2 * m.out_features
        elif base == "nf4":
            total += p.numel() // 2 + 4 * math.ceil(p.numel() / NF4_GROUP)
    return total


def _dit_bytes(dit: nn.Module, base: str, dtype_bytes: int, trained: bool) -> int:
    if base == "bf16" or trained:
        return sum(p.numel() * dtype_bytes for p in dit.parameters())
    return frozen_block_bytes(dit, base, dtype_bytes)


def evaluate_modes(plan: dict, entries: dict, dtype_bytes: int, activations: dict, dit_trained: bool) -> list[dict]:
    """Every mode of LADDER and EVALUATED: device bytes by part, the total, the transfer per step."""
    from .models.block_swap import swap_chain
    dit = entries["dit"].module
    chain = swap_chain(dit)
    block_bytes = {}
    for base in ("bf16", "fp8", "int8", "nf4"):
        per_class = {}
        for _, b in chain:
            if type(b) not in per_class:
                per_class[type(b)] = frozen_block_bytes(b, base, dtype_bytes)
        block_bytes[base] = [per_class[type(b)] for _, b in chain]
    dit_bytes = {base: _dit_bytes(dit, base, dtype_bytes, dit_trained) for base in block_bytes}
    stages = {"cached": plan["modes"]["cached"]["train"], "online": plan["modes"]["online"]["train"]}
    rows = []

    def row(mode: Mode) -> dict | None:
        if dit_trained and (mode.base != "bf16" or mode.swap):
            return None  # trained weights are never quantised, and block swap needs frozen weights
        stage = stages["cached" if mode.cache else "online"]
        others = stage["weights_bytes"] - plan["models"]["dit"]["bytes"]
        dit_dev = dit_bytes[mode.base]
        transfer = 0
        if mode.swap:
            swapped = sum(block_bytes[mode.base][-mode.swap:])
            dit_dev = dit_dev - swapped + min(mode.swap, 2) * max(block_bytes[mode.base][-mode.swap:])
            transfer = 2 * swapped
        optimizer = stage["optimizer_bytes"]
        if mode.cpu_offload:
            dit_dev = 2 * max(block_bytes["bf16"])
            transfer = 2 * dit_bytes[mode.base] + 2 * stage["trainable_bytes"]
            optimizer = 0
        gc = ("checkpointing_offload" if mode.offload_checkpoints else "checkpointing") if mode.checkpointing \
            else "no_checkpointing"
        act = activations["total_bytes"][gc] + (activations["fp8_upcast_bytes"][gc] if mode.base == "fp8" else 0)
        if mode.offload_checkpoints:
            transfer += 2 * activations["offloaded_input_bytes"]
        parts = {"weights": others + dit_dev, "lora": stage["lora_bytes"], "gradients": stage["gradient_bytes"],
                 "optimizer": optimizer, "activations": act}
        total = sum(parts.values())
        return {"mode": mode.name(), "cache": mode.cache, "checkpointing": mode.checkpointing, "base": mode.base,
                "offload_checkpoints": mode.offload_checkpoints, "blocks_to_swap": mode.swap, "cpu_offload": mode.cpu_offload, "device_bytes": parts,
                "total_bytes": total, "transfer_bytes_per_step": transfer,
                "fits": {str(c): total <= c * GIB - RESERVE_BYTES for c in CARDS}}

    def smallest_swap(mode: Mode, card: int) -> dict | None:
        for n in range(len(chain) + 1):  # 0: the mode without swap may fit already
            r = row(replace(mode, swap=n))
            if r is None or r["total_bytes"] <= card * GIB - RESERVE_BYTES:
                return r
        return row(replace(mode, swap=len(chain)))

    fit = {}
    for card in CARDS:
        fit[str(card)] = None
        for mode in LADDER:
            r = smallest_swap(mode, card) if mode.swap == -1 else row(mode)
            if r is None:
                continue
            if r not in rows:
                rows.append(r)
            if r["fits"][str(card)] and fit[str(card)] is None:
                fit[str(card)] = r["mode"]
    for mode in EVALUATED:
        r = smallest_swap(mode, CARDS[-1]) if mode.swap == -1 else row(mode)
        if r is not None and r not in rows:
            rows.append(r)
    return rows, fit


# --------------------------------------------------------------------------------------------- printing

def gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def format_modes(plan: dict) -> list[str]:
    """Markdown lines: the activation estimate, then every evaluated mode with its device bytes and fits."""
    a = plan.get("activations")
    if not a:
        return []
    t = a["tokens"]
    lines = ["", f"Activations at {t['width']}x{t['height']}" + (f", {t['frames']} frames" if t["frames"] > 1 else "")
             + f", batch {a['batch_size']}: {t['image_tokens']} image tokens + {t['text_tokens']} text tokens per "
             "sample. GiB = 2^30 bytes.", "",
             "| block | count | saved per block (no checkpointing) GiB | input per block GiB |", "|---|---:|---:|---:|"]
    for cls, b in a["blocks"].items():
        lines.append(f"| {cls} | {b['count']} | {gib(b['saved_bytes'])} | {gib(b['input_bytes'])} |")
    tb = a["total_bytes"]
    lines += ["", f"Activation peak: {gib(tb['no_checkpointing'])} GiB without gradient checkpointing, "
                  f"{gib(tb['checkpointing'])} GiB with it, {gib(tb['checkpointing_offload'])} GiB with its offload "
                  f"({gib(a['offloaded_input_bytes'])} GiB of block inputs in host memory).", "",
              "| train-stage mode | weights | LoRA+grads+optimizer | activations | total GiB | transfer/step GB | "
              + " | ".join(f"{c} GB" for c in CARDS) + " |",
              "|---|---:|---:|---:|---:|---:|" + "---|" * len(CARDS)]
    for r in plan["memory_modes"]:
        d = r["device_bytes"]
        fits = " | ".join("fits" if r["fits"][str(c)] else "-" for c in CARDS)
        lines.append(f"| {r['mode']} | {gib(d['weights'])} | {gib(d['lora'] + d['gradients'] + d['optimizer'])} | "
                     f"{gib(d['activations'])} | {gib(r['total_bytes'])} | {r['transfer_bytes_per_step'] / 1e9:.1f} | "
                     f"{fits} |")
    lines += ["", "Cheapest mode that fits: " + "; ".join(f"{c} GB: {plan['fit'][str(c)] or 'none'}" for c in CARDS)
              + "."]
    return lines


def _fit_cell(plan: dict, card: int) -> str:
    name = plan["fit"].get(str(card))
    if not name:
        return "none"
    row = next(r for r in plan["memory_modes"] if r["mode"] == name)
    cell = f"{name} ({gib(row['total_bytes'])})"
    if row["transfer_bytes_per_step"]:
        cell += f", moves {row['transfer_bytes_per_step'] / 1e9:.1f} GB/step"
    return cell


def format_fit_summary(rows: list[tuple[str, dict]]) -> str:
    """One line per params file: activations and the cheapest mode fitting each card (GiB in brackets)."""
    lines = ["| preset | trained | tokens (image+text) x batch | activations GiB, no ckpt / ckpt | "
             + " | ".join(f"fits {c} GB" for c in CARDS) + " |",
             "|---|---|---|---:|" + "---|" * len(CARDS)]
    for name, plan in rows:
        lora = plan["lora"]
        trained = (f"LoRA r{lora['rank']}" if lora else f"full {', '.join(plan['full_trainable']['models'])}")
        a = plan["activations"]
        if not a:
            lines.append(f"| {name} | {trained} | - | - | " + " | ".join("-" for _ in CARDS) + " |")
            continue
        t, tb = a["tokens"], a["total_bytes"]
        shape = f"{t['width']}x{t['height']}" + (f"x{t['frames']}f" if t["frames"] > 1 else "")
        lines.append(f"| {name} | {trained} | {shape}: {t['image_tokens']}+{t['text_tokens']} x {a['batch_size']} | "
                     f"{gib(tb['no_checkpointing'])} / {gib(tb['checkpointing'])} | "
                     + " | ".join(_fit_cell(plan, c) for c in CARDS) + " |")
    return "\n".join(lines) + "\n"
