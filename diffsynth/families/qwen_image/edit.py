"""Qwen-Image-Edit, -2509 and -2511: the Qwen-Image models plus edit images.

What an edit row adds to text-to-image training, as DiffSynth's pipeline units do it:

* EditImageEmbedder: each edit image is resized to ``model.edit_image_area`` (DiffSynth: 1024², ratio kept,
  sides multiples of 32), VAE-encoded, and its latents are appended to the image tokens as extra RoPE
  "frames"; the DiT output is sliced back to the target tokens.
* PromptEmbedder: the prompt goes through the vision-language template with the edit image's vision tokens
  (Qwen2.5-VL vision tower, its pixels made as DiffSynth's torchvision Qwen2-VL processor makes them:
  :mod:`.vision_inputs`); a list of edit images (2509 style) gets "Picture i: " prefixes and each image is
  resized to 384² area for the vision tower. The system prefix (64 tokens with the real tokenizer) is dropped.
* ``zero_cond_t`` (2511): the edit-image tokens are modulated at t=0.

Family choice: DiffSynth trains both with one script, and so do we: this spec is a registered variant of
``qwen_image`` selected by ``edit_image`` in ``model.extra_inputs``; ``model.family: qwen_image_edit`` says so
explicitly.

Save-point samples are conditioned on the edit image of the dataset's first row (``sample_edit_image``);
without one (no such row or column) they are plain text-to-image samples, and a note says so.
"""
from __future__ import annotations

import math

import torch
from PIL import Image

from ...errors import ConfigError
from ...models.components import load_tokenizer
from ...models.model_config import fetch, parse_path_or_model_id
from ..images import SampleReference, as_image_list, check_image_column, first_row_images
from . import tiny
from .pipeline import DEFAULT_TOKENIZER, QwenImage, set_zero_cond_t
from .vision_inputs import VisionInputs

DEFAULT_PROCESSOR = "Qwen/Qwen-Image-Edit:processor/"  # DiffSynth's default, also for Edit-2509/2511
EDIT_AREA = 1024 * 1024          # EditImageEmbedder's target area
MULTI_IMAGE_VL_AREA = 384 * 384  # PromptEmbedder's area for each of several edit images

# DiffSynth's (and diffusers') edit prompt templates. The system part is dropped after encoding: 64 tokens
# with the real Qwen tokenizer; counted with the loaded tokenizer here, since tiny tokenizers differ.
EDIT_SYSTEM = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n"
)
VISION_TOKENS = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
SINGLE_TEMPLATE = EDIT_SYSTEM + VISION_TOKENS + "{}<|im_end|>\n<|im_start|>assistant\n"
MULTI_TEMPLATE = EDIT_SYSTEM + "{}<|im_end|>\n<|im_start|>assistant\n"
PICTURE_PREFIX = "Picture {}: " + VISION_TOKENS


def edit_size(width: int, height: int, area: int) -> tuple[int, int]:
    """DiffSynth's ``calculate_dimensions``: (w, h) of about ``area`` pixels at the ratio w/h, multiples of 32."""
    ratio = width / height
    w = math.sqrt(area * ratio)
    h = w / ratio
    # DiffSynth rounds to 0 for tiny areas; 32 keeps a valid image
    return max(32, round(w / 32) * 32), max(32, round(h / 32) * 32)


def resize_to_area(image: Image.Image, area: int) -> Image.Image:
    size = edit_size(*image.size, area)
    return image if image.size == size else image.resize(size)  # PIL's default filter, as DiffSynth


def expand_image_pads(text: str, grid_thw: torch.Tensor, merge_size: int) -> str:
    """What Qwen2VLProcessor does to the text: each ``<|image_pad|>`` becomes one token per merged patch."""
    parts = text.split(IMAGE_PAD)
    if len(parts) - 1 != len(grid_thw):
        raise ValueError(f"{len(parts) - 1} image placeholders for {len(grid_thw)} images")
    counts = [int(g.prod()) // merge_size ** 2 for g in grid_thw]
    return parts[0] + "".join(IMAGE_PAD * n + rest for n, rest in zip(counts, parts[1:]))


def load_image_processor(folder: str) -> VisionInputs:
    """The Qwen2-VL image processor of ``processor/`` (its ``preprocessor_config.json``), with the arithmetic of
    the torchvision processor DiffSynth's ``Qwen2VLProcessor`` runs (see :mod:`.vision_inputs`)."""
    try:
        return VisionInputs.from_folder(folder)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.processor_path: no usable Qwen2-VL image processor in {folder} ({e}); point it at "
                          "the processor/ folder of Qwen/Qwen-Image-Edit (preprocessor_config.json)") from None


