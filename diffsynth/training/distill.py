"""DiffSynth's direct distillation (``--task direct_distill``, its ``DirectDistillLoss``), for any family.

Each dataset row is a teacher sample (made offline with many steps) with the ``seed``, ``rand_device``,
``num_inference_steps`` and ``cfg_scale`` it was made with (``--extra_inputs``). The student denoises the
row's seeded noise in ``num_inference_steps`` Euler steps on the family's own grid (DiffSynth's
``scheduler.set_timesteps(num_inference_steps)`` with the template's defaults: our ``train_sigmas(n)``),
with gradients through every step, and the loss is the MSE between its final latents and the teacher
sample's latents. No timestep weight, no CFG in the student (``cfg_scale`` is read and unused, as in
DiffSynth, where the loss gets only the positive inputs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import TASK_EXTRA_INPUTS
from ..errors import ConfigError
from ..families.base import Family
from ..progress import progress

TASK = "direct_distill"
INPUTS = TASK_EXTRA_INPUTS[TASK]  # seed, rand_device, num_inference_steps, cfg_scale
NOISE = "distill_noise"  # the row's initial noise, beside its encoded inputs
STEPS = "num_inference_steps"


def distill_sigmas(family: type[Family], steps: int) -> torch.Tensor:
    """The student's grid: the family's ``steps``-point grid (DiffSynth: ``set_timesteps(steps)``), then 0 (the
    Euler step after the last point goes to sigma 0). float32, as DiffSynth's scheduler holds it."""
    if steps < 1:
        raise ConfigError(f"direct_distill: num_inference_steps = {steps}; each row needs at least 1 step")
    grid = family.train_sigmas(steps).float()
    if not torch.isfinite(grid).all():  # Qwen-Image's shift-terminal stretch divides by 0 at one step (DiffSynth too)
        raise ConfigError(f"direct_distill: num_inference_steps = {steps} gives no finite grid for {family.name}; "
                          "use 2 or more steps")
    return torch.cat([grid, torch.zeros(1)])


def initial_noise(shape: tuple, item: dict, dtype: torch.dtype, in_model_dtype: bool,
                  generator: torch.Generator) -> torch.Tensor:
    """DiffSynth's ``generate_noise``: ``randn`` on the row's ``rand_device`` from ``Generator(rand_device)
    .manual_seed(seed)``, in float32 (or the model dtype where the family draws it so: Qwen-Image), then cast.
    A row without a seed draws from the run's generator."""
    seed = item.get("seed")
    if seed is None or seed == "":
        return torch.randn(shape, generator=generator).to(dtype)
    device = str(item.get("rand_device") or "cpu")
    rand_dtype = dtype if in_model_dtype else torch.float32
    try:
        g = torch.Generator(device).manual_seed(int(float(seed)))
        noise = torch.randn(shape, generator=g, device=device, dtype=rand_dtype)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"direct_distill: a row's rand_device {device!r} / seed {seed!r} cannot seed noise here "
                          f"({e}); set the rand_device column to a device this machine has (cpu)") from None
    return noise.to(dtype)


def attach(inputs: dict, item: dict, pipe: Family, generator: torch.Generator) -> dict:
    """A row's encoded inputs plus its initial noise (per row: its own seed) and its step count."""
    if item.get(STEPS) in (None, ""):
        raise ConfigError("direct_distill needs each row's num_inference_steps (a metadata column named in "
                          "model.extra_inputs, as DiffSynth's recipes pass --extra_inputs "
                          "seed,rand_device,num_inference_steps,cfg_scale)")
    latents = inputs["latents"]
    noise = initial_noise(tuple(latents.shape), item, latents.dtype, type(pipe).noise_in_model_dtype, generator)
    return {**inputs, NOISE: noise.to(latents.device), STEPS: int(float(item[STEPS]))}


def direct_distill_loss(pipe: Family, inputs: dict) -> torch.Tensor:
    """MSE between the student's ``num_inference_steps``-step sample from the rows' noise and the rows' latents.

    With ``first_frame_latents`` (Wan2.2 TI2V) latent frame 0 of the noise is the clean frame once, before the
    first step, and the loss covers every frame: what DiffSynth's image embedder unit and loss do."""
    target = inputs["latents"]
    sigmas = distill_sigmas(type(pipe), inputs[STEPS]).to(target.device)
    latents = inputs[NOISE]
    first = inputs.get("first_frame_latents")
    if first is not None:
        latents = latents.clone()
        latents[:, :, 0:1] = first
    for i in range(len(sigmas) - 1):
        t = (sigmas[i] * 1000).to(pipe.torch_dtype).reshape(1).expand(target.shape[0])
        velocity = pipe.predict(latents, t, inputs)
        latents = latents + velocity * (sigmas[i + 1] - sigmas[i])
    return F.mse_loss(latents.float(), target.float())


class DistillValidator:
    """The validation loss of a direct_distill run: the distillation loss on the first rows (each row's own seed
    fixes its noise, so the numbers compare across save points)."""

    def __init__(self, items: list[dict], encode, seed: int):
        if not items:
            raise ValueError("validation needs at least one dataset row")
        self.items, self.encode, self.seed = items, encode, seed

    @classmethod
    def for_config(cls, items: list[dict], config, encode) -> "DistillValidator":
        return cls(items, encode, config.validation.seed)

    @torch.no_grad()
    def evaluate(self, pipe: Family, schedule=None) -> dict[str, float]:
        generator = torch.Generator().manual_seed(self.seed)  # rows without a seed
        total = 0.0
        for item in progress(self.items, desc="validation", unit="row"):
            total += direct_distill_loss(pipe, attach(self.encode(item), item, pipe, generator)).item()
        return {"val_loss": total / len(self.items)}
