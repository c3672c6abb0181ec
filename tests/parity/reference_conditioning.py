"""DiffSynth-Studio's side of the Wan conditioning parity rows (``python reference_conditioning.py CASE DIR``, parity
venv only).

Loads the Wan2.1 VAE ours_conditioning.py wrote through DiffSynth's own converter into its ``WanVideoVAE`` and runs
the units its pipeline runs for the case's extra inputs, in its order, on the same PNG clips: the video's
latents (``InputVideoEmbedder``, whose output is the ``latents`` shape the Fun units read), then
``ImageEmbedderVAE`` (input_image = the first frame, end_image = the last, as its Wan dataset override gives them),
``FunControl`` + ``FunReference``, or ``FunCameraControl``. The DiT is what those units ask of it: its input
channels, no CLIP encoder, and a ``SimpleAdapter`` for the camera.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from cases import CONDITIONING_CASES, CONDITIONING_CLIP  # noqa: E402
from reference import consumed  # noqa: E402, F401  (also checks that this is DiffSynth-Studio's diffsynth)

from diffsynth.models.wan_video_camera_controller import SimpleAdapter  # noqa: E402
from diffsynth.models.wan_video_vae import WanVideoVAE  # noqa: E402
from diffsynth.pipelines.wan_video import (WanVideoPipeline, WanVideoUnit_FunCameraControl,  # noqa: E402
                                           WanVideoUnit_FunControl, WanVideoUnit_FunReference,
                                           WanVideoUnit_ImageEmbedderVAE, WanVideoUnit_InputVideoEmbedder)
from diffsynth.utils.state_dict_converters.wan_video_vae import WanVideoVAEStateDictConverter  # noqa: E402

TILES = (False, (34, 34), (18, 16))  # tiled, tile_size, tile_stride: its training defaults (untiled)


def build(case: dict, folder: Path) -> WanVideoPipeline:
    pipe = WanVideoPipeline(device="cpu", torch_dtype=torch.float32)
    vae = WanVideoVAE()
    own = vae.state_dict()
    converted = WanVideoVAEStateDictConverter(load_file(str(folder / "vae.safetensors")))
    vae.load_state_dict({k: v for k, v in converted.items() if k in own}, strict=False)
    pipe.vae, pipe.image_encoder = vae.eval(), None
    pipe.scheduler.set_timesteps(1000, training=True)
    in_dim = case["in_dim"]
    pipe.dit = types.SimpleNamespace(in_dim=in_dim, require_vae_embedding=in_dim == 36,
                                     require_clip_embedding=case["image"],
                                     control_adapter=SimpleAdapter(24, 8, (2, 2), (2, 2)))
    return pipe


def main(name: str, folder: Path) -> None:
    case = CONDITIONING_CASES[name]
    pipe = build(case, folder)
    n, size = CONDITIONING_CLIP["frames"], CONDITIONING_CLIP["size"]
    frames = lambda key, k: [Image.open(folder / f"{key}_{i}.png").convert("RGB") for i in range(k)]  # noqa: E731
    video = frames("video", n)
    results = {}
    with torch.no_grad():
        latents = WanVideoUnit_InputVideoEmbedder().process(pipe, video, None, *TILES, None, False, None,
                                                            None)["input_latents"]
        results["latents"] = latents
        if "end_image" in case["inputs"]:
            results["y"] = WanVideoUnit_ImageEmbedderVAE().process(pipe, video[0], video[-1], n, size, size,
                                                                   *TILES)["y"]
        elif "control_video" in case["inputs"]:
            results["y"] = WanVideoUnit_FunControl().process(pipe, frames("control_video", n), n, size, size, *TILES,
                                                             None, None, latents)["y"]
            reference = frames("reference_image", 1)[0]
            results["reference_latents"] = WanVideoUnit_FunReference().process(pipe, reference, size, size)[
                "reference_latents"]
        else:
            direction, speed = CONDITIONING_CLIP["camera"]
            out = WanVideoUnit_FunCameraControl().process(pipe, size, size, n, direction, speed, None, latents,
                                                          video[0], *TILES)
            results["y"], results["control_camera"] = out["y"], out["control_camera_latents_input"]
    save_file({k: v.float().contiguous() for k, v in results.items()}, str(folder / "reference.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
