"""Our side of the Wan2.2-Animate-2 parity rows (``python ours_animate2.py CASE DIR``, this project's environment).

Writes the case's random weights as the released files hold them (the ``wan_animate_2`` DiT file in its own names,
which are DiffSynth's; the Wan2.1 VAE in its original layout; the CLIP image tower in open-clip's names), PNG inputs
(the video, a longer reference video and a reference image at other sizes) and random prompt embeddings; loads
them through our checkpoint kinds and the ``WanAnimate2`` pipeline and writes: what ``encode`` gives (target
latents with the reference image's frame, ``y``, CLIP features of the image and of the reference video's first
frame, reference latents), the reference stream's ``y`` as the DiT receives it, the training prediction and loss
(also with a 1-frame reference video), a LoRA on ``pipe.dit`` as our trainer saves it and our exports of it, with
the prediction it gives, and the tensor names a full fine-tune of the recipe's ``trainable_models`` saves.
``load``: DiffSynth's trainer checkpoint as our lora_checkpoint.
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
from cases import ANIMATE2_CASES, RANK, SEED, WAN21_VAE  # noqa: E402
from ours import randomise  # noqa: E402
from ours_vace import predict_and_loss, read_its_checkpoint  # noqa: E402

from diffsynth.export import export_checkpoint  # noqa: E402
from diffsynth.export.lora_formats import lora_modules, to_diffsynth_checkpoint  # noqa: E402
from diffsynth.families.wan.animate2 import IMAGE_KEY, PROMPT_KEY, VIDEO_KEY, WanAnimate2  # noqa: E402
from diffsynth.families.wan.animate2_model import WanAnimate2DiT  # noqa: E402
from diffsynth.families.wan.convert import diffusers_to_wan_vae, hf_to_wan_clip  # noqa: E402
from diffsynth.models.components import load_component  # noqa: E402
from diffsynth.models.model_config import ModelConfig  # noqa: E402
from diffsynth.training.checkpoint import trainable_state_dict  # noqa: E402
from diffsynth.training.lora import add_lora, lora_state_dict  # noqa: E402
from diffsynth.training.module import pipe_model  # noqa: E402

# what encode hands the DiT (and the short-reference run's reference latents)
ENCODED = ("latents", "prompt_emb", "y", "clip_feature", "reference_latents", "prompt_ref_emb", "clip_reference")
PROMPT, PROMPT_REF = "p", "r"


def pngs(rng: np.random.Generator, n: int, width: int, height: int) -> list[Image.Image]:
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(n)]


def write_case(case: dict, out: Path) -> None:
    import diffusers
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    gen = torch.Generator().manual_seed(SEED)
    model = WanAnimate2DiT(**case["ours"]).eval()
    randomise(model, gen)
    with torch.no_grad():  # img_emb's two LayerNorms (proj.0, proj.4) have no "norm" in their names
        for name in ("img_emb.proj.0.weight", "img_emb.proj.4.weight"):
            p = model.get_parameter(name)
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "animate2_dit.safetensors"))
    del model
    vae = diffusers.AutoencoderKLWan.from_config(WAN21_VAE).eval()
    randomise(vae, gen)
    save_file({k: v.contiguous() for k, v in diffusers_to_wan_vae(vae.state_dict(), 2).items()},
              str(out / "vae.safetensors"))
    torch.save(vae.state_dict(), out / "vae_diffusers.pt")
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**case["clip"])).eval()
    randomise(clip, gen)
    state = hf_to_wan_clip(clip.state_dict())
    # the released file also holds open-clip's XLM-RoBERTa text tower (unused by Wan; both sides drop it)
    state.update({"log_scale": torch.zeros(()), "textual.token_embedding.weight": torch.randn(16, 8, generator=gen)})
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "clip.safetensors"))
    rng = np.random.default_rng(SEED)
    for i, frame in enumerate(pngs(rng, case["frames"], case["width"], case["height"])):
        frame.save(out / f"video_{i}.png")
    ref = case["reference_video"]
    for i, frame in enumerate(pngs(rng, ref["frames"], *ref["size"])):
        frame.save(out / f"reference_video_{i}.png")
    pngs(rng, 1, *case["reference_image"])[0].save(out / "reference_image.png")
    save_file({"prompt_emb": torch.randn(case["prompt"], generator=gen),
               "prompt_ref_emb": torch.randn(case["prompt_ref"], generator=gen)}, str(out / "prompt.safetensors"))


def load_pipe(out: Path) -> WanAnimate2:
    import diffusers
    _, dit = load_component(ModelConfig(path=str(out / "animate2_dit.safetensors")), "wan", torch.float32)
    component, clip = load_component(ModelConfig(path=str(out / "clip.safetensors")), "wan", torch.float32)
    assert isinstance(dit, WanAnimate2DiT) and component == "image_encoder", (type(dit), component)
    vae = diffusers.AutoencoderKLWan.from_config(WAN21_VAE).eval()
    vae.load_state_dict(torch.load(out / "vae_diffusers.pt"))
    pipe = WanAnimate2(dit, vae, None, None, image_encoder=clip, dtype=torch.float32,
                       wanted_inputs=WanAnimate2.extra_inputs, text_encoder_cached=True)
    given = load_file(str(out / "prompt.safetensors"))
    # UMT5 is not part of these rows: the two prompts' embeddings are given
    pipe.encode_prompt = lambda text: given["prompt_ref_emb" if text == PROMPT_REF else "prompt_emb"]
    return pipe


def item(case: dict, out: Path, reference_frames: int | None = None) -> dict:
    n = reference_frames or case["reference_video"]["frames"]
    return {"video": [Image.open(out / f"video_{i}.png").convert("RGB") for i in range(case["frames"])],
            "prompt": PROMPT, PROMPT_KEY: PROMPT_REF,
            IMAGE_KEY: Image.open(out / "reference_image.png").convert("RGB"),
            VIDEO_KEY: [Image.open(out / f"reference_video_{i}.png").convert("RGB") for i in range(n)]}


def capture_dit_inputs(pipe: WanAnimate2) -> dict:
    """The arguments our pipeline hands the DiT (its first call after this)."""
    captured = {}

    def hook(module, args, kwargs):
        if not captured:
            names = ("latents", "timestep", "context", "clip_feature", "y", "reference_latents", "reference_y",
                     "context_ref", "clip_ref")
            captured.update({k: v for k, v in zip(names, args) if isinstance(v, torch.Tensor)})
            handle.remove()
    handle = pipe.dit.register_forward_pre_hook(hook, with_kwargs=True)
    return captured


def full_names(case: dict, pipe: WanAnimate2) -> dict:
    """A full fine-tune of the recipe's trainable_models (module.configure_trainable's freezing), saved with
    --remove_prefix_in_ckpt pipe.dit.: its tensors' names and shapes."""
    pipe.eval().requires_grad_(False)
    for name in case["trainable_models"].split(","):
        pipe_model(pipe, name, "train.trainable_models").requires_grad_(True)
    names = {k: list(v.shape) for k, v in trainable_state_dict(pipe, "dit.").items()}
    pipe.requires_grad_(False)
    return names


