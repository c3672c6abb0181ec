"""FLUX.1-Kontext-dev (DiffSynth's examples/flux/model_training/{lora,full}/FLUX.1-Kontext-dev.sh): FLUX.1 plus
reference images, a registered variant of ``flux`` selected by ``kontext_images`` in ``model.extra_inputs`` (as
DiffSynth's one FLUX train.py does); ``model.family: flux_kontext`` says so explicitly.

What a Kontext row adds, as DiffSynth's ``FluxImageUnit_Kontext`` and ``model_fn_flux_image`` do it: each reference
image (one, or a list) is loaded and sized by the dataset like ``image`` (``kontext_images`` is a file column),
VAE-encoded like the input image (same shift and scale), packed into 2x2 tokens and appended after the noisy image
tokens; its position ids are the usual (0, row, col) ids with the first coordinate set to 1 (every reference image
gets 1, no offset). The DiT output is sliced back to the image tokens, so the loss is on the target image only.

The DiT has FLUX.1-dev's architecture, so LoRA targets, checkpoint names and exports are FLUX's. Save-point samples
are conditioned on the first row's reference image(s).
"""
from __future__ import annotations

import torch

from ..images import SampleReference, as_image_list, check_image_column, first_row_images
from . import tiny
from .pipeline import Flux

KEY = "kontext_images"


class FluxKontext(Flux):
    name = "flux_kontext"
    aliases = ("flux1_kontext",)
    summary = "FLUX.1-Kontext-dev: FLUX.1 plus reference images (kontext_images)"
    extra_inputs = (KEY,)
    required_extra_inputs = (KEY,)
    variant_of = "flux"
    selected_by = KEY
    tiny_twins = {"flux.1-kontext-dev": ("black-forest-labs/FLUX.1-Kontext-dev", tiny.write_tiny_kontext)}
    reference_image_inputs = (KEY,)
    sample_image_input = KEY

    @classmethod
    def load_pipeline(cls, config, dtype: torch.dtype, device: torch.device | str = "cpu",
                      role: str = "full") -> "FluxKontext":
        check_image_column(config, KEY)
        pipe = super().load_pipeline(config, dtype, device, role)
        rules = cls.data_rules(config)
        pipe.sample_reference = SampleReference(
            KEY, lambda: first_row_images(config, KEY, rules.size_factor, rules.width_factor))
        return pipe

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sample_reference = SampleReference(KEY)  # load_pipeline points it at the dataset's first row

    def encode_references(self, images) -> list[torch.Tensor]:
        return [self.encode_image(image) for image in as_image_list(images, KEY)]

    def encode(self, item: dict) -> dict:
        if item.get(KEY) is None:
            raise ValueError(f"a dataset row has no {KEY}: every row of a Kontext dataset needs one (or remove "
                             f"{KEY} from model.extra_inputs to train text-to-image)")
        return {**super().encode(item), "kontext_latents": self.encode_references(item[KEY])}

    def conditioning_latents(self, inputs: dict) -> list[torch.Tensor]:
        return list(inputs.get("kontext_latents") or [])

    def sample_inputs(self, prompt: str, height: int = 0, width: int = 0, num_frames: int = 1, images=None) -> dict:
        """A sample entry's reference image(s) (``images``), else the dataset's first row's."""
        inputs = super().sample_inputs(prompt)
        references = self.sample_reference.get() if images is None else images
        return inputs if references is None else {**inputs, "kontext_latents": self.encode_references(references)}
