"""Detecting what a model file set is (from key names and shapes, not a hash) and loading it.

DiffSynth identifies a file by an MD5 of its exact key:shape list, so a partial download or a saved full
fine-tune (a subset of the keys) becomes "Cannot detect the model type". Here a file set is recognised by
distinctive key patterns (one is enough), which layout it is in (diffusers/transformers, Black Forest Labs'
or Wan-AI's original names), and its architecture comes from ``config.json`` beside it or, failing that,
from the shapes. Foreign layouts are converted by the pure functions each family declares with its kinds.

The kinds of checkpoint file are declared by each family (``Family.component_kinds``) and registered here when
the family registers (``register_kinds``); this module names no family. Components use the pipeline attribute
names: ``dit``, ``vae``, ``text_encoder``, ``text_encoder_2``, ``image_encoder``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch
from accelerate import init_empty_weights

from ..errors import DiffSynthError
from .model_config import ModelConfig
from .real_configs import REAL_MODELS
from .safetensors_io import check_shards, config_beside, load_state_dict, read_keys_and_shapes

class DetectionError(DiffSynthError, ValueError):
    pass


KINDS: list = []  # every registered ComponentKind, in registration order


def register_kinds(kinds) -> None:
    """Add a family's checkpoint kinds (called by the family registry)."""
    KINDS.extend(k for k in kinds if k not in KINDS)


def check_model_family(family: str | None) -> str | None:
    """``family`` must be a family that registered kinds (a family's ``model_family``)."""
    known = sorted({kind.family for kind in KINDS})
    if family is not None and family not in known:
        raise DetectionError(f"Unknown checkpoint family {family!r}; known: {', '.join(known) or 'none registered'}"
                             " (import diffsynth.families to register them)")
    return family


def _identity(sd: dict, config: dict) -> dict:
    return sd


@dataclass(frozen=True)
class ComponentKind:
    name: str                    # e.g. the family name + component + layout
    family: str                  # the family whose pipelines use this kind of file
    component: str               # pipeline attribute: dit, vae, text_encoder, text_encoder_2, image_encoder
    layout: str                  # diffusers | transformers | bfl | wan
    markers: tuple               # regexes; a file set with a key matching any of them is this kind
    make_config: Callable        # (shapes, config beside or None) -> config
    build: Callable              # config -> module (call under init_empty_weights)
    to_model_keys: Callable = _identity   # (checkpoint state dict, config) -> module names
    accepts: Callable = staticmethod(lambda shapes, beside: True)   # rules out look-alikes (shapes, config beside)

    def matches(self, shapes: dict, beside: dict | None = None) -> bool:
        return any(re.search(p, k) for p in self.markers for k in shapes) and self.accepts(shapes, beside)


@dataclass
class Detected:
    kind: ComponentKind
    family: str
    config: dict
    variant: str                 # the REAL_MODELS name whose architecture this is, or "custom ..."
    files: list = field(default_factory=list)

    @property
    def component(self) -> str:
        return self.kind.component

    def build(self) -> torch.nn.Module:
        with init_empty_weights(include_buffers=False):  # parameters on meta: no memory for the random init
            return self.kind.build(self.config)


# ------------------------------------------------------------------------ builders and config makers (generic)

def diffusers_class(name: str):
    """A builder of the diffusers model class ``name`` from its config."""
    def build(config: dict):
        import diffusers
        return getattr(diffusers, name).from_config(config)
    return build


def transformers_class(model: str, config_cls: str):
    """A builder of the transformers model class ``model`` from a ``config_cls`` config dict."""
    def build(config: dict):
        import transformers
        cfg = getattr(transformers, config_cls)(**{k: v for k, v in config.items() if k != "_name_or_path"})
        return getattr(transformers, model)(cfg)
    return build


def beside_or(infer: Callable):
    """A config maker: the config.json beside the weights, else ``infer(shapes)``."""
    def make(shapes: dict, beside: dict | None) -> dict:
        return beside if beside is not None else infer(shapes)
    return make


