"""LoRA state dicts and their module names: pure functions that training and export both use (no files, no
family knowledge: a family passes its own converters in through its spec).

Formats (writers below; :func:`lora_modules` and :func:`from_original_names` read them all back):

* ``diffsynth``  ``<module>.lora_A.weight`` in the module names of DiffSynth-Studio's own DiT (``spec.lora_to_diffsynth``:
                 diffusers names for Qwen-Image, the original Wan-AI names for Wan, ``FluxDiT`` names with fused q/k/v
                 for FLUX), which its ``pipe.load_lora`` reads; no ``.default`` (DiffSynth's FLUX loader matches only
                 ``.lora_B.weight``). Training checkpoints use the same names with ``.default``, as its trainer saves.
* ``diffusers``  ``transformer.<module>.lora_A.weight`` — ``load_lora_weights`` / ``load_lora_adapter``.
* ``comfyui``    ``diffusion_model.<original module>.lora_A.weight`` + ``.alpha`` (= rank): the family's original
                 checkpoint names (Wan-AI ``blocks.N.self_attn.q``, BFL ``double_blocks.N.img_attn.qkv``).
* ``kohya``      ``lora_unet_<original module with _>.lora_down.weight`` / ``.lora_up.weight`` + ``.alpha`` (= rank),
                 DiffSynth's ``--align_to_opensource_format`` for FLUX.

The intermediate form is ``{module: (A, B)}`` in the *loaded* model's module names (diffusers names, since our
DiTs are diffusers classes), with the LoRA scale ``alpha/rank`` folded into B so the weight update is ``B @ A``.
"""
from __future__ import annotations

import re
from typing import Callable

import torch

from ..errors import DiffSynthError

LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.[A-Za-z0-9_]+)?\.weight$")
PREFIXES = ("transformer.", "diffusion_model.", "base_model.model.", "pipe.dit.")

Modules = dict[str, tuple[torch.Tensor, torch.Tensor]]
FORMATS = ("diffsynth", "diffusers", "comfyui", "kohya")


class LoraFormatError(DiffSynthError, ValueError):
    """A LoRA file or conversion that cannot be read or written correctly; the message names the key and the fix."""


def is_lora_key(key: str) -> bool:
    return key.endswith(".alpha") or LORA_KEY.match(key) is not None


def strip_prefix(name: str) -> str:
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def kohya_name(module: str) -> str:
    return "lora_unet_" + module.replace(".", "_")


def lora_modules(state: dict[str, torch.Tensor], alpha: float | None = None) -> Modules:
    """``{module: (A, B)}`` with ``B`` scaled by ``alpha/rank``. ``alpha`` comes from a ``<module>.alpha`` key of
    the file, else the ``alpha`` argument (``lora.lora_alpha``), else rank (scale 1, DiffSynth's choice)."""
    parts: dict[str, dict] = {}
    for key, value in state.items():
        if key.endswith(".alpha"):
            parts.setdefault(strip_prefix(key[: -len(".alpha")]), {})["alpha"] = float(value.float().item())
            continue
        m = LORA_KEY.match(key)
        if not m:
            raise LoraFormatError(f"{key!r} is not a LoRA tensor name (expected <module>.lora_A[.default].weight); "
                                  "a full fine-tune checkpoint is exported as a model folder, not a LoRA")
        slot = "A" if m.group("kind") in ("lora_A", "lora_down") else "B"
        parts.setdefault(strip_prefix(m.group("module")), {})[slot] = value
    out = {}
    for name, p in sorted(parts.items()):
        if "A" not in p or "B" not in p:
            missing = "B (lora_B/lora_up)" if "A" in p else "A (lora_A/lora_down)"
            raise LoraFormatError(f"LoRA module {name!r} lacks its {missing} matrix: the file is incomplete")
        a, b = p["A"], p["B"]
        rank = a.shape[0]
        if b.shape[1] != rank:
            raise LoraFormatError(f"LoRA module {name!r}: A is {tuple(a.shape)} but B is {tuple(b.shape)}; ranks differ")
        scale = p.get("alpha", alpha if alpha is not None else rank) / rank
        if scale != 1.0:
            b = (b.float() * scale).to(b.dtype)
        out[name] = (a, b)
    return out


