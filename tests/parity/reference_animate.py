"""DiffSynth-Studio's side of the Wan2.2-Animate parity rows (``python reference_animate.py CASE DIR``, parity venv
only).

Loads the files ours_animate.py wrote through DiffSynth's own converters (``WanVideoDiTStateDictConverter`` and
``WanAnimateAdapterStateDictConverter``, as its model config splits the Animate file) into its ``WanModel`` and
``WanAnimateAdapter`` (built with its hard-coded sizes, its face blocks cut to the case's depth), and its
``WanVideoVAE``; runs its units on the same PNG clips (``WanVideoUnit_InputVideoEmbedder``,
``WanVideoUnit_ImageEmbedderVAE``, ``WanVideoUnit_AnimateVideoSplit``, ``WanVideoUnit_AnimatePoseLatents``,
``WanVideoUnit_AnimateFacePixelValues``), then ``FlowMatchSFTLoss`` / ``model_fn_wan_video`` at our grid point and
noise; fuses our LoRA checkpoint (``GeneralLoRALoader``) and our ``diffsynth`` export (``pipe.load_lora``) into its
pipe.dit; writes a LoRA checkpoint as its trainer does for ours_animate.py to load; and its adapter's tensor names.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from cases import ANIMATE_CASES  # noqa: E402
from reference_vace import lora_results, loss_and_pred, strict  # noqa: E402

from diffsynth.models.wan_video_animate_adapter import WanAnimateAdapter  # noqa: E402
from diffsynth.models.wan_video_dit import WanModel  # noqa: E402
from diffsynth.models.wan_video_vae import WanVideoVAE  # noqa: E402
from diffsynth.pipelines.wan_video import (WanVideoPipeline, WanVideoUnit_AnimateFacePixelValues,  # noqa: E402
                                           WanVideoUnit_AnimatePoseLatents, WanVideoUnit_AnimateVideoSplit,
                                           WanVideoUnit_ImageEmbedderVAE, WanVideoUnit_InputVideoEmbedder)
from diffsynth.utils.state_dict_converters.wan_video_animate_adapter import (  # noqa: E402
    WanAnimateAdapterStateDictConverter)
from diffsynth.utils.state_dict_converters.wan_video_dit import WanVideoDiTStateDictConverter  # noqa: E402
from diffsynth.utils.state_dict_converters.wan_video_vae import WanVideoVAEStateDictConverter  # noqa: E402

TILES = (False, (34, 34), (18, 16))  # tiled, tile_size, tile_stride: its training inputs (no tiling)


def build(case: dict, folder: Path) -> WanVideoPipeline:
    pipe = WanVideoPipeline(device="cpu", torch_dtype=torch.float32)
    file = load_file(str(folder / "animate_dit.safetensors"))
    dit = WanModel(**case["reference"])
    strict(dit, WanVideoDiTStateDictConverter(file), "its DiT converter")
    with torch.device("meta"):  # its adapter hard-codes 8 face blocks (40 DiT blocks): keep the case's, then load
        adapter = WanAnimateAdapter()
    blocks = case["ours"]["animate_adapter"]["face_blocks"]
    adapter.face_adapter.fuser_blocks = adapter.face_adapter.fuser_blocks[:blocks]
    strict(adapter, WanAnimateAdapterStateDictConverter(file), "its animate adapter converter")
    del file
    vae = WanVideoVAE()
    own = vae.state_dict()
    converted = WanVideoVAEStateDictConverter(load_file(str(folder / "vae.safetensors")))
    vae.load_state_dict({k: v for k, v in converted.items() if k in own}, strict=False)
    pipe.dit, pipe.animate_adapter, pipe.vae = dit.eval(), adapter.eval(), vae.eval()
    pipe.scheduler.set_timesteps(1000, training=True)
    return pipe


def cmd_animate(name: str, folder: Path) -> None:
    case = ANIMATE_CASES[name]
    pipe = build(case, folder)
    n, size = case["frames"], case["size"]
    frames = lambda key: [Image.open(folder / f"{key}_{i}.png").convert("RGB") for i in range(n)]  # noqa: E731
    video = frames("video")
    with torch.no_grad():  # its training inputs: input_image = video[0] (train.py), the units in their order
        embedded = WanVideoUnit_InputVideoEmbedder().process(pipe, video, None, *TILES, None, False, None, None)
        y = WanVideoUnit_ImageEmbedderVAE().process(pipe, video[0], None, n, size, size, *TILES)["y"]
        split = WanVideoUnit_AnimateVideoSplit().process(pipe, video, frames("animate_pose_video"),
                                                         frames("animate_face_video"), None, None)
        pose = WanVideoUnit_AnimatePoseLatents().process(pipe, split["animate_pose_video"], *TILES)["pose_latents"]
        shared, posi, nega = WanVideoUnit_AnimateFacePixelValues().process(
            pipe, {"animate_face_video": split["animate_face_video"]}, {}, {})
        face = posi["face_pixel_values"]
        x = torch.zeros(1, case["reference"]["dim"], embedded["input_latents"].shape[2], size // 16, size // 16)
        _, motion_vec = pipe.animate_adapter.after_patch_embedding(x, pose, face)
    ours = load_file(str(folder / "ours.safetensors"))
    given = load_file(str(folder / "prompt.safetensors"))
    results = {"latents": embedded["input_latents"], "y": y, "pose_latents": pose, "face_pixel_values": face,
               "motion_tokens": motion_vec}
    inputs = {"input_latents": embedded["input_latents"], "context": given["prompt_emb"],
              "clip_feature": given["clip_feature"], "y": y, "pose_latents": pose, "face_pixel_values": face}
    results["pred"], results["loss"] = loss_and_pred(pipe, inputs, ours["noise"])
    names = {k: list(v.shape) for k, v in pipe.animate_adapter.state_dict().items()}
    (folder / "reference_full_names.json").write_text(json.dumps(names))
    results.update(lora_results(pipe, "dit", {"our_ckpt": folder / "our_ckpt.safetensors",
                                               "our_export": folder / "our_export.safetensors"},
                                inputs, ours["noise"], case["targets"], folder))
    save_file({k: v.float().contiguous() for k, v in results.items()}, str(folder / "reference.safetensors"))


if __name__ == "__main__":
    cmd_animate(sys.argv[2], Path(sys.argv[3]))
