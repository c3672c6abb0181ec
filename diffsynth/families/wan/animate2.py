"""Wan2.2-Animate-2-14B (+ Distilled) (DiffSynth's examples/wanvideo/model_training/{lora,full}/Wan2.2-Animate-2-14B*.sh):
DiffSynth's ``WanAnimate2Transformer`` DiT (``animate2_model.py``), a registered variant of ``wan`` selected by
``animate2_reference_video`` in ``model.extra_inputs`` (the recipes: ``animate2_prompt_ref,animate2_reference_image,
animate2_reference_video``).

The conditioning, as DiffSynth's units build it in training (``WanVideoUnit_Animate2*``, ``InputVideoEmbedder``):

* ``animate2_reference_image`` (an image column; the first element when a list), resized to the video's size: its
  VAE latents are prepended to the video's as one latent frame, which is trained like the others; ``y`` is
  [all-ones mask + those latents] on that frame, then [zero mask + VAE(zeros)] on the video's frames; its CLIP
  features are ``clip_feature``;
* ``animate2_reference_video`` (a video column, cut to the video's frames, resized to its size): VAE latents
  ``reference_latents`` (with an all-ones mask: the reference stream's ``y``), and the CLIP features of its first
  frame (``clip_reference``);
* ``animate2_prompt_ref`` (a text column): UMT5 embedding ``prompt_ref_emb``, the reference stream's context.

All are computed by the encoder (cached with the latents; DiffSynth's ``sft:data_process`` does the same, which the
recipes run first). Trainable: LoRA on ``self_attn.q,k,v`` of the DiT (the LoRA recipes), or those layers in full
(``--trainable_models dit.blocks.N.block.self_attn.q,...``, the full recipes); ``--remove_prefix_in_ckpt pipe.dit.``
gives DiffSynth's checkpoint names, which are the modules' own. Save-point samples use the first encoded row's
reference image, reference video and reference prompt; the reference image's latent frame is dropped before decoding.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from ...models.tiny import save_model, write_config
from ...sampling import euler_sample
from ..base import DataRules
from . import animate2_model, refusals
from .animate2_model import MASK_CHANNELS
from .pipeline import SHIFT, Wan, data_rules, frames_to_tensor, inference_sigmas

PROMPT_KEY, IMAGE_KEY, VIDEO_KEY = "animate2_prompt_ref", "animate2_reference_image", "animate2_reference_video"
REPO = "Wan-AI/Wan2.2-Animate-2-14B"
DIT_FILES = ("wan_animate_2/wan_animate_2_bf16.safetensors", "wan_animate_2/wan_animate_2_bf16_distillation.safetensors")
ENCODER_FOLDER = "videomodel/Wan-AI"  # the repository's own UMT5 and CLIP files
UNCONDITIONAL_SKIPPED_BLOCK = 9  # DiffSynth's unconditional (negative-prompt) pass skips this block


def _animate2_rules(rules: DataRules) -> DataRules:
    # a shorter reference video leaves the last frames without a reference (DiffSynth: zero keys): a warning
    return replace(rules, video_keys=tuple(dict.fromkeys((*rules.video_keys, VIDEO_KEY))),
                   frame_matched_keys=(VIDEO_KEY,))


# ------------------------------------------------------------------------------------------------ tiny twin
def write_tiny_animate2(out_dir: Path, seed: int = 0) -> None:
    """``Wan-AI/Wan2.2-Animate-2-14B`` layout: the DiT (and its distilled twin) in wan_animate_2/ with Wan-AI's
    config.json beside them, UMT5 and CLIP in videomodel/Wan-AI/, the Wan2.1 VAE and the tokenizer at the top (the
    recipes take the VAE from Wan-AI/Wan2.1-T2V-14B: the twin holds it under its own id)."""
    from . import tiny

    torch.manual_seed(seed)
    # the real depth (40 blocks), so the full recipes' trainable_models (dit.blocks.0-39.block.self_attn.q,k,v) apply
    # as written and samples skip block 9 as DiffSynth's do
    config = {"in_dim": 36, "dim": 32, "ffn_dim": 64, "freq_dim": 256, "text_dim": 32, "out_dim": 16, "num_heads": 2,
              "num_layers": 40, "image_dim": 32}
    folder = out_dir / "wan_animate_2"
    for i, name in enumerate(DIT_FILES):
        torch.manual_seed(seed + i)
        save_model(animate2_model.WanAnimate2DiT(**config).state_dict(), folder, Path(name).stem)
    write_config(folder, {"_class_name": "WanModel", "model_type": "animate2", "text_len": 512, "eps": 1e-6, **config})
    tiny.write_common(out_dir, "2.1")
    encoders = out_dir / ENCODER_FOLDER
    encoders.mkdir(parents=True, exist_ok=True)
    tiny.write_tiny_clip(encoders)
    (out_dir / "models_t5_umt5-xxl-enc-bf16.safetensors").rename(encoders / "models_t5_umt5-xxl-enc-bf16.safetensors")


# ------------------------------------------------------------------------------------------------ the variant
class WanAnimate2(Wan):
    name = "wan_animate_2"
    aliases = ("wan_video_animate_2", "wan2.2_animate_2")
    summary = ("Wan2.2-Animate-2-14B: DiffSynth's in-context reference DiT (animate2_prompt_ref, "
               "animate2_reference_image, animate2_reference_video)")
    variant_of = "wan"
    selected_by = VIDEO_KEY
    trains_animate2 = True
    extra_inputs = (PROMPT_KEY, IMAGE_KEY, VIDEO_KEY)
    required_extra_inputs = (PROMPT_KEY, IMAGE_KEY, VIDEO_KEY)
    refused_inputs = refusals.ANIMATE2
    data = _animate2_rules(Wan.data)
    sample_image_input = IMAGE_KEY  # a sample entry's image is its reference image
    lora_targets = "self_attn.q,self_attn.k,self_attn.v"
    # the modules carry the released (and DiffSynth's) names: LoRA and full checkpoints need no renaming
    lora_to_original = lora_to_diffsynth = original_state_dict = diffsynth_state_dict = None
    lora_names_without_model = None
    lora_to_diffusers = staticmethod(animate2_model.lora_to_diffusers)
    diffusers_state_dict = staticmethod(animate2_model.state_dict_to_diffusers)
    # DiffSynth's sft:data_process cache holds the units' outputs under these names
    diffsynth_cache_keys = {**Wan.diffsynth_cache_keys, "y": "y", "clip_feature": "clip_feature",
                            "condition_latents": "reference_latents", "context_ref": "prompt_ref_emb",
                            "clip_fea_ref": "clip_reference"}
    component_kinds = ()  # the Animate-2 DiT kinds are Wan's (checkpoints.py)
    tiny_twins = {"wan2.2-animate-2-14b": (REPO, write_tiny_animate2)}

    @classmethod
    def data_rules(cls, config=None) -> DataRules:
        return _animate2_rules(data_rules(config) if config is not None else Wan.data)

    @classmethod
    def map_lora_targets(cls, model: torch.nn.Module, targets: list[str]) -> list[str]:
        return list(targets)  # DiffSynth's names are the modules' own

    def __init__(self, dit, *args, **kwargs):
        super().__init__(dit, *args, **kwargs)
        self._sample_reference: dict | None = None

    # ---------------------------------------------------------------- conditioning (no gradient)
    @staticmethod
    def _reference_image(item: dict) -> Image.Image:
        value = item.get(IMAGE_KEY)
        if isinstance(value, list) and value:  # DiffSynth's Wan train.py: the first element of a list-loaded image
            value = value[0]
        if not isinstance(value, Image.Image):
            raise ValueError(f"a row has no {IMAGE_KEY} image: list {IMAGE_KEY} in dataset.data_file_keys (video,"
                             f"{IMAGE_KEY},{VIDEO_KEY}) and give every row the image")
        return value

    @staticmethod
    def _reference_video(item: dict) -> list[Image.Image]:
        value = item.get(VIDEO_KEY)
        if not isinstance(value, list) or not value or not all(isinstance(f, Image.Image) for f in value):
            raise ValueError(f"a row has no {VIDEO_KEY} frames: list {VIDEO_KEY} in dataset.data_file_keys (video,"
                             f"{IMAGE_KEY},{VIDEO_KEY}) and give every row the clip")
        if len(value) % 4 != 1:
            raise ValueError(f"{VIDEO_KEY} has {len(value)} frames; its latents need 4k+1 (cut it to "
                             "resolution.num_frames or give it as many frames as the video)")
        return value

    @staticmethod
    def _prompt_ref(item: dict) -> str:
        value = item.get(PROMPT_KEY)
        if not isinstance(value, str):
            raise ValueError(f"a row has no {PROMPT_KEY} text ({value!r}): give every row the reference prompt "
                             "(DiffSynth's example: \"视频中的人在做动作，背景静止\")")
        return value

    @torch.no_grad()
    def animate2_inputs(self, image: Image.Image, video: list, prompt_ref: str, num_frames: int, height: int,
                        width: int) -> dict:
        """Everything but the target's latents; ``image_latents`` is the frame prepended to them."""
        size = (width, height)
        image = image if image.size == size else image.resize(size)
        video = [f if f.size == size else f.resize(size) for f in video[:num_frames]]
        image_latents = self.encode_video(frames_to_tensor([image]))
        h, w = image_latents.shape[-2:]
        empty = self.encode_video(torch.zeros(1, 3, num_frames, height, width))
        mask = torch.zeros(1, MASK_CHANNELS, 1 + empty.shape[2], h, w, dtype=self.torch_dtype, device=self.device)
        mask[:, :, 0] = 1
        y = torch.cat([mask, torch.cat([image_latents, empty], dim=2)], dim=1)
        return {"image_latents": image_latents, "y": y, "clip_feature": self.encode_clip(image),
                "reference_latents": self.encode_video(frames_to_tensor(video)),
                "prompt_ref_emb": self.encode_prompt(prompt_ref), "clip_reference": self.encode_clip(video[0])}

    def conditioning_inputs(self, item: dict, video: list, height: int, width: int) -> dict:
        image, reference, prompt_ref = self._reference_image(item), self._reference_video(item), self._prompt_ref(item)
        if self._sample_reference is None:
            self._sample_reference = {"image": image.copy(), "video": [f.copy() for f in reference[:len(video)]],
                                      "prompt": prompt_ref}
        return self.animate2_inputs(image, reference, prompt_ref, len(video), height, width)

    def encode(self, item: dict) -> dict:
        inputs = super().encode(item)
        # DiffSynth trains on [reference image frame, video] latents
        inputs["latents"] = torch.cat([inputs.pop("image_latents"), inputs["latents"]], dim=2)
        return inputs

    # ---------------------------------------------------------------- denoiser
    def predict(self, noisy_latents: torch.Tensor, timestep: torch.Tensor, inputs: dict) -> torch.Tensor:
        x = noisy_latents.to(self.device, self.torch_dtype)
        t = timestep.reshape(-1).to(self.device, torch.float32)
        reference = inputs.get("reference_latents")
        reference_y = None if reference is None else torch.cat(
            [torch.ones_like(reference[:, :MASK_CHANNELS]), reference], dim=1)  # the reference video: all frames given
        return self.dit(x, t, inputs["prompt_emb"], inputs.get("clip_feature"), inputs["y"], reference, reference_y,
                        inputs.get("prompt_ref_emb"), inputs.get("clip_reference"),
                        reference_cache=inputs.get("reference_cache"), skip_blocks=inputs.get("skip_blocks", ()))

    @torch.no_grad()
    def sample_inputs(self, prompt: str, height: int = 0, width: int = 0, num_frames: int = 1,
                      images=None) -> dict:
        """The first encoded row's reference image (or the entry's image), reference video (its first
        ``num_frames`` frames, the last one held if shorter) and reference prompt."""
        self._check_sample_size(height, width, num_frames)
        cond = self._sample_reference or {}
        image = images[0] if isinstance(images, list) else images
        if image is None:
            image = cond.get("image", Image.new("RGB", (width, height), (127, 127, 127)))
        video = cond.get("video") or [Image.new("RGB", (width, height), (127, 127, 127))]
        video = (video + [video[-1]] * num_frames)[:num_frames]
        inputs = self.animate2_inputs(image, video, cond.get("prompt", " "), num_frames, height, width)
        inputs.pop("image_latents")
        return {"prompt_emb": self.encode_prompt(prompt), **inputs}

    @torch.no_grad()
    def render(self, inputs: dict, seed: int, height: int, width: int, num_inference_steps: int,
               num_frames: int = 1, cfg_scale: float = 1.0, negative_inputs: dict | None = None,
               sigma_shift: float = SHIFT) -> list[Image.Image]:
        """Euler sampling with one more latent frame (the reference image's, dropped before decoding); the reference
        stream runs once (its K/V cache, shared with the unconditional pass, which skips block 9 as DiffSynth's)."""
        self._check_sample_size(height, width, num_frames)
        shape = (1, self.z_dim, (num_frames - 1) // self.temporal_factor + 2, height // self.spatial_factor,
                 width // self.spatial_factor)
        latents = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(self.device, self.torch_dtype)
        cache: list = []
        inputs = {**inputs, "reference_cache": cache}
        if negative_inputs is not None:
            negative_inputs = {**negative_inputs, "reference_cache": cache,
                               "skip_blocks": (UNCONDITIONAL_SKIPPED_BLOCK,)}
        latents = euler_sample(self.predict, latents, inference_sigmas(num_inference_steps, sigma_shift), inputs,
                               cfg_scale, negative_inputs)
        return self.decode(latents[:, :, 1:])


# ------------------------------------------------------------------------------------------------ real sizes
_ANIMATE2_14B = {"patch_size": [1, 2, 2], "in_dim": 36, "dim": 5120, "ffn_dim": 13824, "freq_dim": 256,
                 "text_dim": 4096, "out_dim": 16, "num_heads": 40, "num_layers": 40, "cross_attn_norm": True,
                 "use_img_emb": True, "image_dim": 1280, "reference": dict(animate2_model.REFERENCE)}
WanAnimate2.real_models = {
    "wan2.2-animate-2-14b-dit": {"cls": "diffsynth.families.wan.animate2_model.WanAnimate2DiT", "family": "wan",
                                 "component": "dit", "files": f"{REPO}:{DIT_FILES[0]}", "config": _ANIMATE2_14B},
}
WanAnimate2.weight_files = {"wan2.2-animate-2-14b-dit": tuple(f"{REPO}:{f}" for f in DIT_FILES)}
