"""DiffSynth-Studio's side of the Wan VACE parity rows (``python reference_vace.py CASE DIR``, parity venv only).

Loads the files ours_vace.py wrote through DiffSynth's own converters into its ``WanModel`` and ``VaceWanModel``
and its ``WanVideoVAE``; runs its ``WanVideoUnit_VACE`` and ``WanVideoUnit_InputVideoEmbedder`` on the same PNG
clips (the conditioning tensors and the target latents with the reference frame), then ``FlowMatchSFTLoss`` /
``model_fn_wan_video`` at our grid point and noise; fuses our LoRA checkpoint (``GeneralLoRALoader``) and our
``diffsynth`` export (``pipe.load_lora(pipe.vace, ...)``) into its pipe.vace; writes a LoRA checkpoint as its trainer
does (``add_lora_to_model`` on pipe.vace) for ours_vace.py to load; and its VaceWanModel's tensor names.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from cases import TIMESTEP_ID, VACE_CASES  # noqa: E402
from reference import consumed, inject_its_lora, save_its_checkpoint  # noqa: E402  (also checks that this is DiffSynth-Studio's diffsynth)

from diffsynth.diffusion.loss import FlowMatchSFTLoss  # noqa: E402
from diffsynth.models.wan_video_dit import WanModel  # noqa: E402
from diffsynth.models.wan_video_vace import VaceWanModel  # noqa: E402
from diffsynth.models.wan_video_vae import WanVideoVAE  # noqa: E402
from diffsynth.pipelines.wan_video import (WanVideoPipeline, WanVideoUnit_InputVideoEmbedder,  # noqa: E402
                                           WanVideoUnit_VACE)
from diffsynth.utils.lora.general import GeneralLoRALoader  # noqa: E402
from diffsynth.utils.state_dict_converters.wan_video_dit import WanVideoDiTStateDictConverter  # noqa: E402
from diffsynth.utils.state_dict_converters.wan_video_vace import VaceWanModelDictConverter  # noqa: E402
from diffsynth.utils.state_dict_converters.wan_video_vae import WanVideoVAEStateDictConverter  # noqa: E402


def strict(model, state: dict, what: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise SystemExit(f"{what}: missing={missing[:5]} unexpected={unexpected[:5]}")


def build(case: dict, folder: Path) -> WanVideoPipeline:
    pipe = WanVideoPipeline(device="cpu", torch_dtype=torch.float32)
    file = load_file(str(folder / "vace_dit.safetensors"))
    dit, vace = WanModel(**case["reference"]), VaceWanModel(**{**case["vace"],
                                                                 "vace_layers": tuple(case["vace"]["vace_layers"])})
    strict(dit, WanVideoDiTStateDictConverter(file), "its DiT converter")
    strict(vace, VaceWanModelDictConverter(file), "its VACE converter")
    vae = WanVideoVAE()
    own = vae.state_dict()
    converted = WanVideoVAEStateDictConverter(load_file(str(folder / "vae.safetensors")))
    vae.load_state_dict({k: v for k, v in converted.items() if k in own}, strict=False)
    pipe.dit, pipe.vace, pipe.vae = dit.eval(), vace.eval(), vae.eval()
    pipe.scheduler.set_timesteps(1000, training=True)
    return pipe


def loss_and_pred(pipe, inputs: dict, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    captured, model_fn = {}, pipe.model_fn

    def spy(**kwargs):
        captured["pred"] = result = model_fn(**kwargs)
        return result
    pipe.model_fn = spy
    with torch.no_grad(), mock.patch("torch.randint", lambda *a, **k: torch.tensor([TIMESTEP_ID])), \
            mock.patch("torch.randn_like", lambda x: noise.clone()):
        loss = FlowMatchSFTLoss(pipe, **dict(inputs))
    pipe.model_fn = model_fn
    return captured["pred"], loss.reshape(1).float()


def lora_results(pipe, model: str, files: dict, inputs: dict, noise: torch.Tensor, targets: str,
                 folder: Path) -> dict:
    """Its loaders on our LoRA files into ``pipe.<model>`` (``our_ckpt``: its trainer's names, read by
    ``GeneralLoRALoader`` as --lora_checkpoint does; ``our_export``: ``pipe.load_lora`` as at inference), each
    prediction; then a LoRA checkpoint as its trainer writes one for --lora_base_model <model> (prefix removed),
    random, with its prediction and loss, saved as ds_ckpt.safetensors for our side to load."""
    module = getattr(pipe, model)
    results = {}
    base = {k: v.clone() for k, v in module.state_dict().items()}
    for label, file in files.items():
        state = load_file(str(file))
        if label == "our_ckpt":
            found, total = consumed(pipe, module, state, GeneralLoRALoader)
            GeneralLoRALoader(torch_dtype=pipe.torch_dtype, device=pipe.device).fuse_lora_to_base_model(module, state)
        else:
            found, total = consumed(pipe, module, state, pipe.lora_loader)
            pipe.load_lora(module, state_dict=dict(state), verbose=0)
        results[f"{label}_found"] = torch.tensor([float(found), float(total)])
        results[f"pred_{label}"], _ = loss_and_pred(pipe, inputs, noise)
        module.load_state_dict(base)
    del base
    inject_its_lora(module, targets)
    results["pred_ds_lora"], results["loss_ds_lora"] = loss_and_pred(pipe, inputs, noise)
    results["ds_modules"] = save_its_checkpoint(module, folder / "ds_ckpt.safetensors")
    return results


def cmd_vace(name: str, folder: Path) -> None:
    case = VACE_CASES[name]
    pipe = build(case, folder)
    n, size = case["frames"], case["size"]
    frames = lambda key: [Image.open(folder / f"{key}_{i}.png").convert("RGB") for i in range(n)]  # noqa: E731
    reference = Image.open(folder / "vace_reference_image.png").convert("RGB")
    with torch.no_grad():
        vace = WanVideoUnit_VACE().process(pipe, frames("vace_video"), None, reference, 1.0, size, size, n,
                                           False, (34, 34), (18, 16))
        embedded = WanVideoUnit_InputVideoEmbedder().process(pipe, frames("video"), None, False, (34, 34), (18, 16),
                                                             reference, False, None, None)
    ours = load_file(str(folder / "ours.safetensors"))
    prompt_emb = load_file(str(folder / "prompt.safetensors"))["prompt_emb"]
    results = {"latents": embedded["input_latents"], "vace_context": vace["vace_context"]}
    inputs = {"input_latents": embedded["input_latents"], "context": prompt_emb, "vace_context": vace["vace_context"],
              "vace_scale": 1.0}
    results["pred"], results["loss"] = loss_and_pred(pipe, inputs, ours["noise"])
    names = {k: list(v.shape) for k, v in pipe.vace.state_dict().items()}  # before any LoRA
    (folder / "reference_full_names.json").write_text(json.dumps(names))
    results.update(lora_results(pipe, "vace", {"our_ckpt": folder / "our_ckpt.safetensors",
                                                "our_export": folder / "export" / "lora_diffsynth.safetensors"},
                                inputs, ours["noise"], case["targets"], folder))
    save_file({k: v.float().contiguous() for k, v in results.items()}, str(folder / "reference.safetensors"))


if __name__ == "__main__":
    cmd_vace(sys.argv[2], Path(sys.argv[3]))
