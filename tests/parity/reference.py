"""DiffSynth-Studio's side of the parity suite: run ONLY with the parity environment (``.venv-parity``), where
``diffsynth`` is DiffSynth-Studio itself (pinned in requirements-parity.txt), never this project's package.

``python reference.py dit CASE DIR``  loads DIR/dit.safetensors (diffusers names, written by ours.py) through
    DiffSynth's own state-dict converter into its own DiT class, runs its ``model_fn`` and ``FlowMatchSFTLoss`` on
    the same inputs, loads our LoRA files with its pipeline's ``load_lora``, and writes a LoRA checkpoint the way
    its trainer does (``add_lora_to_model`` + trainable tensors, prefix removed) for ours.py to load.
``python reference.py vae CASE DIR``  its VAE class and pipeline normalisation on the same weights and pixels.
``python reference.py edit - DIR``    Qwen-Image-Edit's image inputs through its EditImageEmbedder and PromptEmbedder units.
``python reference.py modules OUT``   writes the Linear module names/shapes of its DiTs (tests/data table).
"""
from __future__ import annotations

import json
import types
import os
import sys
from pathlib import Path
from unittest import mock

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from cases import DISTILL_FAMILIES, DISTILL_STEPS, DIT_CASES, PROMPT_TEXT, RANK, TIMESTEP_ID, VAE_CASES  # noqa: E402

import diffsynth  # noqa: E402

if not Path(diffsynth.__file__).parts[-3:-1] == ("site-packages", "diffsynth"):
    sys.exit(f"reference.py must import DiffSynth-Studio from the parity venv, not {diffsynth.__file__}")

from diffsynth.diffusion.loss import DirectDistillLoss, FlowMatchSFTLoss  # noqa: E402
from diffsynth.diffusion.training_module import DiffusionTrainingModule  # noqa: E402
from diffsynth.utils.lora.general import GeneralLoRALoader  # noqa: E402


def build(name: str):
    """(pipeline with only its DiT set, DiT) for a case, weights from DIR via DiffSynth's converters."""
    case = DIT_CASES[name]
    family = case["family"]
    if family == "qwen_image":
        from diffsynth.models.qwen_image_dit import QwenImageDiT
        from diffsynth.pipelines.qwen_image import QwenImagePipeline
        pipe, dit = QwenImagePipeline(device="cpu", torch_dtype=torch.float32), QwenImageDiT(num_layers=1)
        convert = lambda sd: sd  # noqa: E731  (its DiT has diffusers' names; no converter registered)
    elif family == "flux":
        from diffsynth.models.flux_dit import FluxDiT
        from diffsynth.pipelines.flux_image import FluxImagePipeline
        from diffsynth.utils.state_dict_converters.flux_dit import FluxDiTStateDictConverterFromDiffusers as convert
        pipe = FluxImagePipeline(device="cpu", torch_dtype=torch.float32)
        with torch.device("meta"):  # FluxDiT hard-codes 38 single blocks: build on meta, keep one, then load
            dit = FluxDiT(num_blocks=1)
        dit.single_blocks = dit.single_blocks[:1]
    elif family == "flux2":
        from diffsynth.models.flux2_dit import Flux2DiT
        from diffsynth.pipelines.flux2_image import Flux2ImagePipeline
        pipe, dit = Flux2ImagePipeline(device="cpu", torch_dtype=torch.float32), Flux2DiT(**case["reference"])
        convert = lambda sd: sd  # noqa: E731  (its Flux2DiT has diffusers' names; no converter registered)
    elif family == "z_image":
        from diffsynth.models import z_image_dit
        from diffsynth.models.z_image_dit import ZImageDiT
        # its timestep embedder casts the sinusoid features to bf16 (its DiT always runs in bf16) and so cannot run
        # in float32; cast to the weights' dtype instead: in a bf16 run that is the same bf16, and diffusers' (ours)
        # does exactly this
        z_image_dit.TimestepEmbedder.forward = lambda self, t: self.mlp(
            self.timestep_embedding(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype))
        from diffsynth.pipelines.z_image import ZImagePipeline
        pipe, dit = ZImagePipeline(device="cpu", torch_dtype=torch.float32), ZImageDiT(**case["reference"])
        convert = lambda sd: sd  # noqa: E731  (its ZImageDiT has diffusers' names)
    else:
        from diffsynth.models.wan_video_dit import WanModel
        from diffsynth.pipelines.wan_video import WanVideoPipeline
        from diffsynth.utils.state_dict_converters.wan_video_dit import WanVideoDiTFromDiffusers as convert
        pipe, dit = WanVideoPipeline(device="cpu", torch_dtype=torch.float32), WanModel(**case["reference"])
    return case, pipe, dit, convert


