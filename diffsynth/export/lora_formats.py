"""LoRA state-dict formats (pure functions, no files, no models).

Every format is produced from one intermediate form, ``{module: (A, B)}`` in the *trained* model's module names
(diffusers names, since our DiTs are diffusers classes), with the LoRA scale ``alpha/rank`` already folded into
B so that the weight update is exactly ``B @ A``. Writers then only rename (and, for FLUX's original names, fuse):

* ``diffsynth``  ``<module>.lora_A.weight`` in the module names of DiffSynth-Studio's own DiT, which its trainer
                 saves (as ``.lora_A.default.weight``; training checkpoints keep that) and its ``pipe.load_lora`` and
                 ``--lora_checkpoint`` read: diffusers names for Qwen-Image, the original Wan-AI names for Wan,
                 ``FluxDiT`` names with fused q/k/v (``blocks.N.attn.a_to_qkv``) for FLUX. The export leaves out
                 ``.default`` because DiffSynth's FLUX pipeline loader fuses 0 layers of a ``.default.`` file (its
                 ``FluxLoRALoader`` matches only ``.lora_B.weight``); every DiffSynth loader reads it without.
* ``diffusers``  ``transformer.<module>.lora_A.weight`` — ``load_lora_weights`` / ``load_lora_adapter``.
* ``comfyui``    ``diffusion_model.<original module>.lora_A.weight`` + ``.alpha`` (= rank): the family's original
                 checkpoint names (Wan-AI ``blocks.N.self_attn.q``, BFL ``double_blocks.N.img_attn.qkv``).
* ``kohya``      ``lora_unet_<original module with _>.lora_down.weight`` / ``.lora_up.weight`` + ``.alpha`` (= rank),
                 DiffSynth's ``--align_to_opensource_format`` for FLUX (spec §5.2).
"""
from __future__ import annotations

import re

import torch

from ..models import convert_flux, convert_wan
from ..models.components import normalise_family

FORMATS = ("diffsynth", "diffusers", "comfyui", "kohya")
LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.[A-Za-z0-9_]+)?\.weight$")
PREFIXES = ("transformer.", "diffusion_model.", "base_model.model.", "pipe.dit.")

Modules = dict[str, tuple[torch.Tensor, torch.Tensor]]


class ExportError(ValueError):
    """An export that cannot be written correctly; the message names the key or param and the fix."""


def is_lora_key(key: str) -> bool:
    return key.endswith(".alpha") or LORA_KEY.match(key) is not None


def _strip(name: str) -> str:
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def lora_modules(state: dict[str, torch.Tensor], alpha: float | None = None) -> Modules:
    """``{module: (A, B)}`` with ``B`` scaled by ``alpha/rank``. ``alpha`` comes from a ``<module>.alpha`` key of
    the file, else the ``alpha`` argument (``lora.lora_alpha``), else rank (scale 1, DiffSynth's choice)."""
    parts: dict[str, dict] = {}
    for key, value in state.items():
        if key.endswith(".alpha"):
            parts.setdefault(_strip(key[: -len(".alpha")]), {})["alpha"] = float(value.float().item())
            continue
        m = LORA_KEY.match(key)
        if not m:
            raise ExportError(f"{key!r} is not a LoRA tensor name (expected <module>.lora_A[.default].weight); "
                              "a full fine-tune checkpoint is exported as a model folder, not a LoRA")
        slot = "A" if m.group("kind") in ("lora_A", "lora_down") else "B"
        parts.setdefault(_strip(m.group("module")), {})[slot] = value
    out = {}
    for name, p in sorted(parts.items()):
        if "A" not in p or "B" not in p:
            raise ExportError(f"LoRA module {name!r} lacks its {'B (lora_B/lora_up)' if 'A' in p else 'A (lora_A/lora_down)'}"
                              " matrix: the file is incomplete")
        a, b = p["A"], p["B"]
        rank = a.shape[0]
        if b.shape[1] != rank:
            raise ExportError(f"LoRA module {name!r}: A is {tuple(a.shape)} but B is {tuple(b.shape)}; ranks differ")
        scale = p.get("alpha", alpha if alpha is not None else rank) / rank
        if scale != 1.0:
            b = (b.float() * scale).to(b.dtype)
        out[name] = (a, b)
    return out


# ------------------------------------------------------------------------------------- original names

