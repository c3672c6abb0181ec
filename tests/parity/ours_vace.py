"""Our side of the Wan VACE parity rows (``python ours_vace.py CASE DIR``, this project's environment).

Writes the case's random weights as the real files hold them (one DiT file in the original Wan-AI names with the
``vace_*`` keys, the Wan2.1 VAE in its original layout) and PNG clips, loads them through our checkpoint kind and
``WanVace`` pipeline, and writes: the encoded inputs (target latents with the reference frame, ``vace_context``),
the training prediction and loss, a LoRA on ``pipe.vace`` as our trainer saves it and our ``diffsynth`` export of
it, with the predictions they give, and the full-fine-tune tensor names of ``pipe.vace``.
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
from cases import RANK, SEED, TIMESTEP_ID, VACE_CASES, WAN21_VAE  # noqa: E402
from ours import randomise  # noqa: E402

from diffsynth.export import export_checkpoint  # noqa: E402
from diffsynth.families.wan.convert import diffusers_to_wan_dit, diffusers_to_wan_vae  # noqa: E402
from diffsynth.export.lora_formats import lora_modules  # noqa: E402
from diffsynth.families.wan.vace import WanVace  # noqa: E402
from diffsynth.models.components import load_component  # noqa: E402
from diffsynth.models.model_config import ModelConfig  # noqa: E402
from diffsynth.training.lora import add_lora, load_lora_checkpoint  # noqa: E402
from diffsynth.training.loss import velocity_mse  # noqa: E402
from diffsynth.training.schedule import FlowMatchSchedule  # noqa: E402


def clip(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def write_case(case: dict, out: Path) -> None:
    import diffusers
    gen = torch.Generator().manual_seed(SEED)
    model = diffusers.WanVACETransformer3DModel.from_config(case["ours"]).eval()
    randomise(model, gen)
    save_file({k: v.contiguous() for k, v in diffusers_to_wan_dit(model.state_dict()).items()},
              str(out / "vace_dit.safetensors"))
    vae = diffusers.AutoencoderKLWan.from_config(WAN21_VAE).eval()
    randomise(vae, gen)
    save_file({k: v.contiguous() for k, v in diffusers_to_wan_vae(vae.state_dict(), 2).items()},
              str(out / "vae.safetensors"))
    torch.save(vae.state_dict(), out / "vae_diffusers.pt")
    rng = np.random.default_rng(SEED)
    for name in ("video", "vace_video"):
        for i, frame in enumerate(clip(rng, case["frames"], case["size"])):
            frame.save(out / f"{name}_{i}.png")
    clip(rng, 1, case["size"])[0].save(out / "vace_reference_image.png")
    save_file({"prompt_emb": torch.randn(case["prompt"], generator=gen)}, str(out / "prompt.safetensors"))


def load_pipe(case: dict, out: Path) -> WanVace:
    import diffusers
    _, dit = load_component(ModelConfig(path=str(out / "vace_dit.safetensors")), "wan", torch.float32)
    vae = diffusers.AutoencoderKLWan.from_config(WAN21_VAE).eval()
    vae.load_state_dict(torch.load(out / "vae_diffusers.pt"))
    return WanVace(dit, vae, None, None, dtype=torch.float32, wanted_inputs=("vace_video", "vace_reference_image"))


def item(case: dict, out: Path) -> dict:
    frames = lambda name: [Image.open(out / f"{name}_{i}.png").convert("RGB") for i in range(case["frames"])]  # noqa: E731
    return {"video": frames("video"), "vace_video": frames("vace_video"), "prompt": "p",
            "vace_reference_image": Image.open(out / "vace_reference_image.png").convert("RGB")}


def predict_and_loss(pipe, inputs: dict, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    schedule = FlowMatchSchedule.for_family("wan")
    i = TIMESTEP_ID
    t, sigma, weight = schedule.timesteps[i:i + 1], schedule.sigmas[i:i + 1], schedule.weights[i:i + 1]
    captured, predict = {}, pipe.predict

    def spy(noisy, timestep, inp):
        captured["pred"] = result = predict(noisy, timestep, inp)
        return result
    pipe.predict = spy
    with torch.no_grad():
        loss = velocity_mse(pipe, inputs, noise, t, sigma) * weight
    pipe.predict = predict
    return captured["pred"], loss.reshape(1)


def cmd_vace(name: str, out: Path) -> None:
    case = VACE_CASES[name]
    write_case(case, out)
    pipe = load_pipe(case, out)
    prompt_emb = load_file(str(out / "prompt.safetensors"))["prompt_emb"]
    pipe.encode_prompt = lambda text: prompt_emb  # the text encoder is not part of these rows
    inputs = pipe.encode(item(case, out))
    noise = torch.randn(inputs["latents"].shape, generator=torch.Generator().manual_seed(SEED + 2))
    results = {"latents": inputs["latents"], "vace_context": inputs["vace_context"], "noise": noise}
    results["pred"], results["loss"] = predict_and_loss(pipe, inputs, noise)
    # LoRA on pipe.vace with DiffSynth's default targets, as --lora_base_model vace puts it
    targets = WanVace.lora_targets_for("vace", pipe.vace, case["targets"].split(","))
    add_lora(pipe.vace, targets, RANK)
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for k, p in pipe.vace.named_parameters():
            if ".lora_" in k:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    results["pred_lora"], _ = predict_and_loss(pipe, inputs, noise)
    # the training checkpoint: trainable tensors, --remove_prefix_in_ckpt pipe.vace. (no renaming: DiffSynth's names)
    ckpt = {k: v.contiguous() for k, v in pipe.vace.state_dict().items() if ".lora_" in k}
    save_file(ckpt, str(out / "our_ckpt.safetensors"))
    import diffusers
    with torch.device("meta"):
        base = diffusers.WanVACETransformer3DModel.from_config(case["ours"])
    result = export_checkpoint(out / "our_ckpt.safetensors", out / "export", ["diffsynth", "comfyui", "diffusers"],
                               "wan_vace", base)
    (out / "our_export_compat.json").write_text(json.dumps(result.compat))
    (out / "our_full_names.json").write_text(json.dumps(
        {k: list(v.shape) for k, v in load_pipe(case, out).vace.state_dict().items()}))
    save_file({k: v.contiguous() for k, v in results.items()}, str(out / "ours.safetensors"))


def read_its_checkpoint(pipe, spec, model: str, targets: str, inputs: dict, noise: torch.Tensor, out: Path) -> None:
    """DiffSynth's trainer checkpoint (``ds_ckpt.safetensors``, LoRA on its ``pipe.<model>``) read by our
    lora.lora_checkpoint: the prediction and loss with it, and the modules read and loaded (ours_load.safetensors)."""
    module = getattr(pipe, model)
    add_lora(module, spec.lora_targets_for(model, module, targets.split(",")), RANK)
    state = load_file(str(out / "ds_ckpt.safetensors"))
    loaded = load_lora_checkpoint(module, state, spec, source="ds_ckpt.safetensors")
    pred, loss = predict_and_loss(pipe, inputs, noise)
    save_file({"pred_ds_lora": pred.contiguous(), "loss_ds_lora": loss, "loaded_modules": torch.tensor([float(loaded)]),
               "read_modules": torch.tensor([float(len(lora_modules(state)))])}, str(out / "ours_load.safetensors"))


def cmd_load(name: str, out: Path) -> None:
    """DiffSynth's trainer checkpoint (LoRA on its pipe.vace) as our lora.lora_checkpoint."""
    case = VACE_CASES[name]
    pipe = load_pipe(case, out)
    tensors = load_file(str(out / "ours.safetensors"))
    prompt_emb = load_file(str(out / "prompt.safetensors"))["prompt_emb"]
    inputs = {"latents": tensors["latents"], "vace_context": tensors["vace_context"], "prompt_emb": prompt_emb}
    read_its_checkpoint(pipe, WanVace, "vace", case["targets"], inputs, tensors["noise"], out)


if __name__ == "__main__":
    command, case_name, folder = sys.argv[1:4]
    {"vace": cmd_vace, "load": cmd_load}[command](case_name, Path(folder))
