"""The memory plan (``diffsynth plan``): what each stage holds for the current params, without any weights.

Every model entry of ``model`` is mapped to its real architecture (``real_configs.REAL_MODELS``, matched on
``WEIGHT_FILES``; an entry of no known repository is detected from the header of its local files) and built on
the meta device, so the counts are the real modules' parameter counts. Two modes:

- ``cached``: the ``cache`` stage holds the encoders (text encoder(s), image encoder, the VAE encoder); the
  ``train`` stage holds the trained model(s) and the VAE decoder (save-point samples).
- ``online``: the ``train`` stage holds every model.

Bytes are parameters x dtype size; what training adds on top (LoRA weights, gradients, AdamW states) follows
from the trainable parameters. Activations come from the real blocks' tensor shapes at the recipe's resolution,
frames and batch, and each memory mode (encoder cache, checkpointing, fp8/int8/nf4 base, block swap, CPU
offload) is evaluated against 24/16/12 GB cards (diffsynth/plan_fit.py).
"""
from __future__ import annotations

import copy
import fnmatch
import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import Config, config_from_dict
from .errors import ConfigError
from .plan_fit import trained_names, FIT_ASSUMPTIONS, LADDER, format_fit_summary

ENCODERS = ("text_encoder", "text_encoder_2", "image_encoder")  # cache-stage models (plus the VAE encoder)
VAE_ENCODER = ("encoder", "quant_conv")      # top-level children of a diffusers VAE used to encode ...
VAE_DECODER = ("decoder", "post_quant_conv")  # ... and to decode
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
FP8_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)  # what models/fp8.py converts
ASSUMPTIONS = [
    "weights: parameters x model.torch_dtype size; buffers (rope tables, fp8 scales aside) are not counted",
    "fp8_models: weights of frozen Linear/Conv layers at 1 byte plus one float32 scale each; biases and other "
    "parameters stay in model.torch_dtype (diffsynth/models/fp8.py); trained parameters are never fp8",
    "LoRA: rank x (in + out) parameters per targeted Linear, in model.torch_dtype",
    "gradients: one per trainable parameter, in its dtype",
    "optimizer: AdamW, exp_avg and exp_avg_sq created like the parameter (2 x trainable bytes); step counters "
    "ignored; a customized_optimizer may need more or less",
    "per process: under DDP every GPU holds all of this",
    "activations: see below; the train stage's total includes them for the params' own checkpointing and fp8",
]


# ------------------------------------------------------------------------------------------------ params

def resolve_params_path(value: str | None) -> Path:
    """``params.yaml`` by default; a path, or the name of a file in ``presets/`` (``qwen-image-lora``)."""
    path = Path(value or "params.yaml")
    if not path.exists() and value and path.suffix not in (".yaml", ".yml"):  # names may hold dots: flux.1-dev-lora
        path = Path("presets") / f"{value}.yaml"
    if not path.exists():
        raise ConfigError(f"{value or 'params.yaml'} not found: give a params file or a preset "
                          "(presets/<name>.yaml, or just <name>)")
    return path


def load_plan_params(path: str | Path) -> Config:
    """A params file or preset (full, or an overlay with ``extends``) as a Config."""
    from .presets import preset_params
    return config_from_dict(preset_params(Path(path)))


@dataclass
class Entry:
    """One model entry, its architecture and its meta-device module."""
    source: str          # the entry as written in the model flags (fp8_models matches on it)
    architecture: str    # REAL_MODELS name, or "detected <variant>" from local file headers
    component: str       # pipeline attribute: dit, vae, text_encoder, ...
    module: torch.nn.Module = field(repr=False)