def fuse_groups(modules: Modules, groups: list[tuple[re.Pattern, str, tuple[str, ...]]],
                part_shape: Callable[[str, int], tuple | None], shapes: dict[str, tuple] | None = None) -> Modules:
    """LoRAs of layers an original checkpoint fuses (q/k/v) prepared for fusion: every member of a group gets the
    group's total rank, A stacked along the rank and B block-diagonal, so after renaming and concatenating the
    rows ``B_f @ A_f`` is exactly the stacked per-part updates. A part the LoRA does not cover contributes rank 0
    (zero rows); its row count comes from ``shapes`` (the base model) or ``part_shape(member, in_features)``.

    ``groups``: (pattern matching a member with the block index as group 1, prefix format, member names)."""
    out: Modules = {}
    for pattern, prefix_fmt, names in groups:
        blocks = sorted({m.group(1) for name in modules if (m := pattern.match(name))}, key=int)
        for i in blocks:
            members = [prefix_fmt.format(i) + n for n in names]
            present = [modules.get(m) for m in members]
            ref = next(p for p in present if p is not None)
            total = sum(p[0].shape[0] for p in present if p is not None)
            offset = 0
            for member, part in zip(members, present):
                if part is None:
                    rows = (shapes or {}).get(member) or part_shape(member, ref[0].shape[1])
                    if rows is None:
                        raise LoraFormatError(
                            f"The LoRA covers only part of the fused layer of {member!r}; the base model's shapes "
                            "are needed to fill the rest (pass shapes=, or add the missing q/k/v modules to "
                            "lora.lora_target_modules)")
                    out[member] = (ref[0].new_zeros((0, ref[0].shape[1])), ref[1].new_zeros((rows[0], total)))
                else:
                    a, b0 = part
                    b = b0.new_zeros((b0.shape[0], total))
                    b[:, offset: offset + a.shape[0]] = b0
                    offset += a.shape[0]
                    out[member] = (a, b)
    out.update({name: ab for name, ab in modules.items() if name not in out})
    return out


def rename_modules(modules: Modules, convert_a: Callable[[dict], dict],
                   convert_b: Callable[[dict], dict] | None = None) -> Modules:
    """Rename LoRA modules with a state-dict converter of the base weights (``<module>.weight`` keys): B rows are
    weight rows, so ``convert_b`` (default ``convert_a``) may also reorder or concatenate them; A is renamed."""
    a = convert_a({f"{n}.weight": ab[0] for n, ab in modules.items()})
    b = (convert_b or convert_a)({f"{n}.weight": ab[1] for n, ab in modules.items()})
    return {k[: -len(".weight")]: (a[k], b[k]) for k in a}


def row_sources(model: torch.nn.Module, layouts: list[Callable[[dict], dict]]) -> dict[str, list[tuple[str, int]]]:
    """For each 2-D weight of the other layouts (original, DiffSynth's): which (loaded module, row) each row is.

    Each loaded weight is replaced by a column of unique row ids and sent through the family's own state-dict
    converters, so fusing, splitting and reordering of rows are read off, never re-implemented."""
    ids, owners, start = {}, [], 0
    for name, module in model.named_modules():
        base = getattr(module, "base_layer", module)
        if isinstance(base, torch.nn.Linear) and not name.endswith(".base_layer"):
            n = base.out_features
            ids[f"{name}.weight"] = torch.arange(start, start + n, dtype=torch.float64).reshape(n, 1)
            owners += [(name, r) for r in range(n)]
            start += n
    rows = {}
    for convert in dict.fromkeys(layouts):
        rows.update({k[: -len(".weight")]: [owners[int(i)] for i in v.reshape(-1).tolist()]
                     for k, v in convert(ids).items() if v.dim() == 2 and v.shape[1] == 1})
    return rows


def layouts_of(spec) -> list[Callable[[dict], dict]]:
    """The state-dict converters of the names a LoRA file for ``spec``'s DiT may use besides the loaded ones."""
    return [c for c in (spec.original_state_dict, spec.diffsynth_state_dict, spec.diffusers_state_dict)
            if c is not None] if spec else []


def from_original_names(modules: Modules, model: torch.nn.Module, layouts: list[Callable[[dict], dict]],
                        what: str = "the DiT") -> Modules:
    """Any LoRA in original (ComfyUI), kohya or DiffSynth-DiT names onto the modules of ``model`` (the inverse of
    writing them). A LoRA on a fused layer becomes one LoRA per part: its rows of B with the A rows they use.
    Exact whatever the fused LoRA's structure; a generic fused LoRA keeps the fused rank."""
    own = {name for name, _ in model.named_modules()}
    if not layouts or all(name in own for name in modules):
        return dict(modules)
    rows = row_sources(model, layouts)
    kohya = {kohya_name(name): name for name in rows}
    out: Modules = {}
    for name, (a, b) in modules.items():
        if name in own:
            out[name] = (a, b)
            continue
        original = kohya.get(name, name)
        if original not in rows:
            raise LoraFormatError(f"LoRA module {name!r} is neither a module of {what} nor one of its original "
                                  "(ComfyUI/kohya) or DiffSynth-Studio layers: is the LoRA for another model?")
        parts: dict[str, list[tuple[int, int]]] = {}
        for i, (target, row) in enumerate(rows[original]):
            parts.setdefault(target, []).append((row, i))
        for target, pairs in parts.items():
            b_part = b[torch.tensor([i for _, i in sorted(pairs)])]
            # a fused LoRA written by an exporter has block-diagonal B: drop the rank columns this part does not
            # use, which gives back the part's own rank (exactly: zero columns add nothing)
            keep = b_part.abs().sum(0) != 0
            if keep.any():  # a part with no update at all (zero rows: not trained) gets no LoRA
                out[target] = (a[keep], b_part[:, keep])
    return out


