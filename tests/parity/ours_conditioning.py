"""Our side of the Wan conditioning parity rows (``python ours_conditioning.py CASE DIR``, this project's environment).

Writes the Wan2.1 VAE's random weights (its original layout, for DiffSynth's side) and PNG clips (the video, a
control clip, a reference image), then runs the variant's ``encode`` as training does and writes what it hands the
DiT: ``y``, the reference latents and the camera embedding.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from cases import CONDITIONING_CASES, CONDITIONING_CLIP, SEED, WAN21_VAE  # noqa: E402
from ours import randomise  # noqa: E402

from diffsynth.families import select_variant  # noqa: E402
from diffsynth.families.wan import tiny  # noqa: E402
from diffsynth.families.wan.convert import diffusers_to_wan_vae  # noqa: E402

CLIP_FEATURE = torch.zeros(1, 257, 1280)  # CLIP is not among these rows


def write_inputs(out: Path):
    import diffusers
    gen = torch.Generator().manual_seed(SEED)
    vae = diffusers.AutoencoderKLWan.from_config(WAN21_VAE).eval()
    randomise(vae, gen)
    save_file({k: v.contiguous() for k, v in diffusers_to_wan_vae(vae.state_dict(), 2).items()},
              str(out / "vae.safetensors"))
    rng = np.random.default_rng(SEED)
    n, size = CONDITIONING_CLIP["frames"], CONDITIONING_CLIP["size"]
    for name, count in (("video", n), ("control_video", n), ("reference_image", 1)):
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(out / f"{name}_{i}.png")
    return vae


def item(out: Path) -> dict:
    frames = lambda name, n: [Image.open(out / f"{name}_{i}.png").convert("RGB") for i in range(n)]  # noqa: E731
    direction, speed = CONDITIONING_CLIP["camera"]
    return {"video": frames("video", CONDITIONING_CLIP["frames"]), "prompt": "p",
            "control_video": frames("control_video", CONDITIONING_CLIP["frames"]),
            "reference_image": frames("reference_image", 1)[0],
            "camera_control_direction": direction, "camera_control_speed": speed}


def main(name: str, out: Path) -> None:
    case = CONDITIONING_CASES[name]
    vae = write_inputs(out)
    dit = tiny.tiny_dit(in_ch=case["in_dim"], image_dim=1280 if case["image"] else None, **case["dit"])
    cls = select_variant("wan", case["variant"])
    pipe = cls(dit, vae, None, None, dtype=torch.float32, wanted_inputs=tuple(case["inputs"]),
               text_encoder_cached=True)
    pipe.encode_prompt = lambda text: torch.zeros(1, 7, 32)
    pipe.encode_clip = lambda image: CLIP_FEATURE
    inputs = pipe.encode(item(out))
    results = {"latents": inputs["latents"], "y": inputs["y"]}
    if "reference_latents" in inputs:
        results["reference_latents"] = inputs["reference_latents"]
    if "camera" in inputs:
        results["control_camera"] = pipe.dit_inputs(inputs)["control_camera"]
    save_file({k: v.float().contiguous() for k, v in results.items()}, str(out / "ours.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
