"""The memory plan's activations and memory modes: the meta-device trace counts what a real block saves, the
estimate matches a measured real-width block, the fit columns name the first rung of the ladder that fits, and
block swap rows move twice the swapped bytes per step."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from diffsynth.models.activations import saved_tensor_bytes
from diffsynth.models.block_shapes import block_inputs
from diffsynth.plan import plan_for_file
from diffsynth.plan_fit import CARDS, GIB, LADDER, RESERVE_BYTES

REPO = Path(__file__).resolve().parents[1]


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def qwen_plan():
    return plan_for_file(REPO / "presets" / "qwen-image-lora.yaml")


def test_meta_trace_counts_what_a_real_block_saves():
    """A narrow Qwen-Image block with LoRA-like trainable layers: the meta count equals the real CPU count to
    within the attention kernel's difference (CPU flash attention also saves only q, k, v, out, lse)."""
    from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformerBlock
    lora_like = _benchmark("activation_memory").lora_like
    torch.manual_seed(0)
    real = lora_like(QwenImageTransformerBlock(256, 2, 128))
    with torch.device("meta"):
        meta = lora_like(QwenImageTransformerBlock(256, 2, 128))
    est = saved_tensor_bytes(meta, block_inputs(meta, 1, 512, 64, torch.float32))
    got = saved_tensor_bytes(real, block_inputs(real, 1, 512, 64, torch.float32, device="cpu"))
    assert abs(est.saved_bytes / got.saved_bytes - 1) < 0.10
    # twice the tokens, about twice the activations (no tokens x tokens score matrix is kept)
    est2 = saved_tensor_bytes(meta, block_inputs(meta, 1, 1024, 128, torch.float32))
    assert 1.9 < est2.saved_bytes / est.saved_bytes < 2.1


@pytest.mark.slow  # a 340M-parameter block forward on the CPU in a fresh process
def test_activation_estimate_matches_a_measured_real_width_block():
    r = _benchmark("activation_memory").measure(512, 64)
    assert r["dim"] == 3072
    assert abs(r["error"]) < 0.15, r  # RSS: page granularity, allocator slack and CPU kernel workspaces


def test_tokens_come_from_resolution_vae_and_patch(qwen_plan):
    t = qwen_plan["activations"]["tokens"]
    assert (t["height"], t["width"], t["vae_factor"], t["patch"]) == (1024, 1024, 8, 2)
    assert t["image_tokens"] == (1024 // 8 // 2) ** 2


def test_checkpointing_keeps_less_and_the_stage_total_includes_activations(qwen_plan):
    a = qwen_plan["activations"]
    (block,) = a["blocks"].values()
    assert block["count"] == 60
    assert a["total_bytes"]["checkpointing"] < a["total_bytes"]["no_checkpointing"] < 61 * block["saved_bytes"]
    train = qwen_plan["modes"]["cached"]["train"]
    assert train["activation_bytes"] == a["total_bytes"]["checkpointing"]  # the preset checkpoints
    assert train["total_bytes"] == (train["weights_bytes"] + train["lora_bytes"] + train["gradient_bytes"]
                                    + train["optimizer_bytes"] + train["activation_bytes"])


def test_fit_columns_name_the_first_rung_that_fits(qwen_plan):
    rows = {r["mode"]: r for r in qwen_plan["memory_modes"]}
    for card in CARDS:
        name = qwen_plan["fit"][str(card)]
        if name is None:
            continue
        assert rows[name]["total_bytes"] <= card * GIB - RESERVE_BYTES
        # no cheaper rung (without swap) fits
        for mode in LADDER:
            if mode.swap == -1 or mode.name() == name:
                break
            assert not rows[mode.name()]["fits"][str(card)]


def test_swap_rows_move_twice_the_swapped_bytes(qwen_plan):
    swaps = [r for r in qwen_plan["memory_modes"] if r["blocks_to_swap"] and not r["offload_checkpoints"]]
    assert swaps
    no_swap = {(r["base"], r["checkpointing"], r["cache"]): r for r in qwen_plan["memory_modes"]
               if not r["blocks_to_swap"] and not r["cpu_offload"]}
    for r in swaps:
        base = no_swap[(r["base"], r["checkpointing"], r["cache"])]
        saved = base["device_bytes"]["weights"] - r["device_bytes"]["weights"]
        n = r["blocks_to_swap"]
        per_block = r["transfer_bytes_per_step"] // (2 * n)  # identical blocks
        assert r["transfer_bytes_per_step"] == 2 * n * per_block
        assert saved == n * per_block - min(n, 2) * per_block  # two blocks stay in flight on the device


def test_checkpointing_offload_keeps_one_block_input_on_the_device_and_moves_the_rest(qwen_plan):
    a = qwen_plan["activations"]
    blocks = a["blocks"].values()
    assert a["offloaded_input_bytes"] == sum(b["count"] * b["input_bytes"] for b in blocks)
    t = a["total_bytes"]
    assert t["checkpointing"] - t["checkpointing_offload"] == \
        a["offloaded_input_bytes"] - max(b["input_bytes"] for b in blocks)
    rows = [r for r in qwen_plan["memory_modes"] if r["offload_checkpoints"]]
    assert rows and all(r["checkpointing"] for r in rows)
    for r in rows:
        upcast = a["fp8_upcast_bytes"]["checkpointing_offload"] if r["base"] == "fp8" else 0
        assert r["device_bytes"]["activations"] == t["checkpointing_offload"] + upcast
        swapped = r["transfer_bytes_per_step"] - 2 * a["offloaded_input_bytes"]  # what block swap moves
        assert swapped >= 0 and (swapped > 0) == bool(r["blocks_to_swap"])


def test_quantised_bases_order_by_bytes(qwen_plan):
    rows = {(r["base"], r["blocks_to_swap"]): r for r in qwen_plan["memory_modes"]
            if r["checkpointing"] and r["cache"] and not r["cpu_offload"]}
    w = {b: rows[(b, 0)]["device_bytes"]["weights"] for b in ("bf16", "fp8", "int8", "nf4")}
    assert w["nf4"] < w["fp8"] <= w["int8"] < w["bf16"]
