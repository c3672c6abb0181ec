"""Our LoRA files address every module of DiffSynth-Studio's own DiTs, under its names and with fitting shapes.

DiffSynth-Studio cannot be installed beside this package (both import as ``diffsynth``), so the module table of its
DiTs is data here: ``tests/data/diffsynth_dit_modules.json``, written by ``tests/parity/reference.py modules`` from
DiffSynth-Studio's own classes (version and files named in the table). ``make parity`` loads the same files with
DiffSynth's real loaders and compares outputs.
"""
from __future__ import annotations

import json

import pytest
import torch
from accelerate import init_empty_weights
from peft import LoraConfig, inject_adapter_in_model

from diffsynth.export.lora_formats import from_original_names, lora_modules, to_diffsynth_checkpoint, write_format
from diffsynth.models.real_configs import REAL_MODELS, build_class
from diffsynth.training.lora import lora_state_dict
from helpers import REPO

TABLE = json.loads((REPO / "tests" / "data" / "diffsynth_dit_modules.json").read_text())
# the table's model -> (our real-size model, family); both with two blocks per block list
MODELS = {"qwen_image": ("qwen-image-dit", "qwen_image"), "flux": ("flux.1-dev-dit", "flux"),
          "wan2.1-t2v-1.3b": ("wan2.1-t2v-1.3b-dit", "wan"), "wan2.1-i2v-14b": ("wan2.1-i2v-14b-dit", "wan"),
          "wan2.2-ti2v-5b": ("wan2.2-ti2v-5b-dit", "wan")}
RANK = 2


def lora_on_every_linear(real: str) -> torch.nn.Module:
    entry = REAL_MODELS[real]
    config = dict(entry["config"], num_layers=2)
    if "num_single_layers" in config:
        config["num_single_layers"] = 2
    with init_empty_weights():
        model = build_class(entry["cls"]).from_config(config)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=linears), model)
    return model


def trained_lora(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's peft LoRA tensors, made real and non-zero (the base weights stay on the meta device)."""
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=gen) for k, v in lora_state_dict(model).items()}


def check_against_table(state: dict, table: dict, slot_key: str) -> set[str]:
    """Every LoRA module of ``state`` is a Linear of DiffSynth's DiT with fitting A/B shapes; returns the modules."""
    modules = {k.split(".lora_")[0] for k in state}
    unknown = sorted(modules - set(table))
    assert not unknown, f"modules DiffSynth's DiT does not have: {unknown[:5]}"
    for name in modules:
        out_f, in_f = table[name]
        a, b = state[f"{name}.lora_A{slot_key}"], state[f"{name}.lora_B{slot_key}"]
        assert a.shape[1] == in_f and b.shape[0] == out_f and a.shape[0] == b.shape[1], name
    return modules


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_checkpoint_and_diffsynth_export_map_every_module_onto_diffsynths_dit(name):
    real, family = MODELS[name]
    table = TABLE["models"][name]
    model = lora_on_every_linear(real)
    checkpoint = to_diffsynth_checkpoint(trained_lora(model), family)  # what the training loop saves
    assert all(k.endswith((".lora_A.default.weight", ".lora_B.default.weight")) for k in checkpoint)
    # LoRA on every Linear of ours covers every Linear of DiffSynth's DiT, and nothing else
    assert check_against_table(checkpoint, table, ".default.weight") == set(table)
    export = write_format(from_original_names(lora_modules(checkpoint), family, model), "diffsynth", family)
    assert check_against_table(export, table, ".weight") == set(table)


def test_fused_flux_layers_read_back_into_the_separate_modules():
    """DiffSynth's FLUX names fuse q/k/v (and the single blocks' MLP-in); reading our file back splits them
    into the modules that were trained, each at its own rank."""
    model = lora_on_every_linear("flux.1-dev-dit")
    state = trained_lora(model)
    trained, checkpoint = lora_modules(state), to_diffsynth_checkpoint(state, "flux")
    assert checkpoint["blocks.0.attn.a_to_qkv.lora_A.default.weight"].shape[0] == 3 * RANK
    assert checkpoint["single_blocks.1.to_qkv_mlp.lora_A.default.weight"].shape[0] == 4 * RANK
    assert "transformer_blocks.0.attn.to_q.lora_A.default.weight" not in checkpoint
    back = from_original_names(lora_modules(checkpoint), "flux", model)
    assert set(back) == set(trained)
    assert all(back[n][0].shape == trained[n][0].shape and back[n][1].shape == trained[n][1].shape for n in trained)
