"""DoRA, LoHa and LoKr adapters beside LoRA: their tensor names, checkpoints and export formats (pure functions that
training and export both use; a family passes its own converters in through its spec, as in ``lora_names``).

peft trains them (``LoraConfig(use_dora=True)``, ``LoHaConfig``, ``LoKrConfig``); the names are peft's, which are
LyCORIS's and what ComfyUI's loader reads (``comfy/weight_adapter/loha.py``, ``lokr.py``):

* ``dora``  ``lora_A``, ``lora_B`` and ``lora_magnitude_vector`` (m, one per output row): ``W' = m * V / ||V||`` with
            ``V = W + B @ A`` and the norm over each row.
* ``loha``  ``hada_w1_a`` (out, r), ``hada_w1_b`` (r, in), ``hada_w2_a``, ``hada_w2_b``: ``dW = (w1a @ w1b) * (w2a @ w2b)``.
* ``lokr``  ``lokr_w1`` or ``lokr_w1_a @ lokr_w1_b``, ``lokr_w2`` or ``lokr_w2_a @ lokr_w2_b``: ``dW = kron(w1, w2)``.

The intermediate form is ``{module: {slot: tensor}}`` in the loaded model's module names with the adapter's scale
``alpha/rank`` folded into the first factor (B, w1a, w1), so every file written from it has scale 1.
"""
from __future__ import annotations

import re

import torch

from .lora_names import PREFIXES, LoraFormatError, is_lora_key, kohya_name, strip_prefix

ADAPTERS = ("lora", "dora", "loha", "lokr")
SLOTS = {"dora": ("lora_A", "lora_B", "lora_magnitude_vector"),
         "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
         "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")}
# the factor the scale is folded into (one per module: the first that exists)
FOLD = {"dora": ("lora_B",), "loha": ("hada_w1_a",), "lokr": ("lokr_w1", "lokr_w1_a")}
ADAPTER_KEY = re.compile(r"^(?P<module>.+?)\.(?P<slot>hada_w[12]_[ab]|lokr_w[12](?:_[ab])?|lora_magnitude_vector"
                         r"|dora_scale|lora_A|lora_B)(?:\.default)?(?:\.weight)?$")
Adapters = dict[str, dict[str, torch.Tensor]]


def adapter_scale(config) -> float:
    """peft's scale of every adapter kind: ``lora.lora_alpha / lora.lora_rank`` (1 when alpha is unset)."""
    lora = config.lora
    return (lora.lora_alpha if lora.lora_alpha is not None else lora.lora_rank) / lora.lora_rank


def is_adapter_key(key: str) -> bool:
    """A tensor of any adapter file (LoRA included)."""
    return is_lora_key(key) or ADAPTER_KEY.match(key) is not None


def kind_of(state: dict) -> str:
    """Which adapter a state dict holds: ``lora`` unless a DoRA/LoHa/LoKr-only tensor is in it."""
    for key in state:
        m = ADAPTER_KEY.match(key)
        if m:
            slot = m.group("slot")
            if slot.startswith("hada_"):
                return "loha"
            if slot.startswith("lokr_"):
                return "lokr"
            if slot in ("lora_magnitude_vector", "dora_scale"):
                return "dora"
    return "lora"


def adapter_modules(state: dict[str, torch.Tensor], kind: str, scale: float = 1.0) -> Adapters:
    """``{module: {slot: tensor}}`` of a state dict of ``kind`` (training parameters ``<m>.<slot>.default[.weight]``,
    checkpoints, the diffusers/peft export), ``scale`` folded in; keys of no module (``.alpha``) are left out."""
    out: Adapters = {}
    for key, value in state.items():
        m = ADAPTER_KEY.match(key)
        if key.endswith(".alpha"):
            continue
        if not m or m.group("slot") not in SLOTS[kind]:
            raise LoraFormatError(f"{key!r} is not a {kind} tensor (expected <module>.<{'|'.join(SLOTS[kind])}>): "
                                  "is the file of another adapter than lora.adapter?")
        out.setdefault(strip_prefix(m.group("module")), {})[m.group("slot")] = value
    for name, slots in out.items():
        missing = _missing(kind, slots)
        if missing:
            raise LoraFormatError(f"{kind} module {name!r} lacks {missing}: the file is incomplete")
        if scale != 1.0:
            fold = next(s for s in FOLD[kind] if s in slots)
            slots[fold] = (slots[fold].float() * scale).to(slots[fold].dtype)
    return dict(sorted(out.items()))