# ------------------------------------------------------------------------------------------- writers

def to_original_names(modules: Modules, spec, shapes: dict[str, tuple] | None = None) -> Modules:
    """LoRA modules in the family's original checkpoint names (what ComfyUI and kohya tools address)."""
    if spec is None:
        raise LoraFormatError("ComfyUI and kohya names are the family's original checkpoint names: say which family "
                              "(model.family, or --family for `diffsynth export`)")
    return spec.lora_to_original(modules, shapes) if spec.lora_to_original else dict(modules)


def to_diffsynth_names(modules: Modules, spec, shapes: dict[str, tuple] | None = None) -> Modules:
    """LoRA modules in DiffSynth-Studio's own DiT names for the family (unchanged where they are the loaded ones)."""
    return spec.lora_to_diffsynth(modules, shapes) if spec is not None and spec.lora_to_diffsynth else dict(modules)


def to_diffsynth_checkpoint(state: dict[str, torch.Tensor], spec, prefix: str = "",
                            alpha: float | None = None) -> dict[str, torch.Tensor]:
    """A training checkpoint's LoRA tensors (peft names of the loaded DiT under ``prefix``) renamed as DiffSynth's
    trainer names them (``.lora_A.default.weight``), ``alpha/rank`` folded into B where it is not 1 (DiffSynth's
    alpha is rank). Other keys stay; a family whose DiffSynth DiT has the loaded names keeps its checkpoint exactly."""
    if spec is None or not spec.lora_to_diffsynth:
        return dict(state)
    lora = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and is_lora_key(k)}
    if not lora:
        return dict(state)
    out = {k: v for k, v in state.items() if not (k.startswith(prefix) and is_lora_key(k))}
    out.update({f"{prefix}{n}.lora_{slot}.default.weight": t.contiguous()
                for n, ab in to_diffsynth_names(lora_modules(lora, alpha), spec).items() for slot, t in zip("AB", ab)})
    return out


def write_format(modules: Modules, fmt: str, spec, shapes: dict[str, tuple] | None = None) -> dict:
    """The state dict of ``fmt`` for ``modules`` (see the module docstring)."""
    if fmt == "diffsynth":
        return {k: v for n, (a, b) in to_diffsynth_names(modules, spec, shapes).items()
                for k, v in ((f"{n}.lora_A.weight", a), (f"{n}.lora_B.weight", b))}
    if fmt == "diffusers":
        if spec is not None and spec.lora_to_diffusers:  # a DiT loaded in other names than diffusers' own
            modules = spec.lora_to_diffusers(modules, shapes)
        return {k: v for n, (a, b) in modules.items()
                for k, v in ((f"transformer.{n}.lora_A.weight", a), (f"transformer.{n}.lora_B.weight", b))}
    if fmt in ("comfyui", "kohya"):
        out = {}
        for n, (a, b) in to_original_names(modules, spec, shapes).items():
            rank = torch.tensor(float(a.shape[0]))  # alpha = rank: the update is exactly B @ A
            if fmt == "comfyui":
                base = f"diffusion_model.{n}"
                out.update({f"{base}.lora_A.weight": a, f"{base}.lora_B.weight": b, f"{base}.alpha": rank})
            else:
                base = kohya_name(n)
                out.update({f"{base}.lora_down.weight": a, f"{base}.lora_up.weight": b, f"{base}.alpha": rank})
        return out
    raise LoraFormatError(f"Unknown export format {fmt!r}; export.formats entries must be among {list(FORMATS)}")


def opensource_converter(spec):
    """``output.align_to_opensource_format``: ``(state, alpha) -> state`` writing a trained LoRA in the family's
    open-source format (FLUX: kohya names with fused q/k/v), or None where the family has none.

    Unlike DiffSynth, modules outside the blocks keep their original names (FLUX ``lora_unet_final_layer_linear``),
    which ComfyUI also reads, rather than being dropped."""
    if not spec.opensource_lora_format:
        return None
    return lambda state, alpha=None: write_format(lora_modules(state, alpha), spec.opensource_lora_format, spec)
