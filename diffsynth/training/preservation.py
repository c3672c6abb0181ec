"""Differential output preservation (DOP, ai-toolkit's ``diff_output_preservation``): each sample's prompt with its
trigger word replaced by a class word (``a photo of sks dog`` -> ``a photo of dog``) is predicted twice on the same
noisy latents and timestep as the main loss, once with the adapters disabled (the base model, no gradient) and once
with them; ``train.dop_weight`` times the MSE between the two is added to the loss. It anchors what the class word
means to the base model, so the LoRA learns the trigger without changing the class."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer

from ..data.recipe import data_recipe


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module):
    """The base model's prediction: every peft adapter layer (LoRA, DoRA, LoHa, LoKr) passes its input through the
    base layer only. peft's ``enable_adapters(False)`` also freezes the adapter parameters, so its flag is set
    directly and restored."""
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    saved = [m._disable_adapters for m in layers]
    try:
        for m in layers:
            m._disable_adapters = True
        yield
    finally:
        for m, flag in zip(layers, saved):
            m._disable_adapters = flag


@dataclass
class Preservation:
    weight: float
    class_word: str
    recipe: object  # DataRecipe: each row's dataset and its trigger word

    @classmethod
    def from_config(cls, config) -> "Preservation | None":
        if not config.train.dop_weight:
            return None
        return cls(config.train.dop_weight, config.train.dop_class, data_recipe(config))

    def class_item(self, item: dict) -> dict:
        """The dataset item with its prompt's trigger word replaced by the class word."""
        trigger = self.recipe.entry(item).trigger_word
        prompt = item.get("prompt")
        return {**item, "prompt": prompt.replace(trigger, self.class_word) if trigger and isinstance(prompt, str)
                else prompt}

    def loss(self, pipe, model: torch.nn.Module, noisy: torch.Tensor, t: torch.Tensor,
             class_inputs: dict) -> torch.Tensor:
        """``weight * MSE(prediction with adapters, prediction without)`` on the class prompt (mean over the batch)."""
        with torch.no_grad(), adapters_disabled(model):
            base = pipe.predict(noisy, t, class_inputs)
        pred = pipe.predict(noisy, t, class_inputs)
        return self.weight * F.mse_loss(pred.float(), base.float())
