"""Training throughput at batch size 1, 2 and 4, side by side in one run, online and from cached inputs.

The model: the tiny Qwen-Image twin's text encoder and VAE with ONE DiT block at the real Qwen-Image width
(3072 = 24 heads x 128, real MLP and modulation), LoRA rank 32 on DiffSynth's 12 Qwen-Image targets, in
bfloat16. Every setting trains the same number of samples through the project's TrainingModule (encode,
collate, per-sample timesteps and noise, loss, backward) plus an AdamW step per batch:

* online: every step encodes its rows (text encoder + VAE of the tiny twin), as training without a cache does;
* cached: the rows are encoded once beforehand and a step only collates them (what an encoder cache gives).

Prompts have different lengths, so batches pad them with a mask. Prints samples/s per setting and the
ratios to batch size 1.

    .venv/bin/python benchmarks/batching.py [--image-size 256] [--samples 8] [--threads 2]
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffsynth.config import load_params
from diffsynth.families import get_spec
from diffsynth.families.qwen_image.pipeline import LORA_TARGETS
from diffsynth.models.tiny import write_tiny_model
from diffsynth.training import FlowMatchSchedule
from diffsynth.training.lora import add_lora
from diffsynth.training.loop import TrainingModule

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle", "a blue square on a black background", "two green triangles side by side on white",
           "a yellow star above a grey line, drawn with a thick brush on textured paper"]


class CachedModule(TrainingModule):
    """Items are already-encoded inputs: a step skips the text encoder and the VAE."""

    def encode(self, item):
        return item


def build(dtype: torch.dtype) -> TrainingModule:
    from diffusers import QwenImageTransformer2DModel

    base = Path(tempfile.mkdtemp())
    write_tiny_model("qwen-image", base / "diffsynth-tiny" / "Qwen-Image")
    os.environ["DIFFSYNTH_MODEL_BASE_PATH"] = str(base)
    os.environ.setdefault("DIFFSYNTH_SKIP_DOWNLOAD", "true")
    config = load_params(REPO / "presets" / "tiny" / "qwen-image-lora.yaml")
    spec = get_spec("qwen_image")
    pipe = spec.load_pipeline(config, dtype)
    tiny = pipe.dit.config
    torch.manual_seed(0)
    pipe.dit = QwenImageTransformer2DModel(  # one real-width block; the text projection takes the twin's width
        patch_size=2, in_channels=tiny.in_channels, out_channels=tiny.out_channels, num_layers=1,
        attention_head_dim=128, num_attention_heads=24, joint_attention_dim=tiny.joint_attention_dim,
        axes_dims_rope=(16, 56, 56)).to(dtype)
    pipe.requires_grad_(False)
    add_lora(pipe.dit, LORA_TARGETS.split(","), 32, dtype=dtype, exclude=type(pipe).modules_without_gradient("dit", pipe.dit))
    return pipe


def rows(n: int, size: int) -> list[dict]:
    g = np.random.default_rng(0)
    return [{"image": Image.fromarray(g.integers(0, 255, (size, size, 3), dtype=np.uint8)),
             "prompt": PROMPTS[i % len(PROMPTS)]} for i in range(n)]


def samples_per_s(module: TrainingModule, items: list, batch_size: int) -> float:
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]

    def step(batch):
        module(batch).backward()
        optimizer.step()
        optimizer.zero_grad()

    step(batches[0])  # warm-up (allocations, kernel choice)
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=256, help="pixels per side: 256 -> 256 image tokens, "
                                                                    "512 -> 1024")
    parser.add_argument("--samples", type=int, default=4, help="samples trained per setting (a multiple of 4)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    pipe = build(dtype)
    schedule = FlowMatchSchedule.for_family("qwen_image")
    online = TrainingModule(pipe, schedule, torch.Generator().manual_seed(0))
    cached = CachedModule(pipe, schedule, torch.Generator().manual_seed(0))
    items = rows(args.samples, args.image_size)
    encoded = [pipe.encode(item) for item in items]
    tokens = (args.image_size // 16) ** 2
    block = sum(p.numel() for n, p in pipe.dit.transformer_blocks[0].named_parameters() if "lora" not in n)
    print(f"one Qwen-Image DiT block at the real width ({block / 1e6:.0f}M params), LoRA r32, {args.dtype}, "
          f"{tokens} image tokens, {args.samples} samples per setting, {torch.get_num_threads()} threads")
    print(f"{'batch':>5}{'online samples/s':>19}{'ratio':>7}{'cached samples/s':>19}{'ratio':>7}{'cached/online':>15}")
    base = {}
    for b in (1, 2, 4):
        on = samples_per_s(online, items, b)
        ca = samples_per_s(cached, encoded, b)
        base.setdefault("on", on)
        base.setdefault("ca", ca)
        print(f"{b:>5}{on:>19.3f}{on / base['on']:>7.2f}{ca:>19.3f}{ca / base['ca']:>7.2f}{ca / on:>15.2f}")


if __name__ == "__main__":
    main()
