"""Planned against measured device memory (needs CUDA): for a few presets and memory modes, the real-size DiT
(random weights) with the preset's LoRA, one training step through its blocks at the plan's token counts
(forward, backward, AdamW step), and torch.cuda.max_memory_allocated beside the plan's figure for the same mode.

The step runs the DiT's block chain with the plan's block inputs (diffsynth/models/block_shapes.py), so the
comparable planned figure is the mode's total minus the models the step does not load (the VAE decoder); the
layers outside the blocks (embedders, final norm) are in the plan, not in the step.

Run on a GPU machine: python benchmarks/memory_gpu.py [--presets qwen-image-lora ...]
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (preset, frames for video presets, modes): a mode is (checkpointing, base, blocks_to_swap)
CASES = [("qwen-image-lora", None, [(True, "bf16", 0), (True, "fp8", 0), (True, "fp8", 32)]),
         ("flux.1-dev-lora", None, [(True, "fp8", 0), (True, "fp8", 9)]),
         ("wan2.2-a14b-low-noise-lora", 17, [(True, "fp8", 0), (True, "fp8", 24)]),
         ("wan2.1-t2v-1.3b-lora", 17, [(False, "bf16", 0), (True, "bf16", 0)])]


def planned(plan: dict, checkpointing: bool, base: str, swap: int) -> int | None:
    from diffsynth.plan_fit import CARDS, GIB, RESERVE_BYTES, Mode, evaluate_modes  # noqa: F401
    for r in plan["memory_modes"]:
        if (r["cache"], r["checkpointing"], r["base"], r["blocks_to_swap"], r["cpu_offload"]) == \
                (True, checkpointing, base, swap, False):
            return r["total_bytes"]
    return None


def measure(preset: str, frames: int | None, checkpointing: bool, base: str, swap: int) -> tuple[int, int, float]:
    import diffsynth.families  # noqa: F401  (registers each family's block input tables)
    from diffsynth.models.block_shapes import block_inputs
    from diffsynth.models.block_swap import enable_block_swap, swap_chain
    from diffsynth.models.fp8 import enable_fp8
    from diffsynth.plan import build_meta, load_plan_params, lora_modules, model_entries, plan_for_file
    from diffsynth.training.lora import add_lora

    path = ROOT / "presets" / f"{preset}.yaml"
    plan = plan_for_file(path, num_frames=frames)
    config = load_plan_params(path)
    if frames:
        config.resolution.num_frames = frames
    entries = {e.component: e for e in model_entries(config)}
    targets = sorted(lora_modules(config, entries))
    dev, dtype = torch.device("cuda"), torch.bfloat16
    torch.cuda.empty_cache()
    dit = copy.deepcopy(build_meta(entries["dit"].architecture)).to(dtype).to_empty(device=dev)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.02)
    dit.requires_grad_(False)
    add_lora(dit, targets, config.lora.lora_rank, dtype=dtype)
    if base == "fp8":
        enable_fp8(dit, compute_dtype=dtype)
    engine = enable_block_swap(dit, swap, dev) if swap else None
    params = [p for p in dit.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    tokens = plan["activations"]["tokens"]
    chain = [b for _, b in swap_chain(dit)]
    kw = block_inputs(chain[0], config.train.batch_size, tokens["image_tokens"], tokens["text_tokens"], dtype,
                      device=dev, generator=torch.Generator(dev).manual_seed(0))
    # the plan's 'other models' (VAE decoder) are not loaded here
    others = plan["modes"]["cached"]["train"]["weights_bytes"] - plan["models"]["dit"]["bytes"]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(2):  # the second step holds the optimizer states from the first
        h, e = kw["hidden_states"], kw["encoder_hidden_states"]
        for block in chain:
            args = {**kw, "hidden_states": h, "encoder_hidden_states": e}
            if checkpointing:
                out = torch.utils.checkpoint.checkpoint(lambda b=block, a=args: b(**a), use_reentrant=False)
            else:
                out = block(**args)
            if isinstance(out, tuple):
                e, h = out
            else:
                h = out
        h.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated, as the plan counts them
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - t) / 2
    measured = torch.cuda.max_memory_allocated()
    if engine:
        engine.remove()
    del dit, optimizer, params, engine
    torch.cuda.empty_cache()
    p = planned(plan, checkpointing, base, swap)
    return (None if p is None else p - others), measured, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="*", default=None)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("memory_gpu.py needs a CUDA device")
    print(f"device: {torch.cuda.get_device_name()}; GiB = 2^30 bytes")
    print("| preset | frames | mode | planned GiB | measured GiB | measured/planned | step s |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for preset, frames, modes in CASES:
        if a.presets and preset not in a.presets:
            continue
        for ckpt, base, swap in modes:
            name = " + ".join(x for x in ("checkpointing" if ckpt else "", f"{base} DiT", f"swap {swap}" if swap else "")
                              if x)
            try:
                plan_b, got, s = measure(preset, frames, ckpt, base, swap)
            except torch.cuda.OutOfMemoryError:
                print(f"| {preset} | {frames or 1} | {name} | | out of memory | | |")
                torch.cuda.empty_cache()
                continue
            ratio = f"{got / plan_b:.3f}" if plan_b else "-"
            pl = f"{plan_b / 2**30:.2f}" if plan_b else "not planned"
            print(f"| {preset} | {frames or 1} | {name} | {pl} | {got / 2**30:.2f} | {ratio} | {s:.2f} |", flush=True)


if __name__ == "__main__":
    main()
