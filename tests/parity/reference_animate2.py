"""DiffSynth-Studio's side of the Wan2.2-Animate-2 parity rows (``python reference_animate2.py CASE DIR``, parity venv
only).

Loads the files ours_animate2.py wrote as its model config loads the released ones: the DiT into its
``WanAnimate2Transformer`` (no converter: the file's names are its modules'), the CLIP file through its
``WanImageEncoderStateDictConverter`` into its ``WanImageEncoder`` (open-clip's ViT-H/14, built with the case's
depth), the VAE through its converter into its ``WanVideoVAE``. Runs its training units on the same PNG inputs
(``WanVideoUnit_InputVideoEmbedder``, which prepends the reference image's latent frame in training;
``WanVideoUnit_Animate2CLIPEmbedder``; ``WanVideoUnit_Animate2VAEEmbedder``; the prompt embeddings are given, as
``Animate2RefPromptEmbedder`` would hand over UMT5's), then ``FlowMatchSFTLoss`` / ``model_fn_wan_video`` (its
``model_fn_wananimate`` -> ``forward_origin``) at our grid point and noise, also with a 1-frame reference video;
the tensor names its trainer saves for the full recipe's ``trainable_models`` (``freeze_except``,
``export_trainable_state_dict``); fuses our LoRA checkpoint (``GeneralLoRALoader``) and our ``diffsynth`` and
``comfyui`` exports (``pipe.load_lora``) into its pipe.dit; writes a LoRA checkpoint as its trainer does for
ours_animate2.py to load.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from cases import ANIMATE2_CASES  # noqa: E402
from reference_vace import lora_results, loss_and_pred, strict  # noqa: E402

from diffsynth.diffusion.training_module import DiffusionTrainingModule  # noqa: E402
from diffsynth.models.wan_animate_2_dit import WanAnimate2Transformer  # noqa: E402
from diffsynth.models.wan_video_image_encoder import WanImageEncoder, clip_xlm_roberta_vit_h_14  # noqa: E402
from diffsynth.models.wan_video_vae import WanVideoVAE  # noqa: E402
from diffsynth.pipelines.wan_video import (WanVideoPipeline, WanVideoUnit_Animate2CLIPEmbedder,  # noqa: E402
                                           WanVideoUnit_Animate2VAEEmbedder, WanVideoUnit_InputVideoEmbedder)
from diffsynth.utils.state_dict_converters.wan_video_image_encoder import (  # noqa: E402
    WanImageEncoderStateDictConverter)
from diffsynth.utils.state_dict_converters.wan_video_vae import WanVideoVAEStateDictConverter  # noqa: E402

TILES = (False, (34, 34), (18, 16))  # tiled, tile_size, tile_stride: its training inputs (no tiling)


def image_encoder(case: dict, folder: Path) -> WanImageEncoder:
    """Its WanImageEncoder (``__init__``'s own call, with the case's depth; on the meta device, so the unused
    XLM-RoBERTa text tower costs nothing), the file through its converter into the image tower."""
    encoder = WanImageEncoder.__new__(WanImageEncoder)
    torch.nn.Module.__init__(encoder)
    encoder.model, encoder.transforms = clip_xlm_roberta_vit_h_14(
        pretrained=False, return_transforms=True, return_tokenizer=False, dtype=torch.float32, device="meta",
        vision_layers=case["clip"]["num_hidden_layers"])
    converted = WanImageEncoderStateDictConverter(load_file(str(folder / "clip.safetensors")))
    visual = {k: v for k, v in converted.items() if k.startswith("model.visual.")}
    if set(converted) - set(visual) - {"model.log_scale"}:
        raise SystemExit(f"its CLIP converter: unexpected {sorted(set(converted) - set(visual))[:5]}")
    strict(encoder.model.visual, {k.removeprefix("model.visual."): v for k, v in visual.items()},
           "its CLIP converter (image tower)")
    return encoder.eval()


def build(case: dict, folder: Path) -> WanVideoPipeline:
    pipe = WanVideoPipeline(device="cpu", torch_dtype=torch.float32)
    with torch.device("meta"):
        dit = WanAnimate2Transformer(**case["reference"])
    strict(dit, load_file(str(folder / "animate2_dit.safetensors")), "its WanAnimate2Transformer (no converter)")
    vae = WanVideoVAE()
    own = vae.state_dict()
    converted = WanVideoVAEStateDictConverter(load_file(str(folder / "vae.safetensors")))
    vae.load_state_dict({k: v for k, v in converted.items() if k in own}, strict=False)
    pipe.dit, pipe.vae, pipe.image_encoder = dit.eval(), vae.eval(), image_encoder(case, folder)
    pipe.scheduler.set_timesteps(1000, training=True)
    return pipe


def units(pipe, case: dict, video: list, image: Image.Image, reference: list) -> tuple[dict, dict]:
    """Its units in their order, as its training runs them (height, width and num_frames: the video's)."""
    n, height, width = len(video), case["height"], case["width"]
    with torch.no_grad():
        embedded = WanVideoUnit_InputVideoEmbedder().process(pipe, video, None, *TILES, None, False, image, reference)
        clip = WanVideoUnit_Animate2CLIPEmbedder().process(pipe, image, reference, height, width)
        vae = WanVideoUnit_Animate2VAEEmbedder().process(pipe, image, reference, None, n, height, width, *TILES)
    return embedded, {**clip, **vae}


def full_names(case: dict, pipe) -> dict:
    """The full recipe's checkpoint: its trainer freezes all but ``trainable_models`` (``freeze_except``) and saves
    ``export_trainable_state_dict`` of its training module with --remove_prefix_in_ckpt pipe.dit."""
    pipe.freeze_except(case["trainable_models"].split(","))
    module = DiffusionTrainingModule()
    module.pipe = pipe
    names = {k: list(v.shape)
             for k, v in module.export_trainable_state_dict(module.state_dict(), remove_prefix="pipe.dit.").items()}
    pipe.requires_grad_(False)
    return names


def cmd_animate2(name: str, folder: Path) -> None:
    case = ANIMATE2_CASES[name]
    pipe = build(case, folder)
    video = [Image.open(folder / f"video_{i}.png").convert("RGB") for i in range(case["frames"])]
    image = Image.open(folder / "reference_image.png").convert("RGB")
    reference = [Image.open(folder / f"reference_video_{i}.png").convert("RGB")
                 for i in range(case["reference_video"]["frames"])]
    embedded, conditioning = units(pipe, case, video, image, reference)
    ours = load_file(str(folder / "ours.safetensors"))
    given = load_file(str(folder / "prompt.safetensors"))
    inputs = {"input_latents": embedded["input_latents"], "context": given["prompt_emb"],
              "context_ref": given["prompt_ref_emb"], **conditioning}
    results = {"latents": embedded["input_latents"], "y": conditioning["y"],
               "clip_feature": conditioning["clip_feature"], "clip_fea_ref": conditioning["clip_fea_ref"],
               "condition_latents": conditioning["condition_latents"],
               "condition_y": conditioning["condition_y"].unsqueeze(0)}
    results["pred"], results["loss"] = loss_and_pred(pipe, inputs, ours["noise"])
    _, short = units(pipe, case, video, image, reference[:case["short_reference_frames"]])
    results["short_condition_latents"] = short["condition_latents"]
    results["pred_short"], results["loss_short"] = loss_and_pred(pipe, {**inputs, **short}, ours["noise"])
    (folder / "reference_full_names.json").write_text(json.dumps(full_names(case, pipe)))
    export = folder / "export"
    results.update(lora_results(pipe, "dit", {"our_ckpt": folder / "our_ckpt.safetensors",
                                               "our_export": export / "lora_diffsynth.safetensors",
                                               "our_comfyui": export / "lora_comfyui.safetensors"},
                                inputs, ours["noise"], case["targets"], folder))
    save_file({k: v.float().contiguous() for k, v in results.items()}, str(folder / "reference.safetensors"))


if __name__ == "__main__":
    cmd_animate2(sys.argv[2], Path(sys.argv[3]))