_FLUX_GROUPS = [  # diffusers modules fused into one original module, in fusion order
    (re.compile(r"^transformer_blocks\.(\d+)\.attn\.(to_q|to_k|to_v)$"), "transformer_blocks.{}.attn.", ("to_q", "to_k", "to_v")),
    (re.compile(r"^transformer_blocks\.(\d+)\.attn\.(add_q_proj|add_k_proj|add_v_proj)$"), "transformer_blocks.{}.attn.",
     ("add_q_proj", "add_k_proj", "add_v_proj")),
    (re.compile(r"^single_transformer_blocks\.(\d+)\.(attn\.to_q|attn\.to_k|attn\.to_v|proj_mlp)$"),
     "single_transformer_blocks.{}.", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
]


def _flux_part_shape(member: str, hidden: int) -> tuple | None:
    """Without the base model: q/k/v map hidden -> hidden and the single blocks' MLP-in hidden -> 4·hidden in every
    FLUX.1 release (mlp_ratio 4)."""
    if member.endswith(("to_q", "to_k", "to_v", "_proj")) and not member.endswith("proj_mlp"):
        return (hidden, hidden)
    if member.endswith("proj_mlp"):
        return (4 * hidden, hidden)
    return None


def _flux_fused(modules: Modules, shapes: dict[str, tuple] | None, convert) -> Modules:
    """Rename with ``convert`` (a ``convert_flux`` state-dict function into a layout that fuses q/k/v(/mlp): BFL's
    or DiffSynth's); LoRAs of fused layers become one LoRA on the fused layer: A stacked along the rank,
    B block-diagonal, so ``B_f @ A_f`` is the stacked per-part updates. A part the LoRA does not cover
    contributes rank 0 (its rows of the update are zero)."""
    a_dict, b_dict, grouped = {}, {}, set()
    for pattern, prefix_fmt, names in _FLUX_GROUPS:
        blocks = sorted({m.group(1) for name in modules if (m := pattern.match(name))}, key=int)
        for i in blocks:
            members = [prefix_fmt.format(i) + n for n in names]
            present = [modules.get(m) for m in members]
            ref = next(p for p in present if p is not None)
            total = sum(p[0].shape[0] for p in present if p is not None)
            offset = 0
            for member, part in zip(members, present):
                if part is None:
                    if not shapes or member not in shapes:
                        guess = _flux_part_shape(member, ref[0].shape[1])
                        shapes = {**(shapes or {}), **({member: guess} if guess else {})}
                    if member not in shapes:
                        raise ExportError(f"FLUX LoRA covers only part of the fused layer of {member!r}; the base "
                                          "model's shapes are needed to fill the rest (pass shapes=, or add the "
                                          "missing q/k/v modules to lora.lora_target_modules)")
                    a = ref[0].new_zeros((0, ref[0].shape[1]))
                    b = ref[1].new_zeros((shapes[member][0], total))
                else:
                    a, b0 = part
                    b = b0.new_zeros((b0.shape[0], total))
                    b[:, offset: offset + a.shape[0]] = b0
                    offset += a.shape[0]
                a_dict[member + ".weight"], b_dict[member + ".weight"] = a, b
                grouped.add(member)
    for name, (a, b) in modules.items():
        if name not in grouped:
            a_dict[name + ".weight"], b_dict[name + ".weight"] = a, b
    a_out, b_out = convert(a_dict), convert(b_dict)
    if "norm_out.linear.weight" in a_dict:
        # the converter swaps (scale, shift) halves of the output rows: right for B, but A's rows are rank
        (fused_name,) = convert({"norm_out.linear.weight": torch.zeros(2, 1)})
        a_out[fused_name] = a_dict["norm_out.linear.weight"]
    return {k[: -len(".weight")]: (a_out[k], b_out[k]) for k in a_out}


def to_original_names(modules: Modules, family: str, shapes: dict[str, tuple] | None = None) -> Modules:
    """LoRA modules in the family's original checkpoint names (what ComfyUI and kohya tools address)."""
    family = normalise_family(family)
    if family == "qwen_image":
        return dict(modules)  # Qwen-Image's original release uses the diffusers names
    if family == "wan":
        a = convert_wan.diffusers_to_wan_dit({f"{n}.weight": ab[0] for n, ab in modules.items()})
        b = convert_wan.diffusers_to_wan_dit({f"{n}.weight": ab[1] for n, ab in modules.items()})
        return {k[: -len(".weight")]: (a[k], b[k]) for k in a}
    if family == "flux":
        return _flux_fused(modules, shapes, convert_flux.diffusers_to_bfl_dit)
    raise ExportError(f"No original-name mapping for family {family!r}")


def to_diffsynth_names(modules: Modules, family: str, shapes: dict[str, tuple] | None = None) -> Modules:
    """LoRA modules in the module names of DiffSynth-Studio's own DiT for ``family`` (what its trainer saves and
    its loaders address): unchanged for Qwen-Image (its DiT has diffusers' names), the original names for Wan,
    ``FluxDiT`` names with fused q/k/v for FLUX (``convert_*.diffusers_to_diffsynth_dit``)."""
    return _diffsynth_namer(family)(modules, shapes)


def _diffsynth_namer(family: str):
    family = normalise_family(family)
    if family in DIFFSYNTH_NAMERS:
        return DIFFSYNTH_NAMERS[family]
    return lambda modules, shapes=None: dict(modules)


def _diffsynth_wan(modules: Modules, shapes: dict[str, tuple] | None = None) -> Modules:
    a = convert_wan.diffusers_to_diffsynth_dit({f"{n}.weight": ab[0] for n, ab in modules.items()})
    b = convert_wan.diffusers_to_diffsynth_dit({f"{n}.weight": ab[1] for n, ab in modules.items()})
    return {k[: -len(".weight")]: (a[k], b[k]) for k in a}


def _diffsynth_flux(modules: Modules, shapes: dict[str, tuple] | None = None) -> Modules:
    return _flux_fused(modules, shapes, convert_flux.diffusers_to_diffsynth_dit)


# family -> (modules, shapes) -> modules in DiffSynth's DiT names; families absent keep the diffusers names
DIFFSYNTH_NAMERS = {"wan": _diffsynth_wan, "flux": _diffsynth_flux}
# family -> diffusers-to-X state-dict converter of the layouts a LoRA file may be named in besides diffusers'
# (read back by from_original_names): the original release's, and DiffSynth-Studio's own DiT's
ORIGINAL_LAYOUTS = {"flux": convert_flux.diffusers_to_bfl_dit, "wan": convert_wan.diffusers_to_wan_dit}
DIFFSYNTH_LAYOUTS = {"flux": convert_flux.diffusers_to_diffsynth_dit, "wan": convert_wan.diffusers_to_diffsynth_dit}


def to_diffsynth_checkpoint(state: dict[str, torch.Tensor], family: str, prefix: str = "",
                            alpha: float | None = None) -> dict[str, torch.Tensor]:
    """A training checkpoint's LoRA tensors (peft names of the loaded DiT under ``prefix``) renamed as DiffSynth's
    trainer names them for ``family``; ``alpha/rank`` folded into B where it is not 1 (DiffSynth's alpha is rank).
    Keys outside ``prefix`` or not LoRA tensors are kept as they are; a family whose DiffSynth DiT has the
    diffusers names (Qwen-Image) keeps its checkpoint exactly as peft holds it."""
    if normalise_family(family) not in DIFFSYNTH_NAMERS:
        return dict(state)
    lora = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and is_lora_key(k)}
    if not lora:
        return dict(state)
    out = {k: v for k, v in state.items() if not (k.startswith(prefix) and is_lora_key(k))}
    renamed = to_diffsynth_names(lora_modules(lora, alpha), family)
    out.update({f"{prefix}{n}.lora_{slot}.default.weight": t.contiguous()
                for n, ab in renamed.items() for slot, t in zip("AB", ab)})
    return out