class QwenImageEdit(QwenImage):
    name = "qwen_image_edit"
    aliases = ("qwen_edit",)
    summary = "Qwen-Image-Edit, -2509 (several edit images), -2511 (zero_cond_t): Qwen-Image plus edit images"
    extra_inputs = ("edit_image",)
    required_extra_inputs = ("edit_image",)
    variant_of = "qwen_image"
    selected_by = "edit_image"
    tiny_twins = {"qwen-image-edit": ("Qwen/Qwen-Image-Edit", tiny.write_tiny_edit)}
    reference_image_inputs = ("edit_image",)
    sample_image_input = "edit_image"

    @classmethod
    def auxiliary_entries(cls, config) -> dict[str, str]:
        return {"tokenizer": config.model.tokenizer_path or DEFAULT_TOKENIZER,
                "processor": config.model.processor_path or DEFAULT_PROCESSOR}

    @classmethod
    def load_pipeline(cls, config, dtype: torch.dtype, device: torch.device | str = "cpu",
                      role: str = "full") -> "QwenImageEdit":
        """The Qwen-Image models (edit DiT), tokenizer and the Qwen2-VL image processor of ``model.processor_path``."""
        _check_edit_config(config)
        m = config.model
        modules, sources = cls.load_models(config, dtype, role, required=("dit", "vae", "text_encoder"))
        tokenizer = load_tokenizer(fetch(parse_path_or_model_id(m.tokenizer_path, DEFAULT_TOKENIZER)))
        processor = load_image_processor(fetch(parse_path_or_model_id(m.processor_path, DEFAULT_PROCESSOR)).files()[0])
        pipe = cls(modules["dit"], modules["vae"], modules["text_encoder"], tokenizer, processor, dtype,
                   edit_image_area=m.edit_image_area)
        pipe.component_sources = sources
        if m.zero_cond_t and pipe.dit is not None:  # no DiT in the encoding step
            set_zero_cond_t(pipe.dit, True)
        rules = cls.data_rules(config)
        pipe.sample_reference = SampleReference(
            "edit_image", lambda: first_row_edit_image(config, rules.size_factor, rules.width_factor))
        pipe.role = role
        return pipe.place(device)

    def __init__(self, dit, vae, text_encoder, tokenizer, image_processor, dtype: torch.dtype = torch.float32,
                 edit_image_area: int = EDIT_AREA):
        super().__init__(dit, vae, text_encoder, tokenizer, dtype)
        self.image_processor = image_processor
        self.edit_image_area = edit_image_area
        self._edit_drop_idx = len(tokenizer(EDIT_SYSTEM)["input_ids"])
        self.sample_reference = SampleReference("edit_image")  # load_pipeline points it at the first row

    @property
    def sample_edit_image(self) -> Image.Image | list[Image.Image] | None:
        return self.sample_reference.get()

    @sample_edit_image.setter
    def sample_edit_image(self, value) -> None:
        self.sample_reference = SampleReference("edit_image")
        self.sample_reference.value = value

    # ---------------------------------------------------------------- encoders (no gradient)
    @torch.no_grad()
    def encode_prompt_edit(self, prompt: str, edit_image: Image.Image | list[Image.Image]) -> torch.Tensor:
        """VL prompt embedding: (1, L, D) with the vision tokens of the edit image(s), system prefix dropped.

        One image (not a list) uses the single-image template on the image as given; a list (even of one, as
        DiffSynth) uses "Picture i: " prefixes with each image resized to 384² area."""
        if isinstance(edit_image, list):
            images = [resize_to_area(image, MULTI_IMAGE_VL_AREA) for image in edit_image]
            text = MULTI_TEMPLATE.format("".join(PICTURE_PREFIX.format(i + 1) for i in range(len(images))) + prompt)
        else:
            images = [edit_image]
            text = SINGLE_TEMPLATE.format(prompt)
        vision = self.image_processor(images=images, return_tensors="pt")
        grid = vision["image_grid_thw"]
        tokens = self.tokenizer(expand_image_pads(text, grid, self.image_processor.merge_size), return_tensors="pt")
        out = self.text_encoder(input_ids=tokens["input_ids"].to(self.device),
                                attention_mask=tokens["attention_mask"].to(self.device),
                                pixel_values=vision["pixel_values"].to(self.device, self.torch_dtype),
                                image_grid_thw=grid.to(self.device), output_hidden_states=True)
        return out.hidden_states[-1][:, self._edit_drop_idx:].to(self.torch_dtype)

    def edit_inputs(self, prompt: str, edit_image) -> dict:
        """Prompt embedding and edit latents for an edit image or list of them (EditImageEmbedder →
        PromptEmbedder: the VL encoder sees the resized images)."""
        images = as_image_list(edit_image, "edit_image")
        resized = [resize_to_area(image, self.edit_image_area) for image in images]
        return {"prompt_emb": self.encode_prompt_edit(prompt, resized if isinstance(edit_image, list) else resized[0]),
                "edit_latents": [self.encode_image(image) for image in resized]}

    def encode(self, item: dict) -> dict:
        image, prompt = self.image_and_prompt(item)
        edit = item.get("edit_image")
        if edit is None:
            raise ValueError("a dataset row has no edit_image: every row of an edit dataset needs one (or remove "
                             "edit_image from model.extra_inputs to train text-to-image)")
        return {"latents": self.encode_image(image), **self.edit_inputs(prompt, edit)}

    # ---------------------------------------------------------------- denoiser and samples
    def conditioning_latents(self, inputs: dict) -> list[torch.Tensor]:
        return list(inputs.get("edit_latents") or [])

    def sample_inputs(self, prompt: str, height: int = 0, width: int = 0, num_frames: int = 1, images=None) -> dict:
        """A sample entry's edit image(s) (``images``), else the dataset's first row's."""
        edit = self.sample_edit_image if images is None else images
        return super().sample_inputs(prompt) if edit is None else self.edit_inputs(prompt, edit)


def _check_edit_config(config) -> None:
    check_image_column(config, "edit_image")
    if config.model.edit_image_area < 32 * 32:
        raise ConfigError(f"model.edit_image_area = {config.model.edit_image_area}: must be at least 1024 (32x32)")


def first_row_edit_image(config, height_factor: int, width_factor: int):
    """The edit image(s) of the dataset's first row, sized by the training rules; None if it has none."""
    return first_row_images(config, "edit_image", height_factor, width_factor)