def _missing(kind: str, slots: dict) -> list[str]:
    if kind == "lokr":
        return [f"{w} (or {w}_a and {w}_b)" for w in ("lokr_w1", "lokr_w2")
                if w not in slots and not (f"{w}_a" in slots and f"{w}_b" in slots)]
    return [s for s in SLOTS[kind] if s not in slots]


def delta(kind: str, slots: dict[str, torch.Tensor], shape: tuple) -> torch.Tensor:
    """The weight update ``dW`` of one module (scale already folded), float32; DoRA's is ``B @ A`` before the
    magnitude is applied."""
    s = {k: v.float() for k, v in slots.items()}
    if kind == "dora":
        return s["lora_B"] @ s["lora_A"]
    if kind == "loha":
        return (s["hada_w1_a"] @ s["hada_w1_b"]) * (s["hada_w2_a"] @ s["hada_w2_b"])
    w1 = s["lokr_w1"] if "lokr_w1" in s else s["lokr_w1_a"] @ s["lokr_w1_b"]
    w2 = s["lokr_w2"] if "lokr_w2" in s else s["lokr_w2_a"] @ s["lokr_w2_b"]
    return torch.kron(w1, w2).reshape(shape)


def rank_of(kind: str, slots: dict) -> int | None:
    """The dimension ComfyUI divides ``.alpha`` by (None: it applies no scale, LoKr without a decomposed factor)."""
    if kind == "dora":
        return slots["lora_A"].shape[0]
    if kind == "loha":
        return slots["hada_w1_b"].shape[0]
    # ComfyUI: w2's decomposition wins over w1's
    return slots["lokr_w2_b"].shape[0] if "lokr_w2_b" in slots else \
        slots["lokr_w1_b"].shape[0] if "lokr_w1_b" in slots else None


def checkpoint_state(state: dict[str, torch.Tensor], kind: str, scale: float, prefix: str = "") -> dict:
    """A training checkpoint of a DoRA/LoHa/LoKr run: the trained tensors under ``prefix`` in peft's saved names
    (``<module>.hada_w1_a``, ``<module>.lora_A.weight``), scale folded in; other keys unchanged. DiffSynth-Studio
    loads no such adapter, so its DiT names are not used."""
    adapter = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and is_adapter_key(k)}
    out = {k: v for k, v in state.items() if not (k.startswith(prefix) and is_adapter_key(k))}
    out.update({f"{prefix}{k}": v for k, v in peft_names(adapter_modules(adapter, kind, scale)).items()})
    return out


def peft_names(modules: Adapters, prefix: str = "") -> dict[str, torch.Tensor]:
    """peft's ``get_peft_model_state_dict`` names (what ``set_peft_model_state_dict`` and diffusers'
    ``load_lora_adapter`` read)."""
    return {f"{prefix}{n}.{slot}{'.weight' if slot in ('lora_A', 'lora_B') else ''}": t.contiguous()
            for n, slots in modules.items() for slot, t in slots.items()}


def original_renames(names: list[str], spec, shapes: dict[str, tuple]) -> dict[str, str]:
    """``{loaded module: original module}`` for modules the family's original checkpoint keeps whole (a pure
    rename). Found by sending a probe LoRA through the family's own ``lora_to_original``: each module gets rank 1
    and B = its unique row ids; a module is kept whole when one original module receives exactly its rows, in order.
    A module fused with others (FLUX q/k/v) or reordered is refused by name: a LoHa/LoKr/DoRA update of a part
    cannot be written as one of the fused weight."""
    if spec is None or not spec.lora_to_original:
        return {n: n for n in names}
    probe, start = {}, 0
    for i, name in enumerate(names):
        out_f, in_f = shapes[name]
        probe[name] = (torch.full((1, in_f), float(i + 1), dtype=torch.float64),
                       torch.arange(start, start + out_f, dtype=torch.float64).reshape(out_f, 1))
        start += out_f
    renamed = spec.lora_to_original(probe, shapes)
    found = {}
    for original, (a, b) in renamed.items():
        if a.shape[0] != 1 or b.dim() != 2 or b.shape[1] != 1:
            continue
        source = names[int(a[0, 0].item()) - 1] if a.numel() and a[0, 0] >= 1 else None
        if source is not None and torch.equal(b, probe[source][1]) and torch.equal(a, probe[source][0]):
            found[source] = original
    fused = [n for n in names if n not in found]
    if fused:
        raise LoraFormatError(
            f"{len(fused)} adapter modules (e.g. {fused[:3]}) are fused or reordered in {spec.name}'s original "
            "checkpoint layout, which ComfyUI/kohya names address; a DoRA/LoHa/LoKr update of one part cannot be "
            "written onto the fused weight. Export the diffusers format, or leave those modules out of "
            "lora.lora_target_modules")
    return found


