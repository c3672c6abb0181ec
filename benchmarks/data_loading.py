"""Data loading throughput: images (and video frames) decoded and resized per second, by DataLoader workers.

Writes a synthetic dataset (noisy JPEGs larger than max_pixels, so every image is decoded, scaled and
cropped; optionally mp4 clips), then iterates UnifiedDataset through a DataLoader the way training does
(batch size 1, ``collate_fn`` = first item) with 0 and 2 workers, and prints one table.

    .venv/bin/python benchmarks/data_loading.py [--images 96] [--size 1280x960] [--max-pixels 262144]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader

from diffsynth.data.dataset import ImageRules, UnifiedDataset


def first_item(batch):
    return batch[0]


def write_images(folder: Path, count: int, width: int, height: int) -> Path:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
    for i in range(count):
        # smooth noise upsampled: JPEG-compressible like a photo, different per file
        image = Image.fromarray(np.roll(base, i, axis=1)).resize((width, height), Image.BICUBIC)
        image.save(folder / f"img_{i:04d}.jpg", quality=90)
    (folder / "images.csv").write_text("image,prompt\n" + "".join(f"img_{i:04d}.jpg,p{i}\n" for i in range(count)))
    return folder / "images.csv"


def write_videos(folder: Path, count: int, frames: int, width: int, height: int) -> Path | None:
    try:
        from diffsynth.data.sample_video import write_mp4
        write_mp4(folder / "probe.mp4", [Image.new("RGB", (16, 16))])
    except Exception:
        return None  # PyAV missing: skip the video row
    rng = np.random.default_rng(1)
    for i in range(count):
        clip = [Image.fromarray(rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8))
                .resize((width, height), Image.BICUBIC) for _ in range(frames)]
        write_mp4(folder / f"clip_{i:03d}.mp4", clip)
    (folder / "videos.csv").write_text("video,prompt\n" + "".join(f"clip_{i:03d}.mp4,p{i}\n" for i in range(count)))
    return folder / "videos.csv"


def throughput(folder: Path, metadata: Path, key: str, rules: ImageRules, workers: int, epochs: int) -> tuple[float, int]:
    """(items per second, frames per item) over ``epochs`` passes after one warm-up item."""
    dataset = UnifiedDataset(folder, metadata, key, rules)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=first_item, num_workers=workers,
                        persistent_workers=workers > 0)
    iterator = iter(loader)
    item = next(iterator)  # worker start-up is not data loading
    frames = len(item[key]) if isinstance(item[key], list) else 1
    start, count = time.perf_counter(), 0
    for _ in iterator:
        count += 1
    for _ in range(epochs - 1):
        for _ in loader:
            count += 1
    return count / (time.perf_counter() - start), frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", default="1280x960", help="source image size WxH")
    parser.add_argument("--max-pixels", type=int, default=512 * 512)
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--video-size", default="320x240")
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    vw, vh = map(int, args.video_size.split("x"))
    rules = ImageRules(max_pixels=args.max_pixels, num_frames=args.frames)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        images = write_images(folder, args.images, width, height)
        videos = write_videos(folder, args.videos, args.frames, vw, vh) if args.videos else None
        out_size = rules.apply(Image.open(folder / "img_0000.jpg")).size
        print(f"images: {args.images} JPEG {width}x{height} -> {out_size[0]}x{out_size[1]} (max_pixels {args.max_pixels})")
        if videos:
            print(f"videos: {args.videos} mp4 {vw}x{vh}, {args.frames} frames each")
        print("\n| data   | workers | items/s | images (frames)/s | ratio vs 0 workers |")
        print("|--------|---------|---------|-------------------|--------------------|")
        for name, metadata, key in (("images", images, "image"), ("videos", videos, "video")):
            if metadata is None:
                continue
            base = None
            for workers in (0, 2):
                rate, frames = throughput(folder, metadata, key, rules, workers, args.epochs)
                base = base or rate
                print(f"| {name:<6} | {workers:>7} | {rate:7.1f} | {rate * frames:17.1f} | {rate / base:18.2f} |")


if __name__ == "__main__":
    main()
