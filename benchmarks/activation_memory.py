"""The plan's activation estimate against a measurement: one real-width Qwen-Image block (3072 wide, 24 heads,
random weights) runs a training forward on this machine's CPU in a fresh process, after one no-grad forward (the CPU
kernels' own buffers, ~28 MiB on an Intel Xeon, stay out of the count); the resident memory the forward
adds and keeps (the tensors autograd saves for backward, and the outputs) is read from /proc/self/statm, and its
peak from VmHWM (reset with /proc/self/clear_refs). The estimate is the meta-device count that `diffsynth plan`
uses (diffsynth/models/activations.py), for the same shapes and dtype.

Run: python benchmarks/activation_memory.py [--image-tokens 512 --text-tokens 64]
glibc's malloc is pinned to mmap for large blocks (MALLOC_MMAP_THRESHOLD_), so freed tensors leave the RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# presets/qwen-image-lora.yaml's LoRA targets inside one block: their inputs are saved for the LoRA gradients
LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
                "attn.to_out.0", "attn.to_add_out", "img_mlp.net.2", "img_mod.1", "txt_mlp.net.2", "txt_mod.1")


def lora_like(block):
    """Frozen base, LoRA-targeted Linear weights marked trainable: autograd then saves what LoRA training saves
    (each targeted layer's input) except the rank-sized LoRA intermediates."""
    block.requires_grad_(False)
    for name, module in block.named_modules():
        if name in LORA_TARGETS:
            module.weight.requires_grad_(True)
    return block


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def child(image_tokens: int, text_tokens: int) -> dict:
    import torch
    from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformerBlock

    from diffsynth.models.activations import saved_tensor_bytes
    import diffsynth.families  # noqa: F401  (registers each family's block input tables)
    from diffsynth.models.block_shapes import block_inputs
    from diffsynth.models.real_configs import REAL_MODELS

    torch.manual_seed(0)
    cfg = REAL_MODELS["qwen-image-dit"]["config"]
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    block = lora_like(QwenImageTransformerBlock(dim, cfg["num_attention_heads"], cfg["attention_head_dim"]))
    with torch.device("meta"):
        meta_block = lora_like(QwenImageTransformerBlock(dim, cfg["num_attention_heads"], cfg["attention_head_dim"]))
    estimate = saved_tensor_bytes(meta_block, block_inputs(meta_block, 1, image_tokens, text_tokens, torch.float32))
    kwargs = block_inputs(block, 1, image_tokens, text_tokens, torch.float32, device="cpu",
                          generator=torch.Generator().manual_seed(0))
    for name in ("hidden_states", "encoder_hidden_states"):
        kwargs[name] = kwargs[name].requires_grad_(True)
    with torch.no_grad():  # a first forward allocates what the CPU kernels keep for the process (not activations)
        block(**kwargs)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    before = _rss()
    with torch.enable_grad():
        out = block(**kwargs)
    after, peak = _rss(), _hwm()
    del out
    return {"image_tokens": image_tokens, "text_tokens": text_tokens, "dim": dim,
            "block_parameters": sum(p.numel() for p in block.parameters()),
            "estimate_retained_bytes": estimate.retained_bytes, "estimate_saved_bytes": estimate.saved_bytes,
            "measured_retained_bytes": after - before, "measured_peak_bytes": peak - before}


def measure(image_tokens: int = 512, text_tokens: int = 64) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, __file__, "--child", str(image_tokens), str(text_tokens)], env=env,
                         capture_output=True, text=True, check=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    result["error"] = result["measured_retained_bytes"] / result["estimate_retained_bytes"] - 1
    return result


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]), int(sys.argv[3]))))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-tokens", type=int, default=512)
    p.add_argument("--text-tokens", type=int, default=64)
    a = p.parse_args()
    r = measure(a.image_tokens, a.text_tokens)
    mb = 2 ** 20
    print(f"Qwen-Image block, width {r['dim']}, {r['block_parameters'] / 1e6:.0f}M parameters, float32, "
          f"{r['image_tokens']} image + {r['text_tokens']} text tokens, CPU")
    print(f"estimated activations kept by the forward: {r['estimate_retained_bytes'] / mb:9.1f} MiB")
    print(f"measured (RSS after - before forward):     {r['measured_retained_bytes'] / mb:9.1f} MiB "
          f"(error {100 * r['error']:+.1f}%)")
    print(f"measured peak during the forward (VmHWM):  {r['measured_peak_bytes'] / mb:9.1f} MiB")


if __name__ == "__main__":
    main()