def _unshared(module: torch.nn.Module) -> torch.nn.Module:
    """A shallow copy whose own children can be detached (a family's split_module does, e.g. Wan-Animate's adapter)
    without changing the cached meta build that the next preset of the same model gets."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    return clone


@functools.lru_cache(maxsize=None)
def build_meta(name: str) -> torch.nn.Module:
    """REAL_MODELS[name] on the meta device (cached: a 20B DiT builds in seconds, but only once per process)."""
    from accelerate import init_empty_weights

    from .models.real_configs import REAL_MODELS, build_real
    with init_empty_weights(include_buffers=False):
        module = build_real(REAL_MODELS[name])
    return tie_as_loaded(module)


def tie_as_loaded(module: torch.nn.Module) -> torch.nn.Module:
    """Tie weights as ``components.load_component`` does after loading (T5's encoder.embed_tokens is
    shared.weight), so shared parameters count once."""
    if isinstance(getattr(module, "_tied_weights_keys", None), dict) and hasattr(module, "tie_weights"):
        module.tie_weights()
    return module


def real_model_for(model_id: str, pattern: str, family: str) -> str | None:
    """The REAL_MODELS name whose weights ``model_id:pattern`` selects, or None."""
    from .models.model_config import _normalise_pattern
    from .models.real_configs import REAL_MODELS, WEIGHT_FILES
    pattern = _normalise_pattern(pattern)
    found = []
    for name, files in WEIGHT_FILES.items():
        if REAL_MODELS[name]["family"] != family:
            continue
        for spot in files:
            repo, file = spot.rsplit(":", 1)
            if fnmatch.fnmatchcase(model_id, repo) and fnmatch.fnmatchcase(file, pattern):
                found.append(name)
                break
    if len(found) > 1:
        raise ConfigError(f"model entry {model_id}:{pattern} selects the files of several models ({', '.join(found)}); "
                          "give one model per entry")
    return found[0] if found else None


def _detect_local(config, family: str) -> Entry:
    from .models.components import detect
    from .models.model_config import ModelConfigError, fetch
    try:
        files = fetch(config, skip=True).files()  # local files only: the plan never downloads
    except ModelConfigError as e:
        raise ConfigError(f"model entry {config.source_string!r} is no real checkpoint the plan knows "
                          f"(diffsynth/models/real_configs.py WEIGHT_FILES) and its files are not here to read "
                          f"the architecture from ({e}). Fetch it first (dvc repro models), or add its "
                          "repository to WEIGHT_FILES.") from None
    d = detect(files, family)
    return Entry(config.source_string, f"detected {d.variant}", d.component, tie_as_loaded(d.build()))


def model_entries(config: Config) -> list[Entry]:
    """Every model entry of ``config.model`` with its meta-device module, in the order given."""
    from .families import spec_for
    from .models.model_config import parse_model_paths, parse_model_id_with_origin_paths
    from .models.real_configs import REAL_MODELS
    family = spec_for(config).model_family
    m = config.model
    entries = [_detect_local(c, family) for c in parse_model_paths(m.model_paths)]
    for c in parse_model_id_with_origin_paths(m.model_id_with_origin_paths, redirect_common_files=False):
        name = real_model_for(c.model_id, c.origin_file_pattern, family)
        if name is None:
            entries.append(_detect_local(parse_model_id_with_origin_paths(c.source_string)[0], family))
        else:
            entries.append(Entry(c.source_string, name, REAL_MODELS[name]["component"], build_meta(name)))
    if not entries:
        raise ConfigError("No models given: set model.model_paths and/or model.model_id_with_origin_paths")
    spec = spec_for(config)  # one file may hold two pipeline models (Wan VACE: dit and vace)
    entries = [Entry(e.source, e.architecture, part, module) for e in entries
               for part, module in spec.split_module(e.component, _unshared(e.module)).items()]
    seen: dict[str, str] = {}
    for e in entries:
        if e.component in seen:
            raise ConfigError(f"Two model entries are both the {family} {e.component} ({seen[e.component]!r} and "
                              f"{e.source!r}); give each model once")
        seen[e.component] = e.source
    return entries


# ------------------------------------------------------------------------------------------------- bytes

def weight_bytes(module: torch.nn.Module, dtype_bytes: int, fp8: bool = False) -> tuple[int, int]:
    """(parameters, bytes) of ``module``: every parameter at ``dtype_bytes``, or with ``fp8`` the weights of
    Linear/Conv layers at 1 byte plus a float32 scale per layer (as ``enable_fp8`` stores them)."""
    fp8_weights = {}
    if fp8:
        fp8_weights = {id(layer.weight): layer.weight.numel() for layer in module.modules()
                       if isinstance(layer, FP8_LAYERS) and getattr(layer, "weight", None) is not None}
    params = total = 0
    for p in module.parameters():  # tied parameters are yielded once
        params += p.numel()
        total += (fp8_weights[id(p)] + 4) if id(p) in fp8_weights else p.numel() * dtype_bytes
    return params, total


def _vae_part(vae: torch.nn.Module, children: tuple[str, ...], other: tuple[str, ...]) -> torch.nn.Module:
    names = [n for n, _ in vae.named_children()]
    unknown = [n for n in names if n not in children + other and any(True for _ in getattr(vae, n).parameters())]
    # a child of neither side would be held by both stages; none of the supported VAEs has one
    part = torch.nn.Module()
    for n in names:
        if n in children or n in unknown:
            part.add_module(n, getattr(vae, n))
    return part


def lora_modules(config: Config, entries: dict[str, Entry]) -> dict[str, tuple[int, int]]:
    """{module name: (in, out)} of every Linear of ``lora.lora_base_model`` that training puts LoRA on: the
    targets parsed and mapped as ``configure_trainable`` does, matched with peft's own rule."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    from .families import spec_for
    from .training.lora import parse_target_modules
    base_name = config.lora.lora_base_model
    if base_name not in entries:
        raise ConfigError(f"lora.lora_base_model: {base_name!r} is not a model of these entries; models: "
                          f"{sorted(entries)}")
    base = entries[base_name].module
    family = spec_for(config)
    # the family maps DiffSynth's DiT names to loaded module names and excludes modules the loss never reaches,
    # asked with the meta model exactly as training asks with the loaded one
    targets = family.lora_targets_for(base_name, base, parse_target_modules(config.lora.lora_target_modules, base))
    exclude = family.modules_without_gradient(base_name, base)
    peft_config = LoraConfig(r=config.lora.lora_rank, target_modules=targets, exclude_modules=exclude or None)
    out = {}
    for name, module in base.named_modules():
        if name and bool(check_target_module_exists(peft_config, name)):
            if not isinstance(module, torch.nn.Linear):
                raise ConfigError(f"lora.lora_target_modules matches {name!r}, a {type(module).__name__}; "
                                  "LoRA targets must be Linear layers")
            out[name] = (module.in_features, module.out_features)
    if not out:
        raise ConfigError(f"LoRA targets {targets!r} match no Linear of {type(base).__name__}")
    return out