def trained_names_without_model(modules: Modules, family: str) -> Modules:
    """Back to the trained (diffusers) names where no base model is at hand (``diffsynth export``): a pure rename
    for Wan's original/DiffSynth names; FLUX's fused layers can only be split against the model."""
    family = normalise_family(family)
    if family == "wan":
        a = convert_wan.diffsynth_dit_to_diffusers({f"{n}.weight": ab[0] for n, ab in modules.items()})
        b = convert_wan.diffsynth_dit_to_diffusers({f"{n}.weight": ab[1] for n, ab in modules.items()})
        return {k[: -len(".weight")]: (a[k], b[k]) for k in a}
    if family == "flux":
        diffusers_top = ("transformer_blocks.", "single_transformer_blocks.", "x_embedder", "context_embedder",
                         "proj_out", "norm_out.", "time_text_embed.")
        foreign = [n for n in modules if not n.startswith(diffusers_top)]
        if foreign:
            raise ExportError(f"LoRA module {foreign[0]!r} is a fused FLUX layer (DiffSynth's or BFL's names): "
                              "splitting it needs the base model. Export with the pipeline's export stage "
                              "(dvc repro export), which loads the DiT, or from a checkpoint in diffusers names")
    return dict(modules)


# ------------------------------------------------------------------------------------------- writers

def kohya_name(module: str) -> str:
    return "lora_unet_" + module.replace(".", "_")


