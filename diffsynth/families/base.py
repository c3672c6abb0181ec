"""The one interface training uses to talk to a family."""
from __future__ import annotations

import torch
from PIL import Image


class Pipeline(torch.nn.Module):
    """A family's models as child modules (``dit``, ``vae``, ``text_encoder``, ...) plus what training needs.

    Child names match DiffSynth's pipeline attributes, so state-dict keys read ``pipe.dit.<...>`` in the
    training module and ``--remove_prefix_in_ckpt pipe.dit.`` works as in DiffSynth.
    """

    family: str = ""
    schedule_name: str = ""
    height_factor: int = 16
    width_factor: int = 16
    time_division_factor: int = 4      # video frame counts are n % factor == remainder (4k+1)
    time_division_remainder: int = 1
    default_lora_targets: str = ""

    def modules_without_gradient(self, model_name: str) -> list[str]:
        """Modules of ``model_name`` whose output the loss never uses (so they get no gradient and make DDP
        fail without ``find_unused_parameters``). LoRA is not put on them; names are relative to the model."""
        return []

    def encode(self, item: dict) -> dict:
        """A dataset item -> model inputs without gradient: ``latents`` (x0) and conditioning tensors."""
        raise NotImplementedError

    def predict(self, noisy_latents: torch.Tensor, timestep: torch.Tensor, inputs: dict) -> torch.Tensor:
        """The denoiser's velocity prediction at ``timestep`` (0..1000 scale), same shape as the latents."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, prompt: str, seed: int, height: int, width: int, num_inference_steps: int) -> Image.Image:
        raise NotImplementedError