# -------------------------------------------------------------------------------------------------- plan

def _trained_module(entries: dict, name: str) -> torch.nn.Module:
    """The module ``name`` of train.trainable_models names: a model, or a dotted sub-module of one."""
    model, _, sub = name.partition(".")
    if model not in entries:
        raise ConfigError(f"train.trainable_models: {name!r} is not a model of these entries (or a dotted "
                          f"sub-module of one); models: {sorted(entries)}")
    try:
        return entries[model].module.get_submodule(sub) if sub else entries[model].module
    except AttributeError:
        raise ConfigError(f"train.trainable_models: {model} has no sub-module {sub!r}; name one of its modules "
                          f"as DiffSynth does (dit.blocks.0.self_attn.q)") from None


def memory_plan(config: Config, source: str = "params.yaml") -> dict:
    """The memory plan of ``config`` as a JSON-ready dict (bytes are exact integers)."""
    from .data.dataset import split_keys
    from .families import spec_for
    from .models.fp8 import fp8_entries
    dtype_name = config.model.torch_dtype
    size = DTYPE_BYTES[dtype_name]
    entries = {e.component: e for e in model_entries(config)}
    fp8 = fp8_entries(config.model.fp8_models)
    unknown = fp8 - {e.source for e in entries.values()}
    if unknown:
        raise ConfigError(f"model.fp8_models entries {sorted(unknown)} are not model entries; write them exactly as "
                          f"in the model flags: {sorted(e.source for e in entries.values())}")
    full = split_keys(config.train.trainable_models)
    # a dotted name trains one sub-module of a model (DiffSynth's dit.blocks.0.self_attn.q)
    full_modules = {name: _trained_module(entries, name) for name in full}
    full_models = {name.split(".")[0] for name in full}

    models, parts = {}, {}
    for component, e in entries.items():
        in_fp8 = e.source in fp8 and component not in full_models  # trained parameters are never fp8
        n, b = weight_bytes(e.module, size, in_fp8)
        models[component] = {"entry": e.source, "architecture": e.architecture, "parameters": n, "bytes": b,
                             "fp8": in_fp8}
        if component == "vae":
            for part, mine, other in (("encoder", VAE_ENCODER, VAE_DECODER), ("decoder", VAE_DECODER, VAE_ENCODER)):
                pn, pb = weight_bytes(_vae_part(e.module, mine, other), size, in_fp8)
                parts[f"vae.{part}"] = {"parameters": pn, "bytes": pb}
                models[component][part] = {"parameters": pn, "bytes": pb}

    lora, targets = {}, {}
    if config.lora.lora_base_model:
        targets = lora_modules(config, entries)
        lora_params = sum(config.lora.lora_rank * (i + o) for i, o in targets.values())
        lora = {"model": config.lora.lora_base_model, "rank": config.lora.lora_rank, "modules": len(targets),
                "parameters": lora_params, "bytes": lora_params * size}
    full_params = sum(p.numel() for p in {id(p): p for m in full_modules.values() for p in m.parameters()}.values())
    trainable_params = full_params + lora.get("parameters", 0)
    trainable_bytes = full_params * size + lora.get("bytes", 0)
    trained = full_models | ({config.lora.lora_base_model} if config.lora.lora_base_model else set())

    def held(what: dict[str, int]) -> dict:
        return {"models": what, "weights_bytes": sum(what.values())}

    def train_stage(what: dict[str, int]) -> dict:
        stage = held(what)
        stage.update({"lora_bytes": lora.get("bytes", 0), "trainable_parameters": trainable_params,
                      "trainable_bytes": trainable_bytes, "gradient_bytes": trainable_bytes,
                      "optimizer_bytes": 2 * trainable_bytes})
        stage["total_bytes"] = (stage["weights_bytes"] + stage["lora_bytes"] + stage["gradient_bytes"]
                                + stage["optimizer_bytes"])
        return stage

    # cache-stage models: the generic encoder names plus the family's own (FLUX.2's text_encoder_qwen3)
    encoder_names = set(ENCODERS) | set(spec_for(config).encoders)
    encoders = {c: models[c]["bytes"] for c in entries if c in encoder_names and c not in trained}
    if "vae" in entries:
        encoders["vae.encoder"] = parts["vae.encoder"]["bytes"]
    train_cached = {c: models[c]["bytes"] for c in entries if (c not in encoder_names and c != "vae") or c in trained}
    if "vae" in entries and "vae" not in trained:
        train_cached["vae.decoder"] = parts["vae.decoder"]["bytes"]
    cache = held(encoders)
    cache["total_bytes"] = cache["weights_bytes"]
    modes = {"cached": {"cache": cache, "train": train_stage(train_cached)},
             "online": {"train": train_stage({c: models[c]["bytes"] for c in entries})}}
    activations, memory_modes, fit = None, [], {}
    if "dit" in entries:
        from .plan_fit import activation_estimate, evaluate_modes
        video = bool(spec_for(config).data_rules(config).video_keys)
        side_models = [c for c in entries if c not in encoder_names and c not in ("dit", "vae")]
        activations = activation_estimate(config, entries, targets, full, video, side_models)
        g = config.gradient
        key = ("checkpointing_offload" if g.use_gradient_checkpointing_offload else
               "checkpointing" if g.use_gradient_checkpointing else "no_checkpointing")
        act = activations["total_bytes"][key] + (activations["fp8_upcast_bytes"][key] if models["dit"]["fp8"] else 0)
        for stages in modes.values():
            stages["train"]["activation_bytes"] = act
            stages["train"]["total_bytes"] += act
        memory_modes, fit = evaluate_modes({"models": models, "modes": modes}, entries, size, activations,
                                           "dit" in full_models)
    return {
        "params": str(source),
        "family": spec_for(config).name,
        "torch_dtype": dtype_name,
        "fp8_models": sorted(fp8),
        "current_mode": "cached" if config.cache.enabled else "online",
        "models": models,
        "lora": lora,
        "full_trainable": {"models": full, "parameters": full_params},
        "train_total_bytes": {mode: stages["train"]["total_bytes"] for mode, stages in modes.items()},
        "modes": modes,
        "activations": activations,
        "memory_modes": memory_modes,
        "fit": fit,
        "assumptions": ASSUMPTIONS + FIT_ASSUMPTIONS,
    }


