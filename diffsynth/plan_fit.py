"""The train stage's device memory per memory mode, activations included, and which cards it fits.

Activations: every block of the DiT, and of the side models the denoiser runs beside it (VACE blocks, a ControlNet,
the Animate adapter's face blocks), runs on the meta device at the recipe's token counts (resolution, frames, batch,
VAE and patch factors, text tokens) with the recipe's trainable weights marked, and autograd's saved tensors are
counted (diffsynth/models/activations.py; blocks called alike are traced once). From that:

- without gradient checkpointing every block keeps what it saved: sum over blocks;
- with it every block keeps only its hidden-state inputs, and the backward rematerialises one block at a time:
  sum of inputs + the largest block's saved tensors;
- with its offload (gradient.use_gradient_checkpointing_offload: the forward runs under autograd's save_on_cpu)
  the kept inputs live in host memory and come back one block at a time: one input + the largest block's saved
  tensors, and the inputs cross the bus twice a step;
- both add the backward's working gradients (2 x the largest block input), the shared timestep/rotary tensors,
  2 x the largest block input for the layers outside the blocks, and the side blocks' hints, held from the side
  model's forward until the DiT block that adds them;
- blocks the forward runs outside the checkpoints (Wan2.2-Animate's face blocks, as DiffSynth runs them) keep what
  they save in every mode;
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


def trained_names(models: list[str], shown: int = 3) -> str:
    """The trained models for a table cell: a long list of sub-modules (Animate-2's 120 dotted names) as a count."""
    if len(models) <= shown:
        return ", ".join(models)
    return f"{len(models)} modules ({', '.join(models[:2])}, ... {models[-1]})"


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


def _trace_chains(entries: dict, side_models: list[str]) -> list[tuple[str, str, int, nn.Module]]:
    """(model, block list, index, block) of every block whose activations a step keeps: the DiT's, then those of the
    side models the denoiser runs beside it (VACE blocks, a ControlNet's, the Animate adapter's face blocks)."""
    from .models.block_swap import block_lists
    return [(model, list_name, i, block) for model in ("dit", *side_models)
            for list_name, blocks in block_lists(entries[model].module) for i, block in enumerate(blocks)]


def _trained_parameters(block: nn.Module, model: str, path: str, full: list[str], lora_model: str | None,
                        lora_targets: dict) -> frozenset[str]:
    """The parameters of block ``path`` of ``model`` that a step trains: all of a model in train.trainable_models,
    a named sub-module of it (DiffSynth's dotted names, ``dit.blocks.0.self_attn.q``), or the LoRA targets' weights
    (standing in for the rank-sized LoRA matrices)."""
    names = [n for n, _ in block.named_parameters()]
    trained = set()
    for name in full:
        if name == model or f"{name}.".startswith(f"{model}.{path}."):
            trained.update(names)
        elif name.startswith(f"{model}.{path}."):
            sub = name[len(f"{model}.{path}."):]
            trained.update(n for n in names if n.startswith(f"{sub}."))
    if model == lora_model:
        trained.update(f"{sub}.weight" for sub, _ in block.named_modules() if f"{path}.{sub}" in lora_targets)
    return frozenset(trained)


def activation_estimate(config, entries: dict, lora_targets: dict, full: list[str], video: bool,
                        side_models: list[str] = ()) -> dict:
    """Per block list: count, saved bytes, input bytes (the largest block of the list); totals with and without
    checkpointing, summed over every block. Blocks of one list that are called alike are traced once."""
    from .models.activations import HIDDEN_INPUTS, saved_tensor_bytes
    from .models.block_shapes import UNCHECKED, block_inputs
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[config.model.torch_dtype]
    size = torch.tensor([], dtype=dtype).element_size()
    tokens = token_counts(config, entries, video)
    batch = config.train.batch_size
    lora_model = config.lora.lora_base_model
    records, traced, lists = [], {}, {}
    for model, list_name, index, block in _trace_chains(entries, list(side_models)):
        inputs = block_inputs(block, batch, tokens["image_tokens"], tokens["text_tokens"], dtype, index=index)
        # a side block's own stream is ``c``; the DiT's hidden states (``x``) it reads are held by the DiT
        hidden = ("c",) if "c" in inputs else HIDDEN_INPUTS
        trained = _trained_parameters(block, model, f"{list_name}.{index}", full, lora_model, lora_targets)
        key = (model, list_name, type(block), trained,
               tuple((n, tuple(p.shape)) for n, p in block.named_parameters()),
               tuple((n, tuple(t.shape)) for n, t in inputs.items() if isinstance(t, torch.Tensor)))
        if key not in traced:
            meta = copy.deepcopy(block).to("meta")
            for n, p in meta.named_parameters():
                p.requires_grad_(n in trained)
            a = saved_tensor_bytes(meta, inputs, hidden)
            # a side block's outputs beyond its stream (the hints the DiT adds later) wait for the DiT
            waiting = max(0, a.output_bytes - a.input_bytes) if model != "dit" else 0
            traced[key] = {"saved_bytes": a.saved_bytes, "input_bytes": a.input_bytes, "waiting_bytes": waiting,
                           "shared_bytes": a.shared_bytes, "checked": type(block).__name__ not in UNCHECKED,
                           "fp8_upcast_bytes": _linear_weight_numel(block) * size if model == "dit" else 0}
        r = traced[key]
        records.append(r)
        row = lists.setdefault(f"{type(block).__name__} ({model}.{list_name})", {"count": 0, "saved_bytes": 0,
                                                                                 "input_bytes": 0})
        row["count"] += 1
        row["saved_bytes"] = max(row["saved_bytes"], r["saved_bytes"])
        row["input_bytes"] = max(row["input_bytes"], r["input_bytes"])
    if not records:
        raise ConfigError(f"the memory plan finds no list of repeated blocks in {type(entries['dit'].module).__name__}")
    checked = [r for r in records if r["checked"]]
    max_in = max(r["input_bytes"] for r in records)
    max_saved = max(r["saved_bytes"] for r in checked)
    # backward gradients, layers outside the blocks, shared tensors, the side blocks' hints
    extra = 2 * max_in + 2 * max_in + max(r["shared_bytes"] for r in records) + sum(r["waiting_bytes"] for r in records)
    # blocks outside the checkpoints keep what they save in every mode
    extra += sum(r["saved_bytes"] for r in records if not r["checked"])
    inputs = sum(r["input_bytes"] for r in checked)
    upcast = [r["fp8_upcast_bytes"] for r in records]
    return {"tokens": tokens, "batch_size": batch, "blocks": lists, "offloaded_input_bytes": inputs,
            "total_bytes": {"no_checkpointing": sum(r["saved_bytes"] for r in checked) + extra,
                            "checkpointing": inputs + max_saved + extra,
                            "checkpointing_offload": max_in + max_saved + extra},
            "fp8_upcast_bytes": {"no_checkpointing": sum(upcast), "checkpointing": max(upcast),
                                 "checkpointing_offload": max(upcast)}}


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
        trained = (f"LoRA r{lora['rank']}" if lora else f"full {trained_names(plan['full_trainable']['models'])}")
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