def rope_axes(head_dim: int) -> list[int]:
    """The (t, h, w) RoPE split of MMDiTs: the official (16, 56, 56) at head_dim 128, scaled (even sizes) else."""
    a = max(2, (head_dim // 8) // 2 * 2)
    b = ((head_dim - a) // 2) // 2 * 2
    return [a, b, head_dim - a - b]


def clip_text_config(shapes: dict) -> dict:
    """A CLIP text encoder's config from its transformers key shapes."""
    vocab, hidden = shapes["text_model.embeddings.token_embedding.weight"]
    layers = 1 + max(int(m[1]) for k in shapes if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k)))
    return {"model_type": "clip_text_model", "vocab_size": vocab, "hidden_size": hidden,
            "intermediate_size": shapes["text_model.encoder.layers.0.mlp.fc1.weight"][0],
            "num_hidden_layers": layers, "num_attention_heads": max(1, hidden // 64),
            "max_position_embeddings": shapes["text_model.embeddings.position_embedding.weight"][0],
            "hidden_act": "quick_gelu", "projection_dim": hidden}


def is_umt5(shapes) -> bool:
    """UMT5 has a relative-attention bias in every block; T5 only in the first."""
    return "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in shapes


def t5_config(shapes: dict) -> dict:
    """A T5 / UMT5 encoder's config from its transformers key shapes."""
    vocab, d_model = shapes["shared.weight"] if "shared.weight" in shapes else shapes["encoder.embed_tokens.weight"]
    layers = 1 + max(int(m[1]) for k in shapes if (m := re.match(r"encoder\.block\.(\d+)\.", k)))
    buckets, heads = shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    return {"model_type": "umt5" if is_umt5(shapes) else "t5", "vocab_size": vocab, "d_model": d_model,
            "d_kv": shapes["encoder.block.0.layer.0.SelfAttention.q.weight"][0] // heads,
            "d_ff": shapes["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"][0], "num_layers": layers,
            "num_heads": heads, "relative_attention_num_buckets": buckets, "relative_attention_max_distance": 128,
            "feed_forward_proj": "gated-gelu", "is_gated_act": True, "dense_act_fn": "gelu_new",
            "tie_word_embeddings": False}


def video_vae_config(shapes: dict) -> dict:
    """The config of diffusers' causal 3-D video VAE class (``AutoencoderKLWan``, also Qwen-Image's VAE) from its
    key shapes: plain (z 16) or residual (z 48) blocks; latent statistics 0/1 where the release's are not known."""
    residual = any(re.match(r"encoder\.down_blocks\.\d+\.resnets\.", k) for k in shapes)
    base, in_ch = shapes["encoder.conv_in.weight"][:2]
    z = shapes["post_quant_conv.weight"][0]
    out_ch = shapes["decoder.conv_out.weight"][0]
    if residual:
        stages = 1 + max(int(m[1]) for k in shapes if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k)))
        nrb = 1 + max(int(m[1]) for k in shapes if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k)))
        mult = [shapes[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"][0] // base for i in range(stages)]
        temporal = [f"encoder.down_blocks.{i}.downsampler.time_conv.weight" in shapes for i in range(stages - 1)]
    else:
        nrb = 0
        while f"encoder.down_blocks.{nrb}.conv1.weight" in shapes:
            nrb += 1
        idx = sorted({int(m[1]) for k in shapes if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
        mult = [shapes[f"encoder.down_blocks.{j}.conv2.weight"][0] // base for j in idx if j % (nrb + 1) == 0]
        temporal = [f"encoder.down_blocks.{i * (nrb + 1) + nrb}.time_conv.weight" in shapes
                    for i in range(len(mult) - 1)]
    dec_base = shapes["decoder.conv_in.weight"][0] // mult[-1]
    config = {"base_dim": base, "z_dim": z, "dim_mult": mult, "num_res_blocks": nrb, "attn_scales": [],
              "temperal_downsample": temporal}
    if residual:
        config.update(is_residual=True, decoder_base_dim=dec_base, in_channels=in_ch, out_channels=out_ch,
                      patch_size=2 if in_ch == 12 else None, scale_factor_spatial=16, scale_factor_temporal=4,
                      latents_mean=[0.0] * z, latents_std=[1.0] * z)
    elif z != 16:
        config.update(latents_mean=[0.0] * z, latents_std=[1.0] * z)
    return config


def is_5d(key: str):
    """An ``accepts`` test: ``key`` is absent or a 5-d (video) convolution."""
    return lambda shapes, beside: key not in shapes or len(shapes[key]) == 5


def is_4d(key: str):
    """An ``accepts`` test: ``key`` is absent or a 4-d (image) convolution."""
    return lambda shapes, beside: len(shapes.get(key, (0,) * 4)) == 4


# ---------------------------------------------------------------------------------------------- detection

def _norm(v):
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return v


def _same_architecture(real: dict, config: dict) -> bool:
    for key, value in real.items():
        if key in ("latents_mean", "latents_std", "architectures", "bos_token_id", "eos_token_id", "pad_token_id",
                   "_class_name", "rope_max_seq_len") or key not in config:
            continue
        if isinstance(value, dict):
            other = config[key] if isinstance(config[key], dict) else getattr(config[key], "to_dict", lambda: {})()
            if not _same_architecture(value, other):
                return False
        elif _norm(value) != _norm(config[key]):
            return False
    return True


def _extra_part(real: dict, config: dict) -> bool:
    """One of the two holds a sub-model the other does not name (Wan2.2-Animate's ``animate_adapter`` beside the
    image-to-video DiT's keys): another architecture, though every key both name agrees."""
    return any(isinstance(value, dict) and key not in other
               for one, other in ((config, real), (real, config)) for key, value in one.items())


def name_variant(kind: ComponentKind, config: dict) -> str:
    """The REAL_MODELS name(s) with this architecture (``a = b`` when two releases share it), else ``custom``."""
    names = [name for name, entry in REAL_MODELS.items()
             if entry["component"] == kind.component and entry["family"] == kind.family
             and _same_architecture(entry["config"], config) and not _extra_part(entry["config"], config)]
    return " = ".join(names) if names else f"custom {kind.name}"


def _describe(files: list[str]) -> str:
    return str(files[0]) + (f" (+{len(files) - 1} shards)" if len(files) > 1 else "")


def detect_shapes(shapes: dict, family: str | None = None, beside: dict | None = None,
                  where: str = "the state dict") -> Detected:
    """Detect kind, family and architecture from a key -> shape mapping (no file needed: meta-device tests)."""
    family = check_model_family(family)
    found = [k for k in KINDS if k.matches(shapes, beside)]
    if not found:
        sample = ", ".join(sorted(shapes)[:8])
        known = ", ".join(f"{k.family} {k.component} ({k.layout} names)" for k in KINDS)
        raise DetectionError(f"Cannot tell which model {where} is. Its first keys: {sample or '(no tensors)'}. "
                             f"Known kinds: {known}.")
    usable = [k for k in found if family is None or k.family == family]
    if not usable:
        k = found[0]
        raise DetectionError(f"{where} is a {k.family} {k.component} ({k.name}), not part of a {family} "
                             f"model: check model.family and the model paths.")
    kind = usable[0]
    try:
        config = kind.make_config(shapes, beside)
    except KeyError as e:
        raise DetectionError(f"{where} looks like a {kind.family} {kind.component} ({kind.name}) but lacks {e} "
                             "needed to infer its architecture; put the repository's config.json beside it") from None
    return Detected(kind, kind.family, dict(config), name_variant(kind, config))


def detect(files: list[str], family: str | None = None) -> Detected:
    check_shards(files)
    return _with_files(detect_shapes(read_keys_and_shapes(files), family, config_beside(files), _describe(files)), files)


def _with_files(d: Detected, files: list[str]) -> Detected:
    d.files = list(files)
    return d


# ------------------------------------------------------------------------------------------------ loading

def match_state_dict(module: torch.nn.Module, state: dict) -> tuple[list, list, list]:
    """(missing, unexpected, shape mismatches) of ``state`` against ``module``; tied aliases count as present."""
    expected = module.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}
    for name, t in expected.items():
        groups.setdefault(id(t), []).append(name)
    tied = getattr(module, "_tied_weights_keys", None)
    if isinstance(tied, dict):  # transformers 5: {alias: source}, tied again by tie_weights() after loading
        for alias, source in tied.items():
            if alias in expected and source in expected:
                groups.setdefault(id(expected[source]), []).append(alias)
                groups[id(expected[alias])] = groups[id(expected[source])]
    missing = sorted(k for k in expected if k not in state and not any(a in state for a in groups[id(expected[k])]))
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                        for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape))
    return missing, unexpected, mismatched


def _check(where: str, d: Detected, missing, unexpected, mismatched) -> None:
    if missing or unexpected or mismatched:
        hint = ("A shard may be missing from the list or pattern, or this is a partial (fine-tuned) state dict: "
                "load the full base model." if missing else "The config beside the file may not belong to it.")
        raise DetectionError(
            f"{where}: detected a {d.family} {d.component} ({d.kind.name}, {d.variant}) but its keys do not match "
            f"that architecture: {len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}), {len(mismatched)} of another shape (e.g. {mismatched[:2]}). {hint}")


def plan_shapes(shapes: dict, family: str | None = None, beside: dict | None = None) -> tuple[Detected, torch.nn.Module, tuple]:
    """Detect, build on meta and key-match a shape list without any data (for full-size checks in tests)."""
    d = detect_shapes(shapes, family, beside)
    module = d.build()
    state = d.kind.to_model_keys({k: torch.empty(v, device="meta") for k, v in shapes.items()}, d.config)
    return d, module, match_state_dict(module, state)


# What a stage that holds only part of a model keeps (VAE: encoder for the cache stage, decoder for training).
VAE_PARTS = {"encoder": ("encoder", "quant_conv"), "decoder": ("decoder", "post_quant_conv")}


def load_component(config: ModelConfig, family: str, dtype: torch.dtype,
                   how: Callable[[str], str] = lambda component: "load") -> tuple[str, torch.nn.Module | None]:
    """Detect and load one fetched model entry; returns (pipeline attribute, module in eval mode).

    ``how(component)`` decides from the detected component (key names only, no weights read): ``"load"``;
    ``"skip"`` (nothing built: module None); ``"meta"`` (architecture on the meta device, no weights: its config
    and shapes without the memory); ``"vae:encoder"`` / ``"vae:decoder"`` (only that half of a VAE is loaded;
    the other half stays an empty shell on the meta device, outside the module tree: no weights, no memory,
    invisible to ``.to()``/``parameters()``/DDP, while diffusers' VAE code that walks both halves still works)."""
    files = config.weight_files()
    d = detect(files, family)
    mode = how(d.component)
    if mode == "skip":
        return d.component, None
    module = d.build()
    if mode == "meta":
        return d.component, module.eval().requires_grad_(False)
    state = d.kind.to_model_keys(load_state_dict(files, dtype), d.config)
    missing_ok: tuple[str, ...] = ()
    if mode.startswith("vae:"):
        keep = VAE_PARTS[mode.split(":", 1)[1]]
        unused = [name for parts in VAE_PARTS.values() for name in parts if name not in keep]
        missing_ok = tuple(f"{name}." for name in unused)
        state = {k: v for k, v in state.items() if not k.startswith(missing_ok)}
        for name in unused:
            if name in module._modules:
                module.__dict__[name] = module._modules.pop(name)  # attribute access still finds it
    missing, unexpected, mismatched = match_state_dict(module, state)
    _check(config.source_string or _describe(files), d, [k for k in missing if not k.startswith(missing_ok)],
           unexpected, mismatched)
    module.load_state_dict(state, strict=False, assign=True)
    if isinstance(getattr(module, "_tied_weights_keys", None), dict) and hasattr(module, "tie_weights"):
        module.tie_weights()  # e.g. T5's encoder.embed_tokens is shared.weight
    # parameters already carry `dtype` from the state dict; buffers (rope tables) keep their own precision
    return d.component, module.eval().requires_grad_(False)


def load_tokenizer(config: ModelConfig):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(config.files()[0])


def empty_component(configs: list[ModelConfig], family: str, component: str) -> torch.nn.Module:
    """The architecture of ``component`` (e.g. ``dit``) among fetched ``configs``, on the meta device.

    Enough to check which module names and shapes exist, without reading any weights.
    """
    for config in configs:
        d = detect(config.weight_files(), family)
        if d.component == component:
            with init_empty_weights():
                return d.kind.build(d.config)
    raise DetectionError(f"No {family} {component} among the model entries {[c.source_string for c in configs]}")
