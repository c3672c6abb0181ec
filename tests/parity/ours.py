"""Our side of the parity suite: run with this project's environment (``diffsynth`` = this package).

``python ours.py dit CASE DIR``   builds the case's DiT (random weights, written to DIR for the reference side),
                                  its inputs, our prediction and loss, and our LoRA files (training checkpoint and
                                  ``diffsynth`` export) with the prediction they give.
``python ours.py load CASE DIR``  loads the checkpoint DiffSynth-Studio's trainer code wrote (``ds_ckpt``) as
                                  ``lora.lora_checkpoint`` and writes the prediction it gives.
``python ours.py vae CASE DIR``   our VAE encode (with the family's latent normalisation) of a small image/clip.
``python ours.py edit - DIR``     Qwen-Image-Edit's image inputs: writes the edit images and both processor folders
                                  (twin and real config) to DIR, and what our pipeline makes of them.
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from cases import DISTILL_FAMILIES, DISTILL_STEPS, DIT_CASES, PROMPT_FLUX2, PROMPT_TEXT, RANK, SEED, TIMESTEP_ID, VAE_CASES  # noqa: E402,E501

import diffsynth  # noqa: E402,F401  (our package, not DiffSynth-Studio's: this venv's)

from diffsynth.export.lora_formats import (from_original_names, lora_modules, to_diffsynth_checkpoint,  # noqa: E402
                                           write_format)
from diffsynth.families import get_spec, select_variant  # noqa: E402
from diffsynth.families.flux import Flux  # noqa: E402
from diffsynth.families.flux2 import Flux2  # noqa: E402
from diffsynth.families.qwen_image import QwenImage  # noqa: E402
from diffsynth.families.wan import Wan  # noqa: E402
from diffsynth.families.z_image import ZImage  # noqa: E402
from diffsynth.training.lora import add_lora, load_lora_checkpoint, lora_state_dict  # noqa: E402
from diffsynth.training import distill  # noqa: E402
from diffsynth.training.loss import velocity_mse  # noqa: E402
from diffsynth.training.schedule import FlowMatchSchedule  # noqa: E402

PIPELINES = {"qwen_image": QwenImage, "flux": Flux, "wan": Wan, "flux2": Flux2, "z_image": ZImage}
SCHEDULES = {"qwen_image": "qwen_image", "flux": "flux", "wan": "wan", "flux2": "flux2", "z_image": "z_image"}


def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Every weight random (none left at a zero init that would hide a mismatch), norms near one."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() >= 2 and "scale_shift_table" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def build_dit(case: dict) -> torch.nn.Module:
    import diffusers
    if case["ours"]["cls"] == "WanFunTransformer3DModel":
        from diffsynth.families.wan.fun_dit import WanFunTransformer3DModel
        return WanFunTransformer3DModel.from_config(case["ours"]["config"]).eval()
    return getattr(diffusers, case["ours"]["cls"]).from_config(case["ours"]["config"]).eval()


# Wan's conditioning inputs a case may give its DiT (random tensors of the real shapes)
WAN_CONDITIONING = ("y", "clip_feature", "reference_latents")


def bare_pipeline(case: dict, dit: torch.nn.Module, folder: Path | None = None):
    """The family pipeline (or the variant the case's extra input selects) with only its DiT: ``predict`` is what
    training calls; encoders are not needed."""
    cls = select_variant(case["family"], case["variant"]) if case.get("variant") else PIPELINES[case["family"]]
    pipe = cls.__new__(cls)
    torch.nn.Module.__init__(pipe)
    pipe.dit, pipe.torch_dtype = dit, torch.float32
    if case["family"] == "wan":
        pipe.patch_size = tuple(dit.config.patch_size)
        pipe.spatial_factor, pipe.temporal_factor, pipe.z_dim = 8, 4, 16  # the Wan2.1 VAE's
        embedder = dit.condition_embedder.image_embedder
        pipe.two_image_clip = embedder is not None and embedder.pos_embed is not None
    if "motion_bucket_id" in case:
        from diffsynth.families.wan.speed import WanMotionController
        pipe.motion_controller = WanMotionController(256, dit.config.num_attention_heads * 128)
        pipe.motion_controller.load_state_dict(load_file(str(folder / "motion_controller.safetensors")))
    if "controlnet" in case:  # Z-Image Fun-ControlNet: PAI's file names are diffusers' (loaded as they are)
        from diffusers import ZImageControlNetModel
        pipe.controlnet = ZImageControlNetModel.from_config(case["controlnet"]).eval()
        pipe.controlnet.load_state_dict(load_file(str(folder / "controlnet.safetensors")))
        pipe.controlnet.requires_grad_(False)
        pipe.control_scale = 1.0
    return pipe


def model_inputs(case: dict, tensors: dict) -> dict:
    inputs = {"latents": tensors["latents"], "prompt_emb": tensors["prompt_emb"]}
    if "pooled" in tensors:
        inputs["pooled_prompt_emb"] = tensors["pooled"]
    if "first_frame_latents" in tensors:
        inputs["first_frame_latents"] = tensors["first_frame_latents"]
    for key in (*WAN_CONDITIONING, "motion_bucket_id", "control_context"):
        if key in tensors:
            inputs[key] = tensors[key]
    if "camera" in case:  # what WanFunCamera.encode stores: (direction index, speed)
        from diffsynth.families.wan.camera import DIRECTIONS
        direction, speed = case["camera"]
        inputs["camera"] = torch.tensor([[DIRECTIONS.index(direction), speed]], dtype=torch.float64)
    return inputs


LAST_CALL: dict = {}  # the last training forward's (noisy latents, timestep, inputs)


def predict_and_loss(case: dict, pipe, tensors: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Our training forward at the fixed grid point: the prediction on the noisy latents and the weighted loss."""
    schedule = FlowMatchSchedule.for_family(SCHEDULES[case["family"]])
    i = TIMESTEP_ID
    t, sigma, weight = schedule.timesteps[i:i + 1], schedule.sigmas[i:i + 1], schedule.weights[i:i + 1]
    inputs = model_inputs(case, tensors)
    captured = {}
    predict = pipe.predict

    def spy(noisy, timestep, inp):
        captured["pred"] = out = predict(noisy, timestep, inp)
        LAST_CALL["args"] = (noisy, timestep, inp)
        return out
    pipe.predict = spy
    with torch.no_grad():
        loss = velocity_mse(pipe, inputs, tensors["noise"], t, sigma) * weight
    pipe.predict = predict
    return captured["pred"], loss.reshape(1)


def distill_loss(case: dict, pipe, tensors: dict) -> torch.Tensor:
    """Our direct_distill loss: DISTILL_STEPS student steps from the case's noise, against its latents."""
    inputs = {**model_inputs(case, tensors), distill.NOISE: tensors["noise"], distill.STEPS: DISTILL_STEPS}
    with torch.no_grad():
        return distill.direct_distill_loss(pipe, inputs).reshape(1)


def lora_targets(case: dict, pipe) -> list[str] | str:
    targets = case["targets"].split(",")
    return type(pipe).lora_targets_for("dit", pipe.dit, targets)


def cmd_dit(name: str, out: Path) -> None:
    case = DIT_CASES[name]
    gen = torch.Generator().manual_seed(SEED)
    dit = build_dit(case)
    randomise(dit, gen)
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(out / "dit.safetensors"))
    tensors = {"latents": torch.randn(case["latents"], generator=gen),
               "noise": torch.randn(case["latents"], generator=gen),
               "prompt_emb": torch.randn(case["prompt"], generator=gen)}
    if "pooled" in case:
        tensors["pooled"] = torch.randn(case["pooled"], generator=gen)
    if case.get("first_frame"):
        tensors["first_frame_latents"] = tensors["latents"][:, :, 0:1].clone()
    for key in WAN_CONDITIONING:
        if key in case:
            tensors[key] = torch.randn(case[key], generator=gen)
    if case.get("original_names"):  # the released files' names, which DiffSynth's WanModel loads as they are
        from diffsynth.families.wan.convert import diffusers_to_wan_dit
        save_file({k: v.contiguous() for k, v in diffusers_to_wan_dit(dit.state_dict()).items()},
                  str(out / "dit_original.safetensors"))
    if "controlnet" in case:
        from diffusers import ZImageControlNetModel
        controlnet = ZImageControlNetModel.from_config(case["controlnet"])
        randomise(controlnet, gen)
        save_file({k: v.contiguous() for k, v in controlnet.state_dict().items()}, str(out / "controlnet.safetensors"))
        tensors["control_context"] = torch.randn(case["control_context"], generator=gen)
    if "motion_bucket_id" in case:
        from diffsynth.families.wan.speed import WanMotionController
        controller = WanMotionController(256, dit.config.num_attention_heads * 128)
        randomise(controller, gen)
        save_file(dict(controller.state_dict()), str(out / "motion_controller.safetensors"))
        tensors["motion_bucket_id"] = torch.tensor([case["motion_bucket_id"]])
    save_file(tensors, str(out / "inputs.safetensors"))
    pipe = bare_pipeline(case, dit, out)
    pred, loss = predict_and_loss(case, pipe, tensors)
    results = {"pred": pred, "loss": loss}
    if case["family"] in DISTILL_FAMILIES:
        results["distill_loss"] = distill_loss(case, pipe, tensors)
    # conditioning tensors built from the case's plain inputs (no encoder involved)
    if "camera" in case:
        results["camera_embedding"] = pipe.dit_inputs(model_inputs(case, tensors))["control_camera"]
    if "motion_bucket_id" in case:
        with torch.no_grad():
            results["motion_embedding"] = pipe.motion_controller(tensors["motion_bucket_id"])
    if "controlnet" in case:  # what the ControlNet adds: our prediction less the plain DiT's, on the same input
        with torch.no_grad():
            noisy, t, inputs = LAST_CALL["args"]
            results["control_change"] = pred - PIPELINES["z_image"].predict(pipe, noisy, t, inputs)

    add_lora(dit, lora_targets(case, pipe), RANK)
    lora_gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for k, p in dit.named_parameters():
            if ".lora_" in k:
                p.copy_(0.05 * torch.randn(p.shape, generator=lora_gen))
    results["pred_lora"], results["loss_lora"] = predict_and_loss(case, pipe, tensors)
    peft_state = lora_state_dict(dit)
    ckpt = to_diffsynth_checkpoint(peft_state, case["family"])  # what the training loop saves (prefix removed)
    save_file({k: v.contiguous() for k, v in ckpt.items()}, str(out / "our_ckpt.safetensors"))
    modules = from_original_names(lora_modules(ckpt), case["family"], dit)
    export = write_format(modules, "diffsynth", case["family"])
    save_file({k: v.contiguous() for k, v in export.items()}, str(out / "our_export.safetensors"))
    results["our_modules"] = torch.tensor([float(len(lora_modules(peft_state)))])
    save_file({k: v.contiguous() for k, v in results.items()}, str(out / "ours.safetensors"))


