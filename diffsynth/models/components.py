"""Detecting what a model file set is (from key names and shapes, not a hash) and loading it.

DiffSynth identifies a file by an MD5 of its exact key:shape list, so a partial download or a saved full
fine-tune (a subset of the keys) becomes "Cannot detect the model type". Here a file set is recognised by
distinctive key patterns (one is enough), which layout it is in (diffusers/transformers, Black Forest Labs'
or Wan-AI's original names), and its architecture comes from ``config.json`` beside it or, failing that,
from the shapes. Foreign layouts are converted by the pure functions of ``convert_flux``/``convert_wan``.

Families: ``qwen_image`` (also Qwen-Image-Edit), ``flux``, ``wan``. Components use the pipeline attribute
names: ``dit``, ``vae``, ``text_encoder``, ``text_encoder_2`` (FLUX T5), ``image_encoder`` (Wan I2V CLIP).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch
from accelerate import init_empty_weights

from ..errors import DiffSynthError
from . import convert_flux as cf
from . import convert_wan as cw
from .model_config import ModelConfig
from .real_configs import QWEN25_VL_7B, REAL_MODELS
from .safetensors_io import check_shards, config_beside, load_state_dict, read_keys_and_shapes

class DetectionError(DiffSynthError, ValueError):
    pass


def check_model_family(family: str | None) -> str | None:
    """``family`` must be a family of these tables (a spec's ``model_family``; aliases are resolved by the spec)."""
    known = sorted({f for kind in KINDS for f in kind.families})
    if family is not None and family not in known:
        raise DetectionError(f"Unknown model-table family {family!r}; known: {', '.join(known)}")
    return family


def _identity(sd: dict, config: dict) -> dict:
    return sd


@dataclass(frozen=True)
class ComponentKind:
    name: str                    # e.g. flux_dit_bfl
    families: tuple              # families whose pipelines use this kind of file
    component: str               # pipeline attribute: dit, vae, text_encoder, text_encoder_2, image_encoder
    layout: str                  # diffusers | transformers | bfl | wan
    markers: tuple               # regexes; a file set with a key matching any of them is this kind
    make_config: Callable        # (shapes, config beside or None, family) -> config
    build: Callable              # (config, family) -> module (call under init_empty_weights)
    to_model_keys: Callable = _identity   # (checkpoint state dict, config) -> module names
    accepts: Callable = staticmethod(lambda shapes: True)   # shape test that rules out look-alikes

    @property
    def family(self) -> str:
        return self.families[0]

    def matches(self, shapes: dict) -> bool:
        return any(re.search(p, k) for p in self.markers for k in shapes) and self.accepts(shapes)


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
            return self.kind.build(self.config, self.family)


# ----------------------------------------------------------------------------------------------- builders

def _diffusers(name: str):
    def build(config: dict, family: str):
        import diffusers
        return getattr(diffusers, name).from_config(config)
    return build


def _transformers(model: str, config_cls: str):
    def build(config: dict, family: str):
        import transformers
        cfg = getattr(transformers, config_cls)(**{k: v for k, v in config.items() if k != "_name_or_path"})
        return getattr(transformers, model)(cfg)
    return build


def _build_wan_arch_vae(config: dict, family: str):
    import diffusers
    cls = diffusers.AutoencoderKLQwenImage if family == "qwen_image" else diffusers.AutoencoderKLWan
    return cls.from_config(config)


# ------------------------------------------------------------------------------------------ config makers

def _beside_or(infer: Callable):
    def make(shapes: dict, beside: dict | None, family: str) -> dict:
        return beside if beside is not None else infer(shapes)
    return make


def _qwen_dit_config(shapes: dict) -> dict:
    inner, in_channels = shapes["img_in.weight"]
    head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"transformer_blocks\.(\d+)\.", k)))
    patch = 2
    return {"patch_size": patch, "in_channels": in_channels, "out_channels": shapes["proj_out.weight"][0] // patch ** 2,
            "num_layers": layers, "attention_head_dim": head_dim, "num_attention_heads": inner // head_dim,
            "joint_attention_dim": shapes["txt_in.weight"][1], "guidance_embeds": False,
            "axes_dims_rope": cf.rope_axes(head_dim)}