def write_format(modules: Modules, fmt: str, family: str, shapes: dict[str, tuple] | None = None) -> dict:
    """The state dict of ``fmt`` for ``modules`` (see the module docstring)."""
    if fmt == "diffsynth":
        return {k: v for n, (a, b) in to_diffsynth_names(modules, family, shapes).items()
                for k, v in ((f"{n}.lora_A.weight", a), (f"{n}.lora_B.weight", b))}
    if fmt == "diffusers":
        return {k: v for n, (a, b) in modules.items()
                for k, v in ((f"transformer.{n}.lora_A.weight", a), (f"transformer.{n}.lora_B.weight", b))}
    if fmt in ("comfyui", "kohya"):
        out = {}
        for n, (a, b) in to_original_names(modules, family, shapes).items():
            rank = torch.tensor(float(a.shape[0]))  # alpha = rank: the update is exactly B @ A
            if fmt == "comfyui":
                base = f"diffusion_model.{n}"
                out.update({f"{base}.lora_A.weight": a, f"{base}.lora_B.weight": b, f"{base}.alpha": rank})
            else:
                base = kohya_name(n)
                out.update({f"{base}.lora_down.weight": a, f"{base}.lora_up.weight": b, f"{base}.alpha": rank})
        return out
    raise ExportError(f"Unknown export format {fmt!r}; export.formats entries must be among {list(FORMATS)}")


def to_diffusers(state: dict, prefix: str = "transformer") -> dict:
    """DiffSynth-native (or any LoRA naming) -> diffusers/PEFT names, scale folded."""
    out = write_format(lora_modules(state), "diffusers", "qwen_image")
    if prefix != "transformer":
        out = {prefix + k[len("transformer"):]: v for k, v in out.items()}
    return out


def to_opensource_lora(state: dict[str, torch.Tensor], alpha: float | None = None) -> dict[str, torch.Tensor]:
    """FLUX LoRA (diffusers or DiffSynth-native names) -> kohya names with fused q/k/v, DiffSynth's
    ``--align_to_opensource_format`` (spec §5.2). Modules outside the blocks keep their BFL names
    (``lora_unet_final_layer_linear``), which ComfyUI also reads, rather than being dropped."""
    return write_format(lora_modules(state, alpha), "kohya", "flux")


# ------------------------------------------------------------------------------------------- readers

def _row_sources(model: torch.nn.Module, family: str) -> dict[str, list[tuple[str, int]]]:
    """For each 2-D weight of the family's original layout: which (diffusers module, row) each of its rows is.

    Each diffusers weight is replaced by a column of unique row ids and sent through the same ``convert_*``
    function the exporter uses, so fusing, splitting and reordering of rows are read off, never re-implemented.
    """
    ids, owners, start = {}, [], 0
    for name, module in model.named_modules():
        base = getattr(module, "base_layer", module)
        if isinstance(base, torch.nn.Linear) and not name.endswith(".base_layer"):
            n = base.out_features
            ids[f"{name}.weight"] = torch.arange(start, start + n, dtype=torch.float64).reshape(n, 1)
            owners += [(name, r) for r in range(n)]
            start += n
    rows = {}
    for convert in dict.fromkeys((ORIGINAL_LAYOUTS[family], DIFFSYNTH_LAYOUTS[family])):
        rows.update({k[: -len(".weight")]: [owners[int(i)] for i in v.reshape(-1).tolist()]
                     for k, v in convert(ids).items() if v.dim() == 2 and v.shape[1] == 1})
    return rows


def from_original_names(modules: Modules, family: str, model: torch.nn.Module) -> Modules:
    """The inverse of :func:`to_original_names` and :func:`to_diffsynth_names` for any LoRA in original (ComfyUI),
    kohya or DiffSynth-DiT names, onto the
    diffusers modules of ``model``. A LoRA on a fused layer becomes one LoRA per part: its rows of B with the A
    rows they use. Exact whatever the fused LoRA's structure; a generic fused LoRA keeps the fused rank."""
    family = normalise_family(family)
    own = {name for name, _ in model.named_modules()}
    if all(name in own for name in modules) or family == "qwen_image":
        return dict(modules)
    rows = _row_sources(model, family)
    kohya = {kohya_name(name): name for name in rows}
    out: Modules = {}
    for name, (a, b) in modules.items():
        if name in own:
            out[name] = (a, b)
            continue
        original = kohya.get(name, name)
        if original not in rows:
            raise ExportError(f"LoRA module {name!r} is neither a module of the {family} DiT nor one of its original "
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