def cmd_load(name: str, out: Path) -> None:
    """DiffSynth's checkpoint -> our ``lora_checkpoint`` path (the family's default targets, rank RANK)."""
    case = DIT_CASES[name]
    dit = build_dit(case)
    dit.load_state_dict(load_file(str(out / "dit.safetensors")))
    pipe = bare_pipeline(case, dit, out)
    add_lora(dit, lora_targets(case, pipe), RANK)
    state = load_file(str(out / "ds_ckpt.safetensors"))
    loaded = load_lora_checkpoint(dit, state, get_spec(case["family"]), source="ds_ckpt.safetensors")
    tensors = load_file(str(out / "inputs.safetensors"))
    pred, loss = predict_and_loss(case, pipe, tensors)
    # load_lora_checkpoint raises on any module it cannot place, so reaching here means every module was read
    read = len(lora_modules(state))
    save_file({"pred_ds_lora": pred.contiguous(), "loss_ds_lora": loss, "read_modules": torch.tensor([float(read)]),
               "loaded_modules": torch.tensor([float(loaded)])},
              str(out / "ours_load.safetensors"))


def cmd_vae(name: str, out: Path) -> None:
    case = VAE_CASES[name]
    import diffusers
    gen = torch.Generator().manual_seed(SEED)
    config = dict(case["config"])
    if config.get("z_dim") == 48:  # the Wan2.2 VAE's latent statistics, as our loader sets them
        from diffsynth.families.wan.real_configs import WAN22_VAE_LATENTS_MEAN, WAN22_VAE_LATENTS_STD
        config.update(latents_mean=WAN22_VAE_LATENTS_MEAN, latents_std=WAN22_VAE_LATENTS_STD)
    vae = getattr(diffusers, case["cls"]).from_config(config).eval()
    randomise(vae, gen)
    if case["family"] == "flux2":  # its latent statistics are buffers: random too, so the normalisation counts
        with torch.no_grad():
            vae.bn.running_mean.copy_(0.1 * torch.randn(vae.bn.num_features, generator=gen))
            vae.bn.running_var.copy_(0.5 + torch.rand(vae.bn.num_features, generator=gen))
    state = {k: v.contiguous() for k, v in vae.state_dict().items()}
    if case["layout"] == "wan":  # the original layout DiffSynth reads (Wan2.1_VAE.pth / Wan2.2_VAE.pth)
        from diffsynth.families.wan.convert import diffusers_to_wan_vae
        state = diffusers_to_wan_vae(state, vae.config.num_res_blocks)
    elif case["layout"] == "bfl":  # ae.safetensors
        from diffsynth.families.flux.convert import diffusers_to_bfl_vae
        state = diffusers_to_bfl_vae(state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "vae.safetensors"))
    pixels = torch.rand(case["pixels"], generator=gen) * 2 - 1
    save_file({"pixels": pixels}, str(out / "pixels.safetensors"))
    pipe = bare_vae_pipeline(case, vae)
    with torch.no_grad():
        if case["family"] == "wan":
            latents = pipe.encode_video(pixels)
        else:
            latents = encode_image_tensor(case, pipe, pixels)
    save_file({"latents": latents.contiguous()}, str(out / "ours_vae.safetensors"))


