"""The train stage with and without the encoder cache: per-step time and peak RSS, side by side in one run.

A Qwen-Image model set in the real repository layout whose DiT block has the real width (one block: 24 heads x
128 = 3072, text width 3584), a Qwen2.5-VL text encoder of the real width (2 of its 28 layers) and the real
VAE; bfloat16; the shapes dataset at a fixed 256x256 (256 image tokens). Each mode trains in its own process
(peak RSS is per process): "online" encodes every step with the text encoder and VAE in memory; "cached" reads
the cache (built first by the cache stage's code, in a third process) and holds only the DiT and VAE decoder.

    .venv/bin/python benchmarks/cache.py [--steps 8] [--size 256]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REAL_WIDTH = {"dit_layers": 1, "dit_head_dim": 128, "dit_heads": 24, "rope_axes": (16, 56, 56),
              "text_hidden": 3584, "text_ffn": 18944, "text_layers": 2, "text_heads": 28, "text_kv_heads": 4,
              "mrope": [16, 24, 24], "vae_base_dim": 96, "vae_dim_mult": [1, 2, 4, 4], "vae_res_blocks": 2}
MODELS = ("bench/Qwen-Image:transformer/diffusion_pytorch_model*.safetensors,"
          "bench/Qwen-Image:text_encoder/model*.safetensors,bench/Qwen-Image:vae/diffusion_pytorch_model.safetensors")


def config_for(root: Path, metadata: Path, cached: bool, steps: int, size: int):
    from diffsynth.config import config_from_dict
    return config_from_dict({
        "dataset": {"dataset_base_path": str(metadata.parent), "dataset_metadata_path": str(metadata),
                    "data_file_keys": "image"},
        "resolution": {"height": size, "width": size},
        "model": {"model_id_with_origin_paths": MODELS, "tokenizer_path": "bench/Qwen-Image:tokenizer/",
                  "torch_dtype": "bfloat16"},
        "train": {"num_epochs": 1, "max_steps": steps, "learning_rate": 1e-4},
        "lora": {"lora_base_model": "dit", "lora_target_modules": "to_q,to_k,to_v,to_out.0", "lora_rank": 32},
        "output": {"output_path": str(root / ("out-cached" if cached else "out-online")), "save_steps": 10 ** 6},
        "validation": {"num_samples": 1, "sigmas": [0.5]},
        "sample": {"prompts": [], "out_dir": ""},
        "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}", "enable_csv_log": True},
        "cache": {"enabled": cached, "data_dir": str(root / "cache" / "data"),
                  "prompts_dir": str(root / "cache" / "prompts")},
    })


def child(mode: str, root: Path, metadata: Path, steps: int, size: int) -> None:
    os.environ["DIFFSYNTH_MODEL_BASE_PATH"] = str(root / "models")
    os.environ["DIFFSYNTH_SKIP_DOWNLOAD"] = "true"
    config = config_for(root, metadata, mode == "cached", steps, size)
    if mode == "build-cache":
        from diffsynth.encoding import build_data_cache, build_prompt_cache
        build_data_cache(config, str(metadata), config.cache.data_dir)
        build_prompt_cache(config, str(metadata), config.cache.prompts_dir)
        return
    from diffsynth.training.loop import run_training
    run_training(config)
    rows = [line.split(",") for line in (Path(config.output.output_path) / "loss.csv").read_text().splitlines()[1:]]
    times = [float(v) for step, key, v in rows if key == "step_time"][1:]  # the first step warms up
    print(json.dumps({"step_s": statistics.median(times), "peak_rss_gb": peak_rss_gb()}))


def peak_rss_gb() -> float:
    """This process's peak resident memory: VmHWM, which starts afresh at exec (ru_maxrss would carry the parent's
    peak over into a child process, here the parent's model writing)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2 ** 20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def run(mode: str, root: Path, metadata: Path, steps: int, size: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(root), str(metadata), "--steps", str(steps),
                          "--size", str(size)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{mode} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]) if mode != "build-cache" else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "ROOT", "METADATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, root, metadata = args.child
        return child(mode, Path(root), Path(metadata), args.steps, args.size)

    from diffsynth.data.sample_dataset import build_shapes_dataset
    from diffsynth.families.qwen_image.tiny import write_tiny
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        write_tiny(root / "models" / "bench" / "Qwen-Image", sizes=REAL_WIDTH)
        metadata = build_shapes_dataset(root / "data")
        print(f"models written in {time.perf_counter() - started:.0f} s (DiT block 3072 wide, text encoder 3584 "
              f"wide x 2 layers, real VAE; bfloat16, {args.size}x{args.size} images, LoRA r32 on q/k/v/out)")
        online = run("online", root, metadata, args.steps, args.size)
        started = time.perf_counter()
        run("build-cache", root, metadata, args.steps, args.size)
        build_s = time.perf_counter() - started
        cached = run("cached", root, metadata, args.steps, args.size)
    print(f"{'mode':8} {'step (s)':>9} {'peak RSS (GB)':>14}")
    for name, r in (("online", online), ("cached", cached)):
        print(f"{name:8} {r['step_s']:9.3f} {r['peak_rss_gb']:14.2f}")
    print(f"cached/online: step time {cached['step_s'] / online['step_s']:.2f}x, "
          f"peak RSS {cached['peak_rss_gb'] / online['peak_rss_gb']:.2f}x "
          f"(cache built once in {build_s:.0f} s for 32 rows, reused by every experiment)")


if __name__ == "__main__":
    main()