def load_weights(dit, convert, folder: Path, case: dict | None = None) -> dict:
    if case is not None and case.get("original_names"):  # Wan variants: the released files' names, no converter
        state = load_file(str(folder / "dit_original.safetensors"))
    else:
        state = convert(load_file(str(folder / "dit.safetensors")))
    missing, unexpected = dit.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise SystemExit(f"DiffSynth's converter left missing={missing[:5]} unexpected={unexpected[:5]}")
    return state


def inputs_for(case: dict, tensors: dict) -> dict:
    """What DiffSynth's units hand to the loss in training (cfg 1, no tiling)."""
    family = case["family"]
    latents = tensors["latents"]
    if family == "qwen_image":
        h, w = latents.shape[2] * 8, latents.shape[3] * 8
        return {"input_latents": latents, "prompt_emb": tensors["prompt_emb"], "height": h, "width": w,
                "prompt_emb_mask": torch.ones(tensors["prompt_emb"].shape[:2], dtype=torch.long)}
    if family == "flux":
        return {"input_latents": latents, "prompt_emb": tensors["prompt_emb"], "pooled_prompt_emb": tensors["pooled"],
                "text_ids": torch.zeros(1, tensors["prompt_emb"].shape[1], 3), "guidance": torch.Tensor([1.0])}
    if family == "flux2":  # its units: latent tokens "B (H W) C", position ids (t, h, w, l), guidance 1 (train.py)
        from diffsynth.pipelines.flux2_image import Flux2Unit_ImageIDs, Flux2Unit_PromptEmbedder
        prompt = tensors["prompt_emb"]
        return {"input_latents": tokens(latents), "prompt_embeds": prompt, "embedded_guidance": 1.0,
                "text_ids": Flux2Unit_PromptEmbedder().prepare_text_ids(prompt),
                "image_ids": Flux2Unit_ImageIDs().prepare_latent_ids(latents.shape[2], latents.shape[3])}
    if family == "z_image":  # its prompt unit's output: a list of (L, D) (Omni: a list of lists)
        emb = tensors["prompt_emb"][0]
        out = {"input_latents": latents, "prompt_embeds": [[emb]] if case.get("omni") else [emb]}
        if "control_context" in tensors:  # its ZImageUnit_PAIControlNet output: B C 1 H W, scale 1 (training)
            out.update(control_context=tensors["control_context"].unsqueeze(2), control_scale=1.0)
        return out
    out = {"input_latents": latents, "context": tensors["prompt_emb"]}
    for key in ("y", "clip_feature", "reference_latents", "motion_bucket_id"):  # what its units hand on
        if key in tensors:
            out[key] = tensors[key]
    if "camera" in case:
        out["control_camera_latents_input"] = camera_unit(case, latents)
    if "first_frame_latents" in tensors:  # what its ImageEmbedderFused unit outputs (TI2V with an input image)
        out.update(first_frame_latents=tensors["first_frame_latents"], fuse_vae_embedding_in_latents=True)
    return out


def camera_unit(case: dict, latents: torch.Tensor) -> torch.Tensor:
    """Its WanVideoUnit_FunCameraControl on the case's direction and speed (the VAE it also calls for the input
    image is a stand-in: only the camera tensor is read)."""
    from PIL import Image
    from diffsynth.models.wan_video_camera_controller import SimpleAdapter
    from diffsynth.pipelines.wan_video import WanVideoUnit_FunCameraControl

    class StubVAE:
        def encode(self, videos, device=None, **kwargs):
            return torch.zeros(1, 16, 1, latents.shape[3], latents.shape[4])

    class StubPipe:
        device, torch_dtype, vae = "cpu", torch.float32, StubVAE()
        dit = types.SimpleNamespace(control_adapter=SimpleAdapter(24, 8, (2, 2), (2, 2)), in_dim=32)

        def load_models_to_device(self, names):
            pass

        def preprocess_video(self, frames):
            return frames

    frames = (latents.shape[2] - 1) * 4 + 1
    h, w = latents.shape[3] * 8, latents.shape[4] * 8
    direction, speed = case["camera"]
    out = WanVideoUnit_FunCameraControl().process(StubPipe(), h, w, frames, direction, speed, None, latents,
                                                  Image.new("RGB", (w, h)), False, None, None)
    return out["control_camera_latents_input"]


