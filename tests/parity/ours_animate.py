"""Our side of the Wan2.2-Animate parity rows (``python ours_animate.py CASE DIR``, this project's environment).

Writes the case's random weights as the released files hold them (one DiT file in the original Wan-AI names with the
adapter's ``pose_patch_embedding`` / ``motion_encoder`` / ``face_encoder`` / ``face_adapter`` keys, the Wan2.1 VAE in
its original layout), PNG clips (video, pose clip, 512x512 face clip), loads them through our checkpoint kind and
``WanAnimate`` pipeline, and writes: the encoded inputs (target latents, ``y``, ``pose_latents``,
``face_pixel_values``), the face motion tokens, the training prediction and loss, a LoRA on ``pipe.dit`` as our
trainer saves it and our ``diffsynth`` export of it, with the predictions they give, and the full-fine-tune tensor
names of ``pipe.animate_adapter``. ``load``: DiffSynth's trainer checkpoint as our lora_checkpoint.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from cases import ANIMATE_CASES, RANK, SEED, WAN21_VAE  # noqa: E402
from ours import randomise  # noqa: E402
from ours_vace import predict_and_loss, read_its_checkpoint  # noqa: E402

from diffsynth.export.lora_formats import (from_original_names, lora_modules, to_diffsynth_checkpoint,  # noqa: E402
                                           write_format)
from diffsynth.families.wan.animate import WanAnimate  # noqa: E402
from diffsynth.families.wan.animate_model import WanAnimateDiT  # noqa: E402
from diffsynth.families.wan.convert import diffusers_to_wan_dit, diffusers_to_wan_vae  # noqa: E402
from diffsynth.models.components import load_component  # noqa: E402
from diffsynth.models.model_config import ModelConfig  # noqa: E402
from diffsynth.training.lora import add_lora, lora_state_dict  # noqa: E402

INPUTS = ("input_image", "animate_pose_video", "animate_face_video")


def clip(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def write_case(case: dict, out: Path) -> None:
    import diffusers
    gen = torch.Generator().manual_seed(SEED)
    model = WanAnimateDiT.from_config(case["ours"]).eval()
    randomise(model, gen)
    with torch.no_grad():  # StyleGAN's equalised layers take unit-variance weights (scaled in the forward) and a blur
        for name, p in model.motion_encoder.named_parameters():
            if name.endswith(".kernel"):
                k = torch.tensor([1.0, 3.0, 3.0, 1.0])
                p.copy_(k[None, :] * k[:, None] / 64)
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen))
    save_file({k: v.contiguous() for k, v in diffusers_to_wan_dit(model.state_dict()).items()},
              str(out / "animate_dit.safetensors"))
    del model
    vae = diffusers.AutoencoderKLWan.from_config(WAN21_VAE).eval()
    randomise(vae, gen)
    save_file({k: v.contiguous() for k, v in diffusers_to_wan_vae(vae.state_dict(), 2).items()},
              str(out / "vae.safetensors"))
    torch.save(vae.state_dict(), out / "vae_diffusers.pt")
    rng = np.random.default_rng(SEED)
    for name, size in (("video", case["size"]), ("animate_pose_video", case["size"]),
                       ("animate_face_video", case["face_size"])):
        for i, frame in enumerate(clip(rng, case["frames"], size)):
            frame.save(out / f"{name}_{i}.png")
    save_file({"prompt_emb": torch.randn(case["prompt"], generator=gen),
               "clip_feature": torch.randn(case["clip_feature"], generator=gen)}, str(out / "prompt.safetensors"))


def load_pipe(out: Path) -> WanAnimate:
    import diffusers
    _, dit = load_component(ModelConfig(path=str(out / "animate_dit.safetensors")), "wan", torch.float32)
    vae = diffusers.AutoencoderKLWan.from_config(WAN21_VAE).eval()
    vae.load_state_dict(torch.load(out / "vae_diffusers.pt"))
    pipe = WanAnimate(dit, vae, None, None, dtype=torch.float32, wanted_inputs=INPUTS, text_encoder_cached=True)
    given = load_file(str(out / "prompt.safetensors"))
    pipe.encode_prompt = lambda text: given["prompt_emb"]  # the text and CLIP encoders are not part of these rows
    pipe.encode_clip = lambda image: given["clip_feature"]
    return pipe


def item(case: dict, out: Path) -> dict:
    frames = lambda name: [Image.open(out / f"{name}_{i}.png").convert("RGB") for i in range(case["frames"])]  # noqa: E731
    return {"video": frames("video"), "animate_pose_video": frames("animate_pose_video"),
            "animate_face_video": frames("animate_face_video"), "prompt": "p"}


def cmd_animate(name: str, out: Path) -> None:
    case = ANIMATE_CASES[name]
    write_case(case, out)
    pipe = load_pipe(out)
    inputs = pipe.encode(item(case, out))
    noise = torch.randn(inputs["latents"].shape, generator=torch.Generator().manual_seed(SEED + 2))
    results = {k: inputs[k] for k in ("latents", "y", "pose_latents", "face_pixel_values")}
    results["noise"] = noise
    with torch.no_grad():
        results["motion_tokens"] = pipe.animate_adapter.motion_tokens(inputs["face_pixel_values"])
    results["pred"], results["loss"] = predict_and_loss(pipe, inputs, noise)
    # LoRA on pipe.dit with the recipe's targets (--lora_base_model dit)
    add_lora(pipe.dit, WanAnimate.lora_targets_for("dit", pipe.dit, case["targets"].split(",")), RANK)
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for k, p in pipe.dit.named_parameters():
            if ".lora_" in k:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    results["pred_lora"], _ = predict_and_loss(pipe, inputs, noise)
    peft_state = lora_state_dict(pipe.dit)
    ckpt = to_diffsynth_checkpoint(peft_state, "wan")  # what the training loop saves (--remove_prefix pipe.dit.)
    save_file({k: v.contiguous() for k, v in ckpt.items()}, str(out / "our_ckpt.safetensors"))
    export = write_format(from_original_names(lora_modules(ckpt), "wan", pipe.dit), "diffsynth", "wan")
    save_file({k: v.contiguous() for k, v in export.items()}, str(out / "our_export.safetensors"))
    results["our_modules"] = torch.tensor([float(len(lora_modules(peft_state)))])
    # a full fine-tune of animate_adapter saves its tensors under these names (--remove_prefix pipe.animate_adapter.)
    (out / "our_full_names.json").write_text(json.dumps(
        {k: list(v.shape) for k, v in pipe.animate_adapter.state_dict().items()}))
    save_file({k: v.contiguous() for k, v in results.items()}, str(out / "ours.safetensors"))


def cmd_load(name: str, out: Path) -> None:
    """DiffSynth's trainer checkpoint (LoRA on its pipe.dit) as our lora.lora_checkpoint."""
    case = ANIMATE_CASES[name]
    pipe = load_pipe(out)
    tensors = load_file(str(out / "ours.safetensors"))
    given = load_file(str(out / "prompt.safetensors"))
    inputs = {k: tensors[k] for k in ("latents", "y", "pose_latents", "face_pixel_values")}
    inputs.update(prompt_emb=given["prompt_emb"], clip_feature=given["clip_feature"])
    read_its_checkpoint(pipe, WanAnimate, "dit", case["targets"], inputs, tensors["noise"], out)


if __name__ == "__main__":
    command, case_name, folder = sys.argv[1:4]
    {"animate": cmd_animate, "load": cmd_load}[command](case_name, Path(folder))
