"""Detecting what a model file set is (from key names and shapes, not a hash) and loading it.

DiffSynth identifies a file by an MD5 of its exact key:shape list, so a partial download or a saved full
fine-tune (a subset of the keys) becomes "Cannot detect the model type". Here a file set is recognised by
distinctive keys, and its architecture comes from ``config.json`` beside it or, failing that, from shapes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from accelerate import init_empty_weights

from .model_config import ModelConfig
from .safetensors_io import config_beside, load_state_dict, read_keys_and_shapes


class DetectionError(ValueError):
    pass


@dataclass(frozen=True)
class ComponentKind:
    family: str
    component: str          # pipeline attribute: dit, vae, text_encoder
    marker_keys: tuple      # a file set holding any of these keys is this kind
    builder: Callable       # (config dict | None, shapes) -> empty module
    to_model_keys: Callable = staticmethod(lambda sd: sd)   # checkpoint names -> module names


# ------------------------------------------------------------------------------- Qwen-Image

def _qwen_dit_config(shapes: dict) -> dict:
    """Infer a QwenImageTransformer2DModel config from checkpoint shapes (no config.json beside the file)."""
    inner, in_channels = shapes["img_in.weight"]
    head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"transformer_blocks\.(\d+)\.", k)))
    patch = 2
    return {
        "patch_size": patch, "in_channels": in_channels, "out_channels": shapes["proj_out.weight"][0] // patch ** 2,
        "num_layers": layers, "attention_head_dim": head_dim, "num_attention_heads": inner // head_dim,
        "joint_attention_dim": shapes["txt_in.weight"][1],
        # the official split of head_dim 128 is (16, 56, 56); scale it for other head sizes
        "axes_dims_rope": [head_dim // 8, head_dim * 7 // 16, head_dim * 7 // 16],
    }


def _build_qwen_dit(config: dict | None, shapes: dict):
    from diffusers import QwenImageTransformer2DModel
    config = config or _qwen_dit_config(shapes)
    return QwenImageTransformer2DModel.from_config(config)


def _build_qwen_vae(config: dict | None, shapes: dict):
    from diffusers import AutoencoderKLQwenImage
    if config is None:
        raise DetectionError("A Qwen-Image VAE file needs its config.json beside it (vae/config.json of the repo)")
    return AutoencoderKLQwenImage.from_config(config)


def _build_qwen_text_encoder(config: dict | None, shapes: dict):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    if config is None:
        raise DetectionError("A Qwen2.5-VL text encoder needs its config.json beside it (text_encoder/config.json)")
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**config))


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


KINDS = [
    ComponentKind("qwen_image", "dit", ("img_in.weight", "txt_norm.weight", "transformer_blocks.0.img_mod.1.weight"),
                  _build_qwen_dit),
    ComponentKind("qwen_image", "vae", ("encoder.conv_in.weight", "decoder.conv_in.weight"), _build_qwen_vae),
    ComponentKind("qwen_image", "text_encoder", ("model.embed_tokens.weight", "visual.patch_embed.proj.weight",
                                                 "model.language_model.embed_tokens.weight"),
                  _build_qwen_text_encoder, qwen_vl_checkpoint_to_model),
]


def detect(files: list[str], family: str) -> ComponentKind:
    shapes = read_keys_and_shapes(files)
    for kind in KINDS:
        if kind.family == family and any(k in shapes for k in kind.marker_keys):
            return kind
    sample = ", ".join(sorted(shapes)[:8])
    known = ", ".join(f"{k.family}/{k.component}" for k in KINDS)
    raise DetectionError(f"Cannot tell which {family} model {files[0]}{' (+%d shards)' % (len(files) - 1) if len(files) > 1 else ''} "
                         f"is. Its first keys: {sample or '(no tensors)'}. Known kinds: {known}.")


def load_component(config: ModelConfig, family: str, dtype: torch.dtype) -> tuple[str, torch.nn.Module]:
    """Detect and load one fetched model entry; returns (pipeline attribute, module in eval mode)."""
    files = config.files()
    kind = detect(files, family)
    shapes = read_keys_and_shapes(files)
    with init_empty_weights(include_buffers=False):  # parameters on meta: no memory for the random init
        module = kind.builder(config_beside(files), shapes)
    state = kind.to_model_keys(load_state_dict(files, dtype))
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise DetectionError(
            f"{config.source_string}: the files are a {family} {kind.component} but do not match its config: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:3]}). A shard may be missing from the list or pattern.")
    module.load_state_dict(state, strict=True, assign=True)
    # parameters already carry `dtype` from the state dict; buffers (rope tables) keep their own precision
    return kind.component, module.eval().requires_grad_(False)


def load_tokenizer(config: ModelConfig):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(config.files()[0])


def empty_component(configs: list[ModelConfig], family: str, component: str) -> torch.nn.Module:
    """The architecture of ``component`` (e.g. ``dit``) among fetched ``configs``, on the meta device.

    Enough to check which module names and shapes exist, without reading any weights.
    """
    for config in configs:
        files = config.files()
        kind = detect(files, family)
        if kind.component == component:
            with init_empty_weights():
                return kind.builder(config_beside(files), read_keys_and_shapes(files))
    raise DetectionError(f"No {family} {component} among the model entries {[c.source_string for c in configs]}")