def tokens(latents: torch.Tensor) -> torch.Tensor:
    return latents.flatten(2).transpose(1, 2)  # B C H W -> B (H W) C, as its FLUX.2 units hold latents


def loss_and_pred(pipe, case: dict, tensors: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """DiffSynth's FlowMatchSFTLoss with its random draws pinned to our grid point and noise."""
    if case["family"] != "flux2":
        return _loss_and_pred(pipe, case, tensors, tensors["noise"])
    # FLUX.2: its noise has its latents' token layout; its prediction goes back to ours (B, C, H, W)
    b, c, h, w = tensors["latents"].shape
    pred, loss = _loss_and_pred(pipe, case, tensors, tokens(tensors["noise"]))
    return pred.transpose(1, 2).reshape(b, c, h, w), loss


def _loss_and_pred(pipe, case: dict, tensors: dict, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    captured = {}
    model_fn = pipe.model_fn

    def spy(**kwargs):
        captured["pred"] = out = model_fn(**kwargs)
        return out
    pipe.model_fn = spy
    with torch.no_grad(), mock.patch("torch.randint", lambda *a, **k: torch.tensor([TIMESTEP_ID])), \
            mock.patch("torch.randn_like", lambda x: noise.clone()):
        loss = FlowMatchSFTLoss(pipe, **inputs_for(case, tensors))
    pipe.model_fn = model_fn
    return captured["pred"], loss.reshape(1).float()


def distill_loss(pipe, case: dict, tensors: dict) -> torch.Tensor:
    """DiffSynth's DirectDistillLoss: DISTILL_STEPS steps from the case's noise (with the clean first frame its
    ImageEmbedderFused unit puts in, TI2V), against the case's latents. It leaves its few-step grid set."""
    inputs = {**inputs_for(case, tensors), "latents": tensors["noise"].clone(), "num_inference_steps": DISTILL_STEPS}
    if "first_frame_latents" in tensors:
        inputs["latents"][:, :, 0:1] = tensors["first_frame_latents"]
    with torch.no_grad():
        loss = DirectDistillLoss(pipe, **inputs).reshape(1).float()
    pipe.scheduler.set_timesteps(1000, training=True)
    return loss


def consumed(pipe, module, state: dict, loader_cls) -> tuple[int, int]:
    """(LoRA modules of the file that ``loader_cls`` fuses into ``module``, LoRA modules in the file)."""
    loader = loader_cls(torch_dtype=pipe.torch_dtype, device=pipe.device)
    converted = loader.convert_state_dict(dict(state))
    names = {k[: -len(".lora_B.weight")] for k in converted if k.endswith(".lora_B.weight")}
    own = {n for n, _ in module.named_modules()}
    in_file = {k.split(".lora_B")[0] for k in state if ".lora_B" in k}
    return len(names & own), len(in_file)


def inject_its_lora(module, targets: str) -> None:
    """LoRA on ``targets`` as its trainer injects it (``add_lora_to_model``), with random weights (seed 7)."""
    DiffusionTrainingModule().add_lora_to_model(module, target_modules=targets.split(","), lora_rank=RANK)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for k, p in module.named_parameters():
            if ".lora_" in k:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def save_its_checkpoint(module, path: Path) -> torch.Tensor:
    """The trainable tensors, as its ModelLogger saves them (prefix removed); returns the LoRA module count."""
    ckpt = {k: p.detach().contiguous() for k, p in module.named_parameters() if p.requires_grad}
    save_file(ckpt, str(path))
    return torch.tensor([float(len(ckpt) // 2)])


def cmd_dit(name: str, folder: Path) -> None:
    case, pipe, dit, convert = build(name)
    base = load_weights(dit, convert, folder, case)
    dit.eval()
    pipe.dit = dit
    pipe.scheduler.set_timesteps(1000, training=True)
    tensors = load_file(str(folder / "inputs.safetensors"))
    results = {}
    if case.get("official_image_split"):
        # FLF2V: its CrossAttention hard-codes 257 image tokens (so the second image's 257 go to the text keys);
        # the official Wan code and diffusers take all but the last 512 context tokens as image tokens
        from diffsynth.models import wan_video_dit
        shipped = wan_video_dit.CrossAttention.forward

        def official(self, x, y):
            if not self.has_image_input:
                return shipped(self, x, y)
            split = y.shape[1] - 512
            q = self.norm_q(self.q(x))
            out = self.attn(q, self.norm_k(self.k(y[:, split:])), self.v(y[:, split:]))
            img = y[:, :split]
            out = out + wan_video_dit.flash_attention(q, self.norm_k_img(self.k_img(img)), self.v_img(img),
                                                      num_heads=self.num_heads)
            return self.o(out)
        wan_video_dit.CrossAttention.forward = official
    if "motion_bucket_id" in case:
        from diffsynth.models.wan_video_motion_controller import WanMotionControllerModel
        pipe.motion_controller = WanMotionControllerModel(dim=case["reference"]["dim"])
        _strict_load(pipe.motion_controller, load_file(str(folder / "motion_controller.safetensors")))
        with torch.no_grad():
            results["motion_embedding"] = pipe.motion_controller(tensors["motion_bucket_id"])
    if "camera" in case:
        results["camera_embedding"] = camera_unit(case, tensors["latents"])
    if "controlnet" in case:  # its ZImageControlNet (model_configs.py: no state-dict converter) on the same weights
        from diffsynth.models.z_image_controlnet import ZImageControlNet
        pipe.controlnet = ZImageControlNet(**case["controlnet_reference"]).eval()
        missing, unexpected = pipe.controlnet.load_state_dict(load_file(str(folder / "controlnet.safetensors")),
                                                              strict=False)
        if missing or unexpected:
            raise SystemExit(f"our ControlNet weights did not fit its ZImageControlNet: missing={missing[:5]} "
                             f"unexpected={unexpected[:5]}")
    suffix = ""
    if os.environ.get("PARITY_TANH_GELU"):
        # the one known difference: DiffSynth's Qwen-Image MLP uses x*sigmoid(1.702x) where diffusers (and the
        # official model) use tanh-GELU. With tanh-GELU put in, what remains is the rest of the two implementations.
        from diffsynth.models import qwen_image_dit
        qwen_image_dit.ApproximateGELU.forward = lambda self, x: torch.nn.functional.gelu(self.proj(x),
                                                                                         approximate="tanh")
        suffix = "_tanh_gelu"
    results["pred"], results["loss"] = loss_and_pred(pipe, case, tensors)
    if "controlnet" in case:  # its model_fn without the control context: the plain DiT path
        controlnet, pipe.controlnet = pipe.controlnet, None
        plain = {k: v for k, v in tensors.items() if k != "control_context"}
        results["control_change"] = results["pred"] - loss_and_pred(pipe, case, plain)[0]
        pipe.controlnet = controlnet
    if case["family"] in DISTILL_FAMILIES:
        results["distill_loss"] = distill_loss(pipe, case, tensors)
    for label in ("our_ckpt", "our_export"):
        state = load_file(str(folder / f"{label}.safetensors"))
        if label == "our_ckpt":  # its trainer's own names (`.default.`): the general loader reads them
            found, total = consumed(pipe, dit, state, GeneralLoRALoader)
            GeneralLoRALoader(torch_dtype=pipe.torch_dtype, device=pipe.device).fuse_lora_to_base_model(dit, state)
        else:  # the export: the pipeline's own loader, as `pipe.load_lora(pipe.dit, file)` at inference
            found, total = consumed(pipe, dit, state, pipe.lora_loader)
            pipe.load_lora(pipe.dit, state_dict=dict(state), verbose=0)  # fused: W += B @ A
        results[f"{label}_found"] = torch.tensor([float(found), float(total)])
        results[f"pred_{label}"], results[f"loss_{label}"] = loss_and_pred(pipe, case, tensors)
        load_weights(dit, lambda sd: convert(sd), folder, case)  # back to the base weights
    # a checkpoint as DiffSynth's trainer writes it: LoRA injected by its own code, random B, trainable tensors
    inject_its_lora(dit, case["targets"])
    results["pred_ds_lora"], results["loss_ds_lora"] = loss_and_pred(pipe, case, tensors)
    results["ds_modules"] = save_its_checkpoint(dit, folder / f"ds_ckpt{suffix}.safetensors")
    save_file({k: v.contiguous() for k, v in results.items()}, str(folder / f"reference{suffix}.safetensors"))
    del base


def cmd_vae(name: str, folder: Path) -> None:
    """Its VAE class, loaded through its own converter from the checkpoint layout it reads, encoding as its
    pipeline's input unit does (normalisation inside its VAE classes)."""
    case = VAE_CASES[name]
    state = load_file(str(folder / "vae.safetensors"))
    pixels = load_file(str(folder / "pixels.safetensors"))["pixels"]
    with torch.no_grad():
        if name == "qwen_image":
            from diffsynth.models.qwen_image_vae import QwenImageVAE
            vae = QwenImageVAE()
            _strict_load(vae, state)  # diffusers names, no converter registered
            latents = vae.encode(pixels)
        elif name == "flux":
            from diffsynth.models.flux_vae import FluxVAEEncoder
            from diffsynth.utils.state_dict_converters.flux_vae import FluxVAEEncoderStateDictConverter
            vae = FluxVAEEncoder()
            _strict_load(vae, FluxVAEEncoderStateDictConverter(state))
            latents = vae(pixels)
        elif name == "flux2":
            from diffsynth.models.flux2_vae import Flux2VAE
            vae = Flux2VAE()  # its defaults are FLUX.2's VAE; diffusers names, batch-norm statistics in `bn`
            _strict_load(vae, state)
            latents = vae.encode(pixels)  # patchified and normalised inside its class
        elif name == "z_image":  # model_configs.py: flux_vae_encoder, diffusers converter, no conv attention
            from diffsynth.models.flux_vae import FluxVAEEncoder
            from diffsynth.utils.state_dict_converters.flux_vae import FluxVAEEncoderStateDictConverterDiffusers
            vae = FluxVAEEncoder(use_conv_attention=False)
            _strict_load(vae, FluxVAEEncoderStateDictConverterDiffusers(state))
            latents = vae(pixels)
        else:
            from diffsynth.models.wan_video_vae import WanVideoVAE, WanVideoVAE38
            from diffsynth.utils.state_dict_converters.wan_video_vae import WanVideoVAEStateDictConverter
            vae = WanVideoVAE38() if case["config"]["z_dim"] == 48 else WanVideoVAE()
            converted = WanVideoVAEStateDictConverter(state)
            own = vae.state_dict()
            # the Wan VAE file holds encoder and decoder; the comparison needs the encoder path (and conv1)
            _strict_load(vae, {k: v for k, v in converted.items() if k in own}, partial=True)
            latents = vae.encode(pixels, device="cpu")
    save_file({"latents": latents.float().contiguous()}, str(folder / "reference_vae.safetensors"))


def _strict_load(model, state: dict, partial: bool = False) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if partial:
        missing = [k for k in missing if k.startswith(("model.encoder.", "model.conv1."))]
    else:
        missing = [k for k in missing if not k.startswith("decoder.") and "post_quant" not in k]
    if missing or unexpected:
        raise SystemExit(f"VAE weights did not fit DiffSynth's class: missing={missing[:5]} unexpected={unexpected[:5]}")


def cmd_prompt_z_image(folder: Path) -> None:
    """Its Z-Image prompt unit (encode_prompt: chat template, 512-token padding, hidden_states[-2], mask) with the
    same tokenizer folder and text-encoder weights ours.py wrote, in its ZImageTextEncoder class."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model
    from cases import Z_IMAGE_PROMPTS, Z_IMAGE_TEXT_ENCODER
    from diffsynth.models.z_image_text_encoder import ZImageTextEncoder
    from diffsynth.pipelines.z_image import ZImagePipeline, ZImageUnit_PromptEmbedder
    from diffsynth.utils.state_dict_converters.z_image_text_encoder import ZImageTextEncoderStateDictConverter
    pipe = ZImagePipeline(device="cpu", torch_dtype=torch.float32)
    pipe.tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    pad = pipe.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    with torch.device("meta"):
        encoder = ZImageTextEncoder()  # its class; the model inside at the case's (reduced) config
    encoder.model = Qwen3Model(Qwen3Config(**Z_IMAGE_TEXT_ENCODER, pad_token_id=pad, bos_token_id=pad,
                                           eos_token_id=pad))
    _strict_load(encoder, ZImageTextEncoderStateDictConverter(load_file(str(folder / "text_encoder.safetensors"))))
    pipe.text_encoder = encoder.eval()
    with torch.no_grad():
        embs = ZImageUnit_PromptEmbedder().encode_prompt(pipe, list(Z_IMAGE_PROMPTS), device="cpu")
    save_file({f"emb{i}": e.float().contiguous() for i, e in enumerate(embs)},
              str(folder / "reference_prompt.safetensors"))


def cmd_prompt(name: str, folder: Path) -> None:
    if name == "z_image":
        return cmd_prompt_z_image(folder)
    """What its Qwen-Image prompt unit hands the tokenizer (templated text, max_length): captured with a stand-in
    tokenizer, since no real tokenizer can be downloaded here."""
    from diffsynth.pipelines.qwen_image import QwenImagePipeline, QwenImageUnit_PromptEmbedder
    seen = {}

    class Tokenizer:
        def __call__(self, text, max_length=None, **kwargs):
            seen.update(text=text[0], max_length=max_length)
            raise StopIteration  # nothing after the tokenizer can run without the real one

    pipe = QwenImagePipeline(device="cpu", torch_dtype=torch.float32)
    pipe.tokenizer = Tokenizer()
    try:
        QwenImageUnit_PromptEmbedder().encode_prompt(pipe, ["a red cube"])
    except StopIteration:
        pass
    (folder / "reference_prompt.json").write_text(json.dumps(seen))


def cmd_prompt_flux2(name: str, folder: Path) -> None:
    """Its FLUX.2 prompt units on the tiny twin ours.py wrote (tokenizer loaded as its from_pretrained does, text
    encoder weights through its own state-dict converter), for the same text."""
    from transformers import AutoProcessor, AutoTokenizer
    from diffsynth.pipelines.flux2_image import Flux2Unit_PromptEmbedder, Flux2Unit_Qwen3PromptEmbedder
    twin = folder / name
    config = json.loads((twin / "text_encoder" / "config.json").read_text())
    state = {}
    for f in sorted((twin / "text_encoder").glob("*.safetensors")):
        state.update(load_file(str(f)))
    if config["model_type"] == "qwen3":
        from transformers import Qwen3Config, Qwen3Model
        from diffsynth.models.z_image_text_encoder import ZImageTextEncoder
        from diffsynth.utils.state_dict_converters.z_image_text_encoder import ZImageTextEncoderStateDictConverter
        encoder = ZImageTextEncoder.__new__(ZImageTextEncoder)  # its class at the twin's size (it hard-codes 4B/8B)
        torch.nn.Module.__init__(encoder)
        encoder.model = Qwen3Model(Qwen3Config(**config))
        _strict_load(encoder, ZImageTextEncoderStateDictConverter(state), partial=False)
        tokenizer, unit = AutoTokenizer.from_pretrained(str(twin / "tokenizer")), Flux2Unit_Qwen3PromptEmbedder()
    else:
        from transformers import Mistral3Config, Mistral3ForConditionalGeneration
        from diffsynth.utils.state_dict_converters.flux2_text_encoder import Flux2TextEncoderStateDictConverter
        encoder = Mistral3ForConditionalGeneration(Mistral3Config(**config))  # its Flux2TextEncoder's base class
        _strict_load(encoder, Flux2TextEncoderStateDictConverter(state), partial=False)
        tokenizer, unit = AutoProcessor.from_pretrained(str(twin / "tokenizer")), Flux2Unit_PromptEmbedder()
    with torch.no_grad():
        emb, ids = unit.encode_prompt(encoder.eval(), tokenizer, PROMPT_TEXT, dtype=torch.float32, device="cpu")
    save_file({"prompt_emb": emb.float().contiguous(), "text_ids": ids[0].float().contiguous()},
              str(folder / f"reference_prompt_{name}.safetensors"))


def cmd_modules(out: str) -> None:
    """Linear layers of DiffSynth's own DiTs (two blocks per list, real width): the table tests/ check against."""
    from diffsynth.models.flux_dit import FluxDiT
    from diffsynth.models.qwen_image_dit import QwenImageDiT
    from diffsynth.models.wan_video_dit import WanModel
    wan = dict(patch_size=[1, 2, 2], freq_dim=256, text_dim=4096, eps=1e-6, num_layers=2)
    models = {
        "qwen_image": lambda: QwenImageDiT(num_layers=2),
        "flux": lambda: FluxDiT(num_blocks=2),
        "wan2.1-t2v-1.3b": lambda: WanModel(dim=1536, in_dim=16, ffn_dim=8960, out_dim=16, num_heads=12,
                                            has_image_input=False, **wan),
        "wan2.1-i2v-14b": lambda: WanModel(dim=5120, in_dim=36, ffn_dim=13824, out_dim=16, num_heads=40,
                                           has_image_input=True, **wan),
        "wan2.2-ti2v-5b": lambda: WanModel(dim=3072, in_dim=48, ffn_dim=14336, out_dim=48, num_heads=24,
                                           has_image_input=False, seperated_timestep=True,
                                           require_clip_embedding=False, require_vae_embedding=False,
                                           fuse_vae_embedding_in_latents=True, **wan),
    }
    import re
    table = {"source": f"DiffSynth-Studio {diffsynth_version()} (diffsynth/models/qwen_image_dit.py QwenImageDiT, "
                       "flux_dit.py FluxDiT, wan_video_dit.py WanModel), built on the meta device with two blocks "
                       "per block list by tests/parity/reference.py modules", "models": {}}
    for name, make in models.items():
        with torch.device("meta"):
            model = make()
        table["models"][name] = {
            n: [m.out_features, m.in_features] for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not re.search(r"(^|\.)(single_)?blocks\.([2-9]|\d\d+)\.", n)}
    Path(out).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


def cmd_quant(method: str, folder: Path) -> None:
    """DiffSynth's own QuantizeConfig(method).quantize_model on the weights ours.py wrote."""
    from diffsynth.core.quant import QuantizeConfig
    tensors = load_file(str(folder / "quant_weights.safetensors"))
    x = tensors.pop("x")
    mlp = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(512, 256))
    mlp.load_state_dict(tensors)
    mlp = mlp.to(torch.bfloat16).requires_grad_(False)
    QuantizeConfig(method=method).quantize_model(mlp)
    x.requires_grad_(True)
    y = mlp(x)
    (grad,) = torch.autograd.grad(y.float().sum(), x)
    save_file({"out": y.detach().float().contiguous(), "grad": grad.float().contiguous()},
              str(folder / f"reference_quant_{method}.safetensors"))


class _Recorder(torch.nn.Module):
    """A stand-in text encoder / VAE keeping what DiffSynth's units hand it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, **kwargs):
        self.calls.append(kwargs)
        return [torch.zeros(1, kwargs["input_ids"].shape[1], 4)]

    def encode(self, pixels, **kwargs):
        self.calls.append({"pixels": pixels})
        return torch.zeros(1, 16, pixels.shape[-2] // 8, pixels.shape[-1] // 8)


def cmd_edit(_name: str, folder: Path) -> None:
    """DiffSynth's Qwen-Image-Edit units on the images and processor folders ours.py wrote: EditImageEmbedder
    (auto-resize to 1024² area, preprocess_image in the pipeline's dtype) and PromptEmbedder (its Qwen2VLProcessor,
    loaded by Qwen2VLProcessor.from_pretrained as its from_pretrained does), with recording stand-ins for the VAE
    and the text encoder; and its dataset's ImageCropAndResize."""
    import numpy as np
    from PIL import Image
    from transformers import Qwen2VLProcessor
    from cases import EDIT_DATA_FIXED, EDIT_DATA_MAX_PIXELS, EDIT_IMAGE_SIZES, EDIT_PROMPT
    from diffsynth.core.data.operators import ImageCropAndResize
    from diffsynth.pipelines.qwen_image import (QwenImagePipeline, QwenImageUnit_EditImageEmbedder,
                                                QwenImageUnit_PromptEmbedder)
    images = [Image.open(folder / f"edit{i}.png").convert("RGB") for i in range(len(EDIT_IMAGE_SIZES))]
    result, classes = {}, {}
    for name in ("twin", "real"):
        processor = Qwen2VLProcessor.from_pretrained(str(folder / name))
        classes[name] = type(processor.image_processor).__name__
        for dtype in (torch.float32, torch.bfloat16):
            pipe = QwenImagePipeline(device="cpu", torch_dtype=dtype)
            pipe.processor, pipe.text_encoder, pipe.vae = processor, _Recorder(), _Recorder()
            key = str(dtype).split(".")[1]
            for label, edit in {"single0": images[0], "single3": images[3], "multi": images}.items():
                out = QwenImageUnit_EditImageEmbedder().process(pipe, edit, tiled=False, tile_size=None,
                                                                tile_stride=None, edit_image_auto_resize=True)
                for i, call in enumerate(pipe.vae.calls):
                    result[f"vae_{label}_{i}_{key}"] = call["pixels"]
                pipe.vae.calls.clear()
                QwenImageUnit_PromptEmbedder().process(pipe, EDIT_PROMPT, edit_image=out["edit_image"])
                (call,) = pipe.text_encoder.calls
                pipe.text_encoder.calls.clear()
                if dtype == torch.float32:
                    for k in ("input_ids", "pixel_values", "image_grid_thw"):
                        result[f"{name}_{label}_{k}"] = call[k]
    for i, image in enumerate(images):
        dynamic = ImageCropAndResize(max_pixels=EDIT_DATA_MAX_PIXELS, height_division_factor=16,
                                     width_division_factor=16)(image)
        fixed = ImageCropAndResize(*EDIT_DATA_FIXED, max_pixels=EDIT_DATA_MAX_PIXELS)(image)
        result[f"data_dynamic_{i}"] = torch.from_numpy(np.array(dynamic))
        result[f"data_fixed_{i}"] = torch.from_numpy(np.array(fixed))
    save_file({k: v.contiguous() for k, v in result.items()}, str(folder / "reference_edit.safetensors"))
    (folder / "reference_edit.json").write_text(json.dumps({"image_processor": classes}))
def cmd_trajectory(name: str, folder: Path) -> None:
    """Its TrajectoryImitationLoss as its Z-Image train.py runs it (teacher: a frozen deepcopy of the pipeline) on
    the weights ours.py wrote; the parts captured from its own methods, the gradient in the student DiT.

    The loss imports the ``lpips`` package (not in this venv, and it would download AlexNet): a stand-in module
    whose ``LPIPS(net="alex")`` is DiffSynth's own ``LPIPSModel("alex")`` with the case's weights, the same network
    (v0.1 heads, eval mode) in the layout of its ImageMetrics weights."""
    import copy
    from cases import TRAJECTORY
    from diffsynth.diffusion.loss import TrajectoryImitationLoss
    from diffsynth.models import z_image_dit
    from diffsynth.models.flux_vae import FluxVAEDecoder
    from diffsynth.models.lpips import LPIPSModel
    from diffsynth.models.z_image_dit import ZImageDiT
    from diffsynth.pipelines.z_image import ZImagePipeline
    from diffsynth.utils.state_dict_converters.flux_vae import FluxVAEDecoderStateDictConverterDiffusers
    z_image_dit.TimestepEmbedder.forward = lambda self, t: self.mlp(  # as build(): float32 instead of its bf16 cast
        self.timestep_embedding(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype))
    lpips = LPIPSModel("alex")
    lpips.load_state_dict(load_file(str(folder / "lpips.safetensors")))  # strict: our layout is its layout
    lpips.eval()
    sys.modules["lpips"] = types.SimpleNamespace(LPIPS=lambda net: lpips)
    pipe = ZImagePipeline(device="cpu", torch_dtype=torch.float32)
    pipe.dit = ZImageDiT(**TRAJECTORY["dit"])
    pipe.dit.load_state_dict(load_file(str(folder / "dit.safetensors")))
    pipe.vae_decoder = FluxVAEDecoder(use_conv_attention=False)
    pipe.vae_decoder.load_state_dict(FluxVAEDecoderStateDictConverterDiffusers(load_file(str(folder / "vae.safetensors"))))
    pipe.dit.eval().requires_grad_(True)
    pipe.vae_decoder.eval().requires_grad_(False)
    teacher = copy.deepcopy(pipe)  # its train.py: copy.deepcopy(self.pipe), then requires_grad_(False)
    teacher.requires_grad_(False)
    tensors = load_file(str(folder / "inputs.safetensors"))
    shared = {"latents": tensors["noise"].clone(), "teacher": teacher, "cfg_scale": 2,
              "use_gradient_checkpointing": False, "use_gradient_checkpointing_offload": False}
    posi, nega = {"prompt_embeds": [tensors["prompt_emb"][0]]}, {"prompt_embeds": [tensors["negative_emb"][0]]}
    loss_fn, captured = TrajectoryImitationLoss(), {}
    for method in ("fetch_trajectory", "align_trajectory", "compute_regularization"):
        def spy(*args, _method=getattr(loss_fn, method), _name=method, **kwargs):
            captured[_name] = out = _method(*args, **kwargs)
            return out
        setattr(loss_fn, method, spy)
    total = loss_fn(pipe, shared, posi, nega)
    total.sum().backward()
    grad = torch.cat([p.grad.flatten() for _, p in sorted(pipe.dit.named_parameters())])
    timesteps, path = captured["fetch_trajectory"]
    save_file({"trajectory": torch.stack(path).contiguous(), "timesteps": timesteps.float().contiguous(),
               "loss": captured["align_trajectory"].detach().reshape(1).float(),
               "lpips": captured["compute_regularization"].detach().reshape(1).float(),
               "total": total.detach().reshape(1).float(), "grad": grad,
               "lpips_images": lpips(tensors["images"][:1], tensors["images"][1:]).detach()},
              str(folder / "reference_trajectory.safetensors"))


def diffsynth_version() -> str:
    from importlib.metadata import version
    return version("diffsynth")


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "modules":
        cmd_modules(sys.argv[2])
    else:
        {"dit": cmd_dit, "vae": cmd_vae, "prompt": cmd_prompt, "prompt_flux2": cmd_prompt_flux2,
         "quant": cmd_quant, "edit": cmd_edit, "trajectory": cmd_trajectory}[command](sys.argv[2], Path(sys.argv[3]))