def bare_vae_pipeline(case: dict, vae):
    cls = PIPELINES[case["family"]]
    if case["family"] == "flux2":  # its constructor takes the latent statistics from the VAE
        return Flux2(torch.nn.Linear(1, 1), vae, None, None, None, torch.float32)
    pipe = cls.__new__(cls)
    torch.nn.Module.__init__(pipe)
    pipe.vae, pipe.torch_dtype = vae, torch.float32
    pipe.dit = torch.nn.Linear(1, 1)  # only for .device
    if case["family"] in ("wan", "qwen_image"):
        z = vae.config.z_dim
        shape = (1, z, 1, 1, 1) if case["family"] == "wan" else (1, z, 1, 1)
        pipe.register_buffer("latents_mean", torch.tensor(vae.config.latents_mean).view(*shape), persistent=False)
        pipe.register_buffer("latents_std", torch.tensor(vae.config.latents_std).view(*shape), persistent=False)
    return pipe


def encode_image_tensor(case: dict, pipe, pixels: torch.Tensor) -> torch.Tensor:
    """The family's ``encode_image`` on a (1, 3, H, W) tensor in [-1, 1] (the PIL step left out: same for both)."""
    from unittest import mock
    with mock.patch.object(sys.modules[type(pipe).__module__], "image_to_tensor", lambda image, *a, **k: pixels):
        return pipe.encode_image(None)