def _wan_arch_vae_config(shapes: dict, beside: dict | None, family: str) -> dict:
    config = beside if beside is not None else cw.wan_vae_config(shapes)
    if family == "qwen_image" and (config.get("is_residual") or config.get("z_dim", 16) != 16):
        raise DetectionError("This VAE is a Wan2.2 VAE (48 latent channels, residual blocks), not a Qwen-Image VAE")
    if family == "qwen_image":
        config = {k: v for k, v in config.items() if k not in ("is_residual", "decoder_base_dim", "in_channels",
                                                                "out_channels", "patch_size", "scale_factor_spatial",
                                                                "scale_factor_temporal")}
    return config


def _qwen_te_config(shapes: dict, beside: dict | None, family: str) -> dict:
    if beside is not None:
        return beside
    emb = shapes.get("model.embed_tokens.weight") or shapes.get("model.language_model.embed_tokens.weight")
    if emb == (152064, 3584):
        return QWEN25_VL_7B  # Qwen-Image's text encoder is Qwen2.5-VL-7B-Instruct
    raise DetectionError("A Qwen2.5-VL text encoder of a size other than 7B needs its config.json beside it "
                         "(text_encoder/config.json of the repository)")


def _clip_text_config(shapes: dict) -> dict:
    vocab, hidden = shapes["text_model.embeddings.token_embedding.weight"]
    layers = 1 + max(int(m[1]) for k in shapes if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k)))
    return {"model_type": "clip_text_model", "vocab_size": vocab, "hidden_size": hidden,
            "intermediate_size": shapes["text_model.encoder.layers.0.mlp.fc1.weight"][0],
            "num_hidden_layers": layers, "num_attention_heads": max(1, hidden // 64),
            "max_position_embeddings": shapes["text_model.embeddings.position_embedding.weight"][0],
            "hidden_act": "quick_gelu", "projection_dim": hidden}


def _t5_config(shapes: dict) -> dict:
    vocab, d_model = shapes["shared.weight"] if "shared.weight" in shapes else shapes["encoder.embed_tokens.weight"]
    layers = 1 + max(int(m[1]) for k in shapes if (m := re.match(r"encoder\.block\.(\d+)\.", k)))
    buckets, heads = shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    umt5 = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in shapes
    return {"model_type": "umt5" if umt5 else "t5", "vocab_size": vocab, "d_model": d_model,
            "d_kv": shapes["encoder.block.0.layer.0.SelfAttention.q.weight"][0] // heads,
            "d_ff": shapes["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"][0], "num_layers": layers,
            "num_heads": heads, "relative_attention_num_buckets": buckets, "relative_attention_max_distance": 128,
            "feed_forward_proj": "gated-gelu", "is_gated_act": True, "dense_act_fn": "gelu_new",
            "tie_word_embeddings": False}


def _hf_clip_vision_config(shapes: dict) -> dict:
    meta = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    return cw.wan_clip_config({k: tuple(v.shape) for k, v in cw.hf_to_wan_clip(meta).items()})


def _wan_dit_config(shapes: dict, beside: dict | None, family: str) -> dict:
    if beside is not None and beside.get("_class_name") == "WanTransformer3DModel":
        return beside
    return cw.wan_dit_config(shapes, beside)  # beside may be Wan-AI's own config.json (dim, num_heads, ...)


def _is_5d(key: str):
    return lambda shapes: key not in shapes or len(shapes[key]) == 5


def _not_umt5(shapes):
    return "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in shapes


def _is_umt5(shapes):
    return not _not_umt5(shapes)


# -------------------------------------------------------------------------------------------------- kinds
KINDS = [
    # Qwen-Image
    ComponentKind("qwen_image_dit", ("qwen_image",), "dit", "diffusers",
                  (r"^transformer_blocks\.\d+\.(img|txt)_mod\.", r"^txt_norm\.", r"^transformer_blocks\.\d+\.(img|txt)_mlp\."),
                  _beside_or(_qwen_dit_config), _diffusers("QwenImageTransformer2DModel")),
    ComponentKind("qwen_image_text_encoder", ("qwen_image",), "text_encoder", "transformers",
                  (r"^model\.embed_tokens\.", r"^visual\.patch_embed\.", r"^visual\.blocks\.", r"^model\.language_model\.",
                   r"^model\.visual\.", r"^model\.layers\.\d+\.self_attn\.[qkv]_proj"),
                  _qwen_te_config, _transformers("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLConfig"),
                  lambda sd, c: qwen_vl_checkpoint_to_model(sd)),
    # Wan-architecture VAE in diffusers names: Qwen-Image's VAE and Wan's VAE 2.1 share it exactly
    ComponentKind("wan_arch_vae", ("qwen_image", "wan"), "vae", "diffusers",
                  (r"^(en|de)coder\.(down|up)_blocks\.\d+\..*gamma$", r"^(en|de)coder\.mid_block\.resnets\.\d+\.norm1\.gamma"),
                  _wan_arch_vae_config, _build_wan_arch_vae, accepts=_is_5d("encoder.conv_in.weight")),
    # FLUX.1
    ComponentKind("flux_dit_bfl", ("flux",), "dit", "bfl",
                  (r"^(model\.diffusion_model\.)?double_blocks\.\d+\.", r"^(model\.diffusion_model\.)?single_blocks\.\d+\."),
                  lambda s, b, f: cf.flux_dit_config({k.replace("model.diffusion_model.", ""): v for k, v in s.items()}),
                  _diffusers("FluxTransformer2DModel"), lambda sd, c: cf.bfl_dit_to_diffusers(sd)),
    ComponentKind("flux_dit", ("flux",), "dit", "diffusers",
                  (r"^single_transformer_blocks\.\d+\.", r"^transformer_blocks\.\d+\.norm1_context\.", r"^x_embedder\.",
                   r"^time_text_embed\."),
                  _beside_or(cf.flux_dit_config), _diffusers("FluxTransformer2DModel")),
    ComponentKind("flux_vae_bfl", ("flux",), "vae", "bfl",
                  (r"^(en|de)coder\.(down|up)\.\d+\.block\.", r"^(en|de)coder\.mid\.(attn_1|block_\d)\."),
                  lambda s, b, f: cf.flux_vae_config(s, bfl=True), _diffusers("AutoencoderKL"),
                  lambda sd, c: cf.bfl_vae_to_diffusers(sd), accepts=lambda s: len(s.get("encoder.conv_in.weight", (0,) * 4)) == 4),
    ComponentKind("flux_vae", ("flux",), "vae", "diffusers",
                  (r"^(en|de)coder\.(down|up)_blocks\.\d+\.resnets\.\d+\.norm1\.weight", r"^(en|de)coder\.conv_norm_out\.",
                   r"^(en|de)coder\.mid_block\.attentions\.0\.group_norm\."),
                  _beside_or(lambda s: cf.flux_vae_config(s, bfl=False)), _diffusers("AutoencoderKL"),
                  accepts=lambda s: len(s.get("encoder.conv_in.weight", (0,) * 4)) == 4),
    ComponentKind("clip_text", ("flux",), "text_encoder", "transformers", (r"^text_model\.",),
                  _beside_or(_clip_text_config), _transformers("CLIPTextModel", "CLIPTextConfig"),
                  lambda sd, c: {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in sd.items()}),
    ComponentKind("t5_encoder", ("flux",), "text_encoder_2", "transformers",
                  (r"^encoder\.block\.\d+\.layer\.\d+\.", r"^shared\.weight$"),
                  _beside_or(_t5_config), _transformers("T5EncoderModel", "T5Config"), accepts=_not_umt5),
    # Wan2.1 / 2.2
    ComponentKind("wan_dit_original", ("wan",), "dit", "wan",
                  (r"^(model\.diffusion_model\.)?blocks\.\d+\.(self_attn|cross_attn)\.", r"^(model\.diffusion_model\.)?head\.head\.",
                   r"^(model\.diffusion_model\.)?time_projection\."),
                  _wan_dit_config, _diffusers("WanTransformer3DModel"), lambda sd, c: cw.wan_dit_to_diffusers(sd)),
    ComponentKind("wan_dit", ("wan",), "dit", "diffusers",
                  (r"^blocks\.\d+\.attn[12]\.", r"^condition_embedder\."),
                  _wan_dit_config, _diffusers("WanTransformer3DModel")),
    ComponentKind("wan_vae_original", ("wan",), "vae", "wan",
                  (r"^(en|de)coder\.(downsamples|upsamples|middle)\.\d+\.",),
                  lambda s, b, f: cw.wan_vae_config(s), _diffusers("AutoencoderKLWan"),
                  lambda sd, c: cw.wan_vae_to_diffusers(sd, c["num_res_blocks"])),
    ComponentKind("umt5_original", ("wan",), "text_encoder", "wan",
                  (r"^token_embedding\.", r"^blocks\.\d+\.attn\.[qkvo]\.", r"^blocks\.\d+\.ffn\.(gate|fc1|fc2)\.",
                   r"^blocks\.\d+\.pos_embedding\."),
                  lambda s, b, f: cw.umt5_config(s), _transformers("UMT5EncoderModel", "UMT5Config"),
                  lambda sd, c: cw.wan_t5_to_hf(sd)),
    ComponentKind("umt5", ("wan",), "text_encoder", "transformers",
                  (r"^encoder\.block\.\d+\.layer\.\d+\.",),
                  _beside_or(_t5_config), _transformers("UMT5EncoderModel", "UMT5Config"), accepts=_is_umt5),
    ComponentKind("wan_clip_original", ("wan",), "image_encoder", "wan",
                  (r"^visual\.transformer\.\d+\.", r"^visual\.cls_embedding$", r"^log_scale$"),
                  lambda s, b, f: cw.wan_clip_config(s),
                  _transformers("CLIPVisionModelWithProjection", "CLIPVisionConfig"), lambda sd, c: cw.wan_clip_to_hf(sd)),
    ComponentKind("wan_clip", ("wan",), "image_encoder", "transformers",
                  (r"^vision_model\.encoder\.layers\.\d+\.", r"^visual_projection\."),
                  _beside_or(_hf_clip_vision_config), _transformers("CLIPVisionModelWithProjection", "CLIPVisionConfig")),
]


# Qwen2.5-VL checkpoints name the language model `model.*` and the vision tower `visual.*`; transformers 5
# nests both under `model.` (`model.language_model.*`, `model.visual.*`).
def qwen_vl_checkpoint_to_model(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if k.startswith("visual."):
            k = "model." + k
        elif k.startswith("model.") and not k.startswith(("model.language_model.", "model.visual.")):
            k = "model.language_model." + k[len("model."):]
        out[k] = v
    return out


def qwen_vl_model_to_checkpoint(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if k.startswith("model.visual."):
            k = k[len("model."):]
        elif k.startswith("model.language_model."):
            k = "model." + k[len("model.language_model."):]
        out[k] = v
    return out


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


def name_variant(kind: ComponentKind, config: dict, family: str) -> str:
    """The REAL_MODELS name(s) with this architecture (``a = b`` when two releases share it), else ``custom``."""
    names = [name for name, entry in REAL_MODELS.items()
             if entry["component"] == kind.component and entry["family"] == family
             and _same_architecture(entry["config"], config)]
    return " = ".join(names) if names else f"custom {kind.name}"


def _describe(files: list[str]) -> str:
    return str(files[0]) + (f" (+{len(files) - 1} shards)" if len(files) > 1 else "")


def detect_shapes(shapes: dict, family: str | None = None, beside: dict | None = None,
                  where: str = "the state dict") -> Detected:
    """Detect kind, family and architecture from a key -> shape mapping (no file needed: meta-device tests)."""
    family = check_model_family(family)
    found = [k for k in KINDS if k.matches(shapes)]
    if not found:
        sample = ", ".join(sorted(shapes)[:8])
        known = ", ".join(f"{'/'.join(k.families)} {k.component} ({k.layout} names)" for k in KINDS)
        raise DetectionError(f"Cannot tell which model {where} is. Its first keys: {sample or '(no tensors)'}. "
                             f"Known kinds: {known}.")
    usable = [k for k in found if family is None or family in k.families]
    if not usable:
        k = found[0]
        raise DetectionError(f"{where} is a {'/'.join(k.families)} {k.component} ({k.name}), not part of a {family} "
                             f"model: check model.family and the model paths.")
    kind = usable[0]
    use_family = family or kind.families[-1 if kind.name == "wan_arch_vae" and beside is None else 0]
    if kind.name == "wan_arch_vae" and family is None and beside is not None:
        use_family = "qwen_image" if beside.get("_class_name") == "AutoencoderKLQwenImage" else "wan"
    try:
        config = kind.make_config(shapes, beside, use_family)
    except KeyError as e:
        raise DetectionError(f"{where} looks like a {use_family} {kind.component} ({kind.name}) but lacks {e} needed "
                             "to infer its architecture; put the repository's config.json beside it") from None
    return Detected(kind, use_family, dict(config), name_variant(kind, config, use_family))


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
                return d.kind.build(d.config, d.family)
    raise DetectionError(f"No {family} {component} among the model entries {[c.source_string for c in configs]}")