def comfy_dora_scale(slots: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """``dora_scale`` (out, 1) that makes ComfyUI's DoRA equal peft's. ComfyUI (``weight_decompose`` in
    ``comfy/weight_adapter/base.py``) divides an output-axis ``dora_scale`` by the row norm of the *base* weight
    (+ eps), peft divides m by the row norm of ``W + dW``; so the file holds ``m * (||W|| + eps) / ||W + dW||``.
    Exact for this base model only."""
    w = weight.float()
    d = delta("dora", slots, tuple(w.shape))
    m = slots["lora_magnitude_vector"].float().reshape(-1, 1)
    base_norm = w.norm(dim=1, keepdim=True) + torch.finfo(weight.dtype).eps
    return (m * base_norm / (w + d).norm(dim=1, keepdim=True)).to(slots["lora_B"].dtype)


def write_adapter(modules: Adapters, kind: str, fmt: str, spec, shapes: dict[str, tuple],
                  weights: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The state dict of export format ``fmt`` for a DoRA/LoHa/LoKr (see ``lora_names`` for the formats).
    ``shapes``: the loaded model's ``{module: (out, in)}``; ``weights``: its base weights, which a ComfyUI/kohya
    DoRA needs (see :func:`comfy_dora_scale`)."""
    if fmt == "diffusers":
        return peft_names(modules, "transformer.")
    if fmt == "diffsynth":
        raise LoraFormatError(f"export format diffsynth cannot carry a {kind}: DiffSynth-Studio's LoRA loader reads "
                              "only lora_A/lora_B pairs. Export diffusers, comfyui or kohya instead")
    if fmt not in ("comfyui", "kohya"):
        raise LoraFormatError(f"Unknown export format {fmt!r}; export.formats entries must be among "
                              "['diffsynth', 'diffusers', 'comfyui', 'kohya']")
    if kind == "dora" and weights is None:
        raise LoraFormatError(f"A DoRA in {fmt} names needs the base model's weights (ComfyUI normalises by the base "
                              "weight's norm, peft by the adapted one's): export it with the base model at hand "
                              "(the export stage), or export diffusers")
    renames = original_renames(list(modules), spec, shapes)
    out = {}
    for name, slots in modules.items():
        base = f"diffusion_model.{renames[name]}" if fmt == "comfyui" else kohya_name(renames[name])
        if kind == "dora":
            down, up = ("lora_A", "lora_B") if fmt == "comfyui" else ("lora_down", "lora_up")
            out.update({f"{base}.{down}.weight": slots["lora_A"], f"{base}.{up}.weight": slots["lora_B"],
                        f"{base}.dora_scale": comfy_dora_scale(slots, weights[name])})
        else:
            out.update({f"{base}.{slot}": t for slot, t in slots.items()})
        rank = rank_of(kind, slots)
        if rank is not None:  # alpha = rank: ComfyUI's scale alpha/rank is 1, as the scale is folded in
            out[f"{base}.alpha"] = torch.tensor(float(rank))
    return out


def merged_weight(kind: str, slots: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """The layer's weight with the adapter applied (DoRA: ``m * V / ||V||`` per row, as peft computes it)."""
    w = weight.float()
    v = w + delta(kind, slots, tuple(w.shape))
    if kind == "dora":
        v = v * (slots["lora_magnitude_vector"].float().reshape(-1, 1) / v.norm(dim=1, keepdim=True))
    return v.to(weight.dtype)


def check_shapes(modules: Adapters, kind: str, shapes: dict[str, tuple]) -> dict[str, str]:
    """``{module: why}`` for modules of ``modules`` that address no layer of ``shapes`` or do not fit it."""
    bad = {}
    for name, slots in modules.items():
        if name not in shapes:
            bad[name] = "no such module in the base model"
            continue
        try:
            d = delta(kind, slots, shapes[name])
        except RuntimeError as e:
            bad[name] = f"factors do not compose ({e})"
            continue
        if tuple(d.shape) != tuple(shapes[name]):
            bad[name] = f"update is {tuple(d.shape)}, the layer {tuple(shapes[name])}"
    return bad


__all__ = ["ADAPTERS", "ADAPTER_KEY", "PREFIXES", "SLOTS", "adapter_modules", "check_shapes", "checkpoint_state",
           "comfy_dora_scale", "delta", "is_adapter_key", "kind_of", "original_renames", "peft_names",
           "write_adapter"]
