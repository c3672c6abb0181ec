"""Wan2.1 speed control (DiffSynth's examples/wanvideo/model_training/{full,lora}/Wan2.1-1.3b-speedcontrol-v1.sh):
the Wan2.1-T2V-1.3B DiT plus DiffSynth's motion controller (``DiffSynth-Studio/Wan2.1-1.3b-speedcontrol-v1:
model.safetensors``), a registered variant of ``wan`` selected by ``motion_bucket_id``.

As DiffSynth's ``WanVideoUnit_SpeedControl`` and ``model_fn_wan_video`` do it: a row's ``motion_bucket_id`` (a
number column) is embedded sinusoidally (of ``10 · id``, float64, cos then sin) and mapped by three linear layers
to 6·dim values added to the DiT's timestep modulation (``time_proj``'s output, before it is split in six).
The motion controller is the pipeline's ``motion_controller`` (``--trainable_models motion_controller``,
``--remove_prefix_in_ckpt pipe.motion_controller.``), its keys as in DiffSynth's file (``linear.{0,2,4}``).
"""
from __future__ import annotations

from dataclasses import replace

import torch

from ...errors import ConfigError
from ...models.components import ComponentKind
from . import tiny
from .fun_dit import WanMotionController
from .pipeline import Wan

ENTRY = "DiffSynth-Studio/Wan2.1-1.3b-speedcontrol-v1:model.safetensors"
KEYS = {f"linear.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}


def motion_controller_config(shapes: dict, beside) -> dict:
    dim, freq_dim = tuple(shapes["linear.0.weight"])
    return {"freq_dim": freq_dim, "dim": dim}


KIND = ComponentKind("wan_motion_controller", "wan", "motion_controller", "diffsynth", (r"^linear\.4\.weight$",),
                     motion_controller_config, lambda c: WanMotionController(**c),
                     accepts=lambda shapes, beside: set(shapes) == KEYS)


class WanSpeedControl(Wan):
    name = "wan_speed_control"
    aliases = ("wan_speedcontrol",)
    summary = "Wan2.1 speed control: motion_bucket_id through DiffSynth's motion controller"
    variant_of = "wan"
    selected_by = "motion_bucket_id"
    extra_inputs = ("motion_bucket_id",)
    required_extra_inputs = ("motion_bucket_id",)
    component_kinds = (*Wan.component_kinds, KIND)
    extra_components = ("motion_controller",)
    tiny_twins = {"wan2.1-speedcontrol": ("DiffSynth-Studio/Wan2.1-1.3b-speedcontrol-v1", tiny.write_tiny_speed)}

    @classmethod
    def data_rules(cls, config=None):
        return replace(super().data_rules(config), value_inputs=(("motion_bucket_id", "number"),))

    def __init__(self, *args, motion_controller=None, **kwargs):
        super().__init__(*args, **kwargs)
        if motion_controller is None:
            raise ConfigError(f"motion_bucket_id needs the motion controller: add {ENTRY} to "
                              "model.model_id_with_origin_paths")
        self.motion_controller = motion_controller
        self._sample_bucket: float | None = None

    @staticmethod
    def bucket(item: dict) -> float:
        value = item.get("motion_bucket_id")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"motion_bucket_id {value!r} is not a number") from None
        if value != value:
            raise ValueError("a row's motion_bucket_id is empty")
        return value

    def conditioning_inputs(self, item: dict, video: list, height: int, width: int) -> dict:
        bucket = self.bucket(item)
        if self._sample_bucket is None:
            self._sample_bucket = bucket
        return {"motion_bucket_id": torch.tensor([bucket], dtype=self.torch_dtype)}

    def predict(self, noisy_latents: torch.Tensor, timestep: torch.Tensor, inputs: dict) -> torch.Tensor:
        motion = self.motion_controller(inputs["motion_bucket_id"].to(self.device, self.torch_dtype))

        def add_motion(module, args, output):  # DiffSynth: t_mod + motion_controller(id), before the 6-way split
            return output + motion.to(output.dtype)

        hook = self.dit.condition_embedder.time_proj.register_forward_hook(add_motion)
        try:
            return super().predict(noisy_latents, timestep, inputs)
        finally:
            hook.remove()

    @torch.no_grad()
    def sample_inputs(self, prompt: str, height: int = 0, width: int = 0, num_frames: int = 1) -> dict:
        """Text-to-video at the first encoded row's motion bucket."""
        inputs = super().sample_inputs(prompt, height, width, num_frames)
        bucket = self._sample_bucket if self._sample_bucket is not None else 0.0
        return {**inputs, "motion_bucket_id": torch.tensor([bucket], dtype=self.torch_dtype)}
