"""Disk offload against resident weights: peak RSS and step time of one training step of a real-width
multi-block DiT (Qwen-Image blocks, 3072 wide, 24 heads, random weights), measured side by side in one run.

Both modes read the same safetensors file, each in a fresh process (VmHWM from /proc/self/status):
- resident: the file loaded into memory (safetensors.torch.load_file), then the step;
- disk offload: the blocks' weights memory-mapped from the file and paged in per block
  (diffsynth/models/disk_offload.py: the block-swap engine with the mapped file as the host copy; a released
  block's pages are dropped with madvise), then the step.
The step: forward through every block and backward to the input (what a LoRA step needs of the frozen weights:
each block is paged in twice). Step time is the median of --steps steps after one warm-up.

Run: python benchmarks/offload.py [--blocks 3 --tokens 8 --dtype float32]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def build(blocks: int, device: str = "meta"):
    import torch
    from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformerBlock
    from diffsynth.models.real_configs import REAL_MODELS
    cfg = REAL_MODELS["qwen-image-dit"]["config"]
    heads, hd = cfg["num_attention_heads"], cfg["attention_head_dim"]

    class DiT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer_blocks = torch.nn.ModuleList(QwenImageTransformerBlock(heads * hd, heads, hd)
                                                          for _ in range(blocks))

        def forward(self, kwargs):
            enc, hid = kwargs["encoder_hidden_states"], kwargs["hidden_states"]
            for block in self.transformer_blocks:
                enc, hid = block(**{**kwargs, "hidden_states": hid, "encoder_hidden_states": enc})
            return hid

    with torch.device(device):
        return DiT().requires_grad_(False)


def write_weights(path: Path, blocks: int, dtype: str) -> None:
    import torch
    from safetensors.torch import save_file
    torch.manual_seed(0)
    model = build(blocks, "cpu").to(getattr(torch, dtype))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def child(mode: str, path: str, blocks: int, tokens: int, dtype: str, steps: int) -> dict:
    import torch
    from safetensors.torch import load_file
    import diffsynth.families  # noqa: F401  (registers each family's block input tables)
    from diffsynth.models.block_shapes import block_inputs
    from diffsynth.models.disk_offload import enable_disk_offload
    dt = getattr(torch, dtype)
    model = build(blocks)
    if mode == "resident":
        model.load_state_dict(load_file(path), assign=True)
        model.requires_grad_(False)
    else:
        engine = enable_disk_offload(model, path, "cpu")
    kwargs = block_inputs(model.transformer_blocks[0], 1, tokens, tokens, dt, device="cpu",
                          generator=torch.Generator().manual_seed(0))
    x = kwargs["hidden_states"].requires_grad_(True)
    times, grads = [], None
    for _ in range(steps + 1):
        x.grad = None
        t = time.perf_counter()
        model(kwargs).float().pow(2).mean().backward()
        times.append(time.perf_counter() - t)
        grads = x.grad.double().sum().item()
    out = {"mode": mode, "peak_rss_bytes": _hwm(), "step_seconds": statistics.median(times[1:]),
           "input_grad_sum": grads}
    if mode == "disk":
        out["paged_bytes_per_step"] = engine.planned_transfer_per_step
    return out


def run(blocks: int = 3, tokens: int = 8, dtype: str = "float32", steps: int = 3) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "blocks.safetensors"
        write_weights(path, blocks, dtype)
        results = {}
        for mode in ("resident", "disk"):
            r = subprocess.run([sys.executable, __file__, "--child", mode, str(path), str(blocks), str(tokens), dtype,
                                str(steps)], env=env, capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(r.stderr[-3000:])
            results[mode] = json.loads(r.stdout.strip().splitlines()[-1])
        results["file_bytes"] = path.stat().st_size
    return results


def main() -> None:
    if len(sys.argv) == 8 and sys.argv[1] == "--child":
        m, path, b, t, dt, s = sys.argv[2:]
        print(json.dumps(child(m, path, int(b), int(t), dt, int(s))))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--tokens", type=int, default=8, help="image tokens (and as many text tokens)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args()
    r = run(a.blocks, a.tokens, a.dtype, a.steps)
    res, disk = r["resident"], r["disk"]
    gib = 2 ** 30
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores visible)")
    print(f"DiT: {a.blocks} Qwen-Image blocks, width 3072, {a.dtype}, weights file {r['file_bytes'] / gib:.2f} GiB; "
          f"{a.tokens}+{a.tokens} tokens, forward + backward to the input")
    print(f"{'mode':10} {'peak RSS GiB':>12} {'step s':>8}")
    for x in (res, disk):
        print(f"{x['mode']:10} {x['peak_rss_bytes'] / gib:12.2f} {x['step_seconds']:8.2f}")
    print(f"peak RSS ratio disk/resident: {disk['peak_rss_bytes'] / res['peak_rss_bytes']:.3f}")
    print(f"step-time ratio disk/resident: {disk['step_seconds'] / res['step_seconds']:.3f}")
    print(f"paged in per step (disk): {disk['paged_bytes_per_step'] / gib:.2f} GiB; same input gradient: "
          f"{disk['input_grad_sum'] == res['input_grad_sum']}")


if __name__ == "__main__":
    main()