def cmd_prompt_z_image(out: Path) -> None:
    """Z-Image's prompt path end to end: the tiny twin's tokenizer (written to DIR/tokenizer for both sides), a
    random Qwen3 at Qwen3-4B's width (DIR/text_encoder.safetensors, checkpoint names), our embeddings."""
    from transformers import Qwen3Config, Qwen3Model
    from cases import Z_IMAGE_PROMPTS, Z_IMAGE_TEXT_ENCODER
    from diffsynth.families.z_image.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS
    from diffsynth.models.tokenizers import train_bpe_tokenizer
    tokenizer = train_bpe_tokenizer(out / "tokenizer", "Qwen2TokenizerFast", SPECIAL_TOKENS, "<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(out / "tokenizer"))
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(SEED)
    encoder = Qwen3Model(Qwen3Config(**Z_IMAGE_TEXT_ENCODER, pad_token_id=pad, bos_token_id=pad,
                                     eos_token_id=pad)).eval()
    randomise(encoder, torch.Generator().manual_seed(SEED))
    save_file({f"model.{k}": v.contiguous() for k, v in encoder.state_dict().items()},
              str(out / "text_encoder.safetensors"))
    pipe = ZImage(None, None, encoder, tokenizer)
    save_file({f"emb{i}": pipe.encode_prompt(p)[0].contiguous() for i, p in enumerate(Z_IMAGE_PROMPTS)},
              str(out / "ours_prompt.safetensors"))


def cmd_prompt(name: str, out: Path) -> None:
    if name == "z_image":
        return cmd_prompt_z_image(out)
    """What our Qwen-Image prompt path hands the tokenizer, with the real tokenizer's prefix length (34 tokens:
    DiffSynth's drop_idx; ours is counted from the template by the loaded tokenizer)."""
    import json
    from diffsynth.families.qwen_image.pipeline import MAX_PROMPT_TOKENS, PROMPT_TEMPLATE
    (out / "ours_prompt.json").write_text(json.dumps({"text": PROMPT_TEMPLATE.format("a red cube"),
                                                      "max_length": MAX_PROMPT_TOKENS + 34}))


def cmd_prompt_flux2(name: str, out: Path) -> None:
    """Our FLUX.2 prompt path on a tiny twin written to DIR/<name>/ (the reference side loads the same files):
    the DiT's text input (B, 512, 3·D), and the text position ids."""
    from diffsynth.families.flux2.pipeline import load_flux2_tokenizer, text_ids
    from diffsynth.models.components import load_component
    from diffsynth.models.model_config import ModelConfig
    from diffsynth.models.tiny import write_tiny_model
    folder = out / name
    write_tiny_model(PROMPT_FLUX2[name], folder)
    files = sorted(str(f) for f in (folder / "text_encoder").glob("*.safetensors"))
    component, encoder = load_component(ModelConfig(path=files), "flux2", torch.float32)
    qwen3 = component == "text_encoder_qwen3"
    tokenizer = load_flux2_tokenizer(str(folder / "tokenizer"), mistral=not qwen3)
    pipe = Flux2(None, None, None if qwen3 else encoder, encoder if qwen3 else None, tokenizer, torch.float32)
    emb = pipe.encode_prompt(PROMPT_TEXT)
    save_file({"prompt_emb": emb.contiguous(), "text_ids": text_ids(emb.shape[1]).contiguous()},
              str(out / f"ours_prompt_{name}.safetensors"))


class _Recorder(torch.nn.Module):
    """A stand-in text encoder / VAE that keeps what it is given (the pixels are all the edit case compares)."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.config = SimpleNamespace(z_dim=1, latents_mean=[0.0], latents_std=[1.0])

    def forward(self, **kwargs):
        self.calls.append(kwargs)
        return SimpleNamespace(hidden_states=[torch.zeros(1, kwargs["input_ids"].shape[1], 4)])

    def encode(self, pixels):
        self.calls.append({"pixels": pixels})
        mode = torch.zeros(1, 1, 1, pixels.shape[-2] // 8, pixels.shape[-1] // 8)
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: mode))


def edit_folders(out: Path) -> dict[str, Path]:
    """DIR/edit{i}.png (random noise), and DIR/twin, DIR/real: a processor folder each (the twin's tokenizer, and
    the twin's or the real Qwen2.5-VL preprocessor_config.json), as DiffSynth's Qwen2VLProcessor loads them."""
    import json
    import numpy as np
    from PIL import Image
    from cases import EDIT_IMAGE_SIZES, QWEN25_VL_PREPROCESSOR
    from diffsynth.families.qwen_image.tiny import SPECIAL_TOKENS, write_processor_config
    from diffsynth.models.tokenizers import train_bpe_tokenizer
    rng = np.random.default_rng(SEED)
    for i, (w, h) in enumerate(EDIT_IMAGE_SIZES):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(out / f"edit{i}.png")
    folders = {"twin": out / "twin", "real": out / "real"}
    train_bpe_tokenizer(folders["twin"], "Qwen2TokenizerFast", SPECIAL_TOKENS, "<|endoftext|>")
    write_processor_config(folders["twin"])
    import shutil
    shutil.copytree(folders["twin"], folders["real"])
    (folders["real"] / "preprocessor_config.json").write_text(json.dumps(QWEN25_VL_PREPROCESSOR, indent=2))
    return folders


def cmd_edit(_name: str, out: Path) -> None:
    """Our Qwen-Image-Edit pipeline's ``edit_inputs`` with recording stand-ins for the text encoder and the VAE:
    the VAE inputs (float32 and bfloat16 pipelines), and per processor config the text encoder's input_ids,
    pixel_values and image_grid_thw for one edit image (images 0 and 3) and for the list of all four; plus our
    dataset resize of each image (dynamic and fixed size)."""
    from PIL import Image
    from cases import EDIT_DATA_FIXED, EDIT_DATA_MAX_PIXELS, EDIT_IMAGE_SIZES, EDIT_PROMPT
    from diffsynth.data.resolution import resize_for_training
    from diffsynth.families.qwen_image.edit import QwenImageEdit, load_image_processor
    from transformers import AutoTokenizer
    folders = edit_folders(out)
    images = [Image.open(out / f"edit{i}.png").convert("RGB") for i in range(len(EDIT_IMAGE_SIZES))]
    result = {}
    for name, folder in folders.items():
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        for dtype in (torch.float32, torch.bfloat16):
            encoder, vae = _Recorder(), _Recorder()
            pipe = QwenImageEdit(None, vae, encoder, tokenizer, load_image_processor(str(folder)), dtype)
            cases = {"single0": images[0], "single3": images[3], "multi": images}
            for label, edit in cases.items():
                pipe.edit_inputs(EDIT_PROMPT, edit)
                vae_inputs = [call["pixels"][:, :, 0] for call in vae.calls]
                vae.calls.clear()
                key = str(dtype).split(".")[1]
                for i, pixels in enumerate(vae_inputs):
                    result[f"vae_{label}_{i}_{key}"] = pixels
                (call,) = encoder.calls
                encoder.calls.clear()
                if dtype == torch.float32:  # the VL inputs: the same processor output in both pipelines
                    for k in ("input_ids", "pixel_values", "image_grid_thw"):
                        result[f"{name}_{label}_{k}"] = call[k]
    import numpy as np
    for i, image in enumerate(images):
        dynamic = resize_for_training(image, EDIT_DATA_MAX_PIXELS)
        fixed = resize_for_training(image, EDIT_DATA_MAX_PIXELS, *EDIT_DATA_FIXED)
        result[f"data_dynamic_{i}"] = torch.from_numpy(np.array(dynamic))
        result[f"data_fixed_{i}"] = torch.from_numpy(np.array(fixed))
    save_file({k: v.contiguous() for k, v in result.items()}, str(out / "ours_edit.safetensors"))


def quant_mlp(folder: Path) -> tuple[torch.nn.Module, torch.Tensor]:
    """Two Linear layers (bf16) and an input, written once to DIR/quant_weights.safetensors; both sides load them."""
    path = folder / "quant_weights.safetensors"
    if not path.exists():
        gen = torch.Generator().manual_seed(7)
        tensors = {"0.weight": torch.randn(512, 256, generator=gen) / 16, "0.bias": torch.randn(512, generator=gen) / 16,
                   "2.weight": torch.randn(256, 512, generator=gen) / 22, "2.bias": torch.randn(256, generator=gen) / 22,
                   "x": torch.randn(8, 256, generator=gen)}
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}, str(path))
    tensors = load_file(str(path))
    x = tensors.pop("x")
    mlp = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(512, 256))
    mlp.load_state_dict(tensors)
    return mlp.to(torch.bfloat16).requires_grad_(False), x


def cmd_quant(method: str, out: Path) -> None:
    """Our --quant_options engine on the shared weights: output and input gradient (what LoRA below receives)."""
    from diffsynth.models.quantize import QuantSpec, quantize_model
    mlp, x = quant_mlp(out)
    quantize_model(mlp, QuantSpec(method))
    x.requires_grad_(True)
    y = mlp(x)
    (grad,) = torch.autograd.grad(y.float().sum(), x)
    save_file({"out": y.detach().float().contiguous(), "grad": grad.float().contiguous()},
              str(out / f"ours_quant_{method}.safetensors"))


def cmd_trajectory(name: str, out: Path) -> None:
    """trajectory_imitation on random weights (written to DIR for the reference side): our teacher trajectory,
    trajectory loss and its gradient in the student DiT, and the LPIPS term."""
    import diffusers
    from cases import TRAJECTORY
    from diffsynth.models.lpips import ALEX_CHANNELS, LPIPS, write_tiny_lpips
    from diffsynth.training import trajectory
    gen = torch.Generator().manual_seed(SEED)
    dit = diffusers.ZImageTransformer2DModel.from_config(TRAJECTORY["dit"]).eval()
    randomise(dit, gen)
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(out / "dit.safetensors"))
    vae = diffusers.AutoencoderKL.from_config(VAE_CASES["z_image"]["config"]).eval()
    randomise(vae, gen)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(out / "vae.safetensors"))
    lpips = LPIPS.load(write_tiny_lpips(out / "lpips_file.safetensors", seed=SEED, channels=ALEX_CHANNELS))
    save_file({k: v.contiguous() for k, v in lpips.state_dict().items()}, str(out / "lpips.safetensors"))
    tensors = {"noise": torch.randn(TRAJECTORY["latents"], generator=gen),
               "prompt_emb": torch.randn(TRAJECTORY["prompt"], generator=gen),
               "negative_emb": torch.randn(TRAJECTORY["negative"], generator=gen),
               "images": torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1}
    save_file(tensors, str(out / "inputs.safetensors"))
    pipe = ZImage(dit, vae, None, None)
    dit.requires_grad_(True)
    teacher = trajectory.frozen_copy(pipe)
    positive, negative = {"prompt_emb": tensors["prompt_emb"]}, {"prompt_emb": tensors["negative_emb"]}
    _, student_t = trajectory.student_grid(ZImage)
    sigmas, timesteps = trajectory.teacher_grid(ZImage, student_t)
    path = trajectory.teacher_trajectory(teacher, tensors["noise"], positive, negative, sigmas, timesteps)
    loss = trajectory.imitation_loss(pipe, path, timesteps, positive)
    loss.backward()
    grad = torch.cat([p.grad.flatten() for _, p in sorted(dit.named_parameters())])
    lpips_value = trajectory.lpips_term(pipe, lpips, path, positive)
    save_file({"trajectory": torch.stack(path).contiguous(), "timesteps": timesteps, "loss": loss.detach().reshape(1),
               "lpips": lpips_value.reshape(1), "lpips_images": lpips(tensors["images"][:1], tensors["images"][1:]),
               "total": (loss.detach() + lpips_value).reshape(1), "grad": grad},
              str(out / "ours_trajectory.safetensors"))


if __name__ == "__main__":
    command, name, folder = sys.argv[1:4]
    {"dit": cmd_dit, "load": cmd_load, "vae": cmd_vae, "prompt": cmd_prompt, "prompt_flux2": cmd_prompt_flux2,
     "quant": cmd_quant, "edit": cmd_edit, "trajectory": cmd_trajectory}[command](name, Path(folder))