def plan_for_file(path: str | Path, fp8_dit: bool = False, num_frames: int | None = None) -> dict:
    """The plan of a params file; ``fp8_dit`` adds the DiT entry to ``model.fp8_models`` (what ``--fp8`` does);
    ``num_frames`` replaces resolution.num_frames (shorter clips)."""
    config = load_plan_params(path)
    if num_frames:
        config.resolution.num_frames = num_frames
    if fp8_dit:
        config = with_fp8_dit(config)
    return memory_plan(config, source=str(path))


def with_fp8_dit(config: Config) -> Config:
    from .models.fp8 import fp8_entries
    dit = [e.source for e in model_entries(config) if e.component == "dit"]
    if not dit:
        raise ConfigError("--fp8: these model entries have no DiT")
    config.model.fp8_models = ",".join(sorted(fp8_entries(config.model.fp8_models) | set(dit)))
    return config


# ---------------------------------------------------------------------------------------------- printing

def gb(n: int) -> str:
    return f"{n / 1e9:.2f}"


def format_plan(plan: dict) -> str:
    """The plan as markdown: the models, then each stage of each mode."""
    lines = [f"## Memory plan: {plan['params']}",
             "",
             f"family {plan['family']}, {plan['torch_dtype']}, fp8: {', '.join(plan['fp8_models']) or 'none'}; "
             f"current mode: {plan['current_mode']}. GB = 10^9 bytes.",
             "",
             "| model | entry | architecture | parameters | GB |",
             "|---|---|---|---:|---:|"]
    for component, m in plan["models"].items():
        fp8 = " (fp8)" if m["fp8"] else ""
        lines.append(f"| {component}{fp8} | `{m['entry']}` | {m['architecture']} | {m['parameters']:,} | {gb(m['bytes'])} |")
        for part in ("encoder", "decoder"):
            if part in m:
                lines.append(f"| {component}.{part} | | | {m[part]['parameters']:,} | {gb(m[part]['bytes'])} |")
    lora = plan["lora"]
    if lora:
        lines += ["", f"LoRA on {lora['model']}: rank {lora['rank']}, {lora['modules']} Linear modules, "
                      f"{lora['parameters']:,} parameters ({gb(lora['bytes'])} GB)."]
    if plan["full_trainable"]["models"]:
        lines += ["", f"Fully trained: {', '.join(plan['full_trainable']['models'])} "
                      f"({plan['full_trainable']['parameters']:,} parameters)."]
    lines += ["", "| mode | stage | models held | weights | LoRA | gradients | optimizer | total GB |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    for mode, stages in plan["modes"].items():
        for stage, s in stages.items():
            held = ", ".join(s["models"]) or "-"
            lines.append(f"| {mode} | {stage} | {held} | {gb(s['weights_bytes'])} | {gb(s.get('lora_bytes', 0))} | "
                         f"{gb(s.get('gradient_bytes', 0))} | {gb(s.get('optimizer_bytes', 0))} | "
                         f"{gb(s['total_bytes'])} |")
    from .plan_fit import format_modes
    lines += format_modes(plan)
    lines += ["", "Assumptions: " + "; ".join(plan["assumptions"]) + "."]
    return "\n".join(lines) + "\n"


def format_summary(rows: list[tuple[str, dict, dict]]) -> str:
    """One line per params file: train-stage GB cached vs online, in model.torch_dtype and with the DiT in fp8."""
    lines = ["| preset | trained | cache stage | train, cached | train, online | train, cached, fp8 DiT | "
             "train, online, fp8 DiT |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, plan, fp8 in rows:
        lora = plan["lora"]
        trained = (f"LoRA r{lora['rank']} ({lora['parameters'] / 1e6:.0f}M)" if lora else
                   f"full {trained_names(plan['full_trainable']['models'])}")
        c, o = plan["modes"]["cached"], plan["modes"]["online"]
        fc, fo = fp8["modes"]["cached"], fp8["modes"]["online"]
        lines.append(f"| {name} | {trained} | {gb(c['cache']['total_bytes'])} | {gb(c['train']['total_bytes'])} | "
                     f"{gb(o['train']['total_bytes'])} | {gb(fc['train']['total_bytes'])} | "
                     f"{gb(fo['train']['total_bytes'])} |")
    return "\n".join(lines) + "\n"


SHORT_CLIP_FRAMES = 17


def memory_page(recipes: list, frames: int | None = None) -> str:
    """docs/memory.md: every real preset's fit table at its recipe settings, the video presets again with short
    clips, the ladder and the assumptions. Regenerate with ``diffsynth plan --params presets/*.yaml --summary
    --markdown docs/memory.md``."""
    plans = [(p.stem, plan_for_file(p)) for p in recipes]
    short = frames or SHORT_CLIP_FRAMES
    video = [(f"{name} ({short} frames)", plan_for_file(p, num_frames=short))
             for (name, plan), p in zip(plans, recipes) if plan["activations"] and plan["activations"]["tokens"]["frames"] > 1]
    ladder = "\n".join(f"{i}. {m.name().replace('swap -1', 'swap N (the smallest N that fits)')}"
                       for i, m in enumerate(LADDER, 1))
    return "\n".join([
        "# Will training fit my card? The memory plan",
        "",
        "<!-- generated by `diffsynth plan --params presets/*.yaml --summary --markdown docs/memory.md`; "
        "do not edit by hand -->",
        "",
        "`diffsynth plan` builds every model of a params file on the meta device (real sizes, no weights, no "
        "download), traces the real blocks of the DiT and of the models beside it (VACE, a ControlNet, the Animate "
        "adapter) at the recipe's resolution, frames and batch to count the activations autograd keeps, and evaluates each memory mode of the train stage against 24, 16 and 12 GB "
        "cards. The train stage writes the same plan to `reports/memory_plan.json`. For one preset in detail: "
        "`diffsynth plan --params presets/qwen-image-lora.yaml`.",
        "",
        "Each fit column names the cheapest mode combination that fits, its device total in GiB in brackets, "
        "and for block swap and CPU offload the bytes moved host to device per training step. The ladder, "
        "cheapest first (compute before precision, precision before transfers):",
        "",
        ladder,
        "",
        "Block swap is `train.blocks_to_swap: N`; the fp8 DiT is `model.fp8_models`; nf4 / int8 are "
        "`--quant_options` methods; checkpointing is `gradient.use_gradient_checkpointing`; the encoder cache is "
        "`cache.enabled`.",
        "",
        "## Every preset at its recipe's settings",
        "",
        format_fit_summary(plans),
        f"## Video presets with {short}-frame clips",
        "",
        "At the recipes' 49-81 frames the checkpointed block inputs and one block's activations of the 14B Wan "
        "DiTs exceed 16 GB on their own, whatever the weights' mode; shorter clips (`resolution.num_frames`) are "
        "what makes those cards usable:",
        "",
        format_fit_summary(video),
        "## Checking the estimate",
        "",
        "- `python benchmarks/activation_memory.py`: one real-width Qwen-Image block (3072 wide, random weights) "
        "on the CPU; the memory its forward adds and keeps, measured (RSS), against this estimate.",
        "- `python benchmarks/memory_gpu.py` (needs CUDA): planned and measured peaks "
        "(`torch.cuda.max_memory_allocated`) side by side for a few presets and modes.",
        "- `python benchmarks/offload.py`: disk offload of a real-width multi-block DiT against resident weights "
        "(peak RSS and step time).",
        "",
        "## Assumptions",
        "",
        *[f"- {a}" for a in FIT_ASSUMPTIONS],
        "",
    ])