def cmd_animate2(name: str, out: Path) -> None:
    case = ANIMATE2_CASES[name]
    write_case(case, out)
    pipe = load_pipe(out)
    inputs = pipe.encode(item(case, out))
    noise = torch.randn(inputs["latents"].shape, generator=torch.Generator().manual_seed(SEED + 2))
    results = {k: inputs[k] for k in ENCODED}
    results["noise"] = noise
    dit_inputs = capture_dit_inputs(pipe)
    results["pred"], results["loss"] = predict_and_loss(pipe, inputs, noise)
    results["reference_y"] = dit_inputs["reference_y"]
    short = pipe.encode(item(case, out, case["short_reference_frames"]))
    results["short_reference_latents"] = short["reference_latents"]
    results["pred_short"], results["loss_short"] = predict_and_loss(pipe, short, noise)
    (out / "our_full_names.json").write_text(json.dumps(full_names(case, pipe)))
    # LoRA on pipe.dit with the recipe's targets (--lora_base_model dit)
    add_lora(pipe.dit, WanAnimate2.lora_targets_for("dit", pipe.dit, case["targets"].split(",")), RANK)
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for k, p in pipe.dit.named_parameters():
            if ".lora_" in k:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    results["pred_lora"], _ = predict_and_loss(pipe, inputs, noise)
    peft_state = lora_state_dict(pipe.dit)
    # what the training loop saves (--remove_prefix_in_ckpt pipe.dit.: checkpoint.Checkpointer)
    ckpt = to_diffsynth_checkpoint(peft_state, WanAnimate2)
    save_file({k: v.contiguous() for k, v in ckpt.items()}, str(out / "our_ckpt.safetensors"))
    with torch.device("meta"):
        base = WanAnimate2DiT(**case["ours"])
    result = export_checkpoint(out / "our_ckpt.safetensors", out / "export", ["diffsynth", "comfyui", "diffusers"],
                               "wan_animate_2", base)
    (out / "our_export_compat.json").write_text(json.dumps(result.compat))
    results["our_modules"] = torch.tensor([float(len(lora_modules(peft_state)))])
    save_file({k: v.contiguous() for k, v in results.items()}, str(out / "ours.safetensors"))


def cmd_load(name: str, out: Path) -> None:
    """DiffSynth's trainer checkpoint (LoRA on its pipe.dit) as our lora.lora_checkpoint."""
    case = ANIMATE2_CASES[name]
    pipe = load_pipe(out)
    tensors = load_file(str(out / "ours.safetensors"))
    inputs = {k: tensors[k] for k in ENCODED}
    read_its_checkpoint(pipe, WanAnimate2, "dit", case["targets"], inputs, tensors["noise"], out)


if __name__ == "__main__":
    command, case_name, folder = sys.argv[1:4]
    {"animate2": cmd_animate2, "load": cmd_load}[command](case_name, Path(folder))
