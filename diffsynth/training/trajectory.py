"""DiffSynth's trajectory imitation (``--task trajectory_imitation``, its ``TrajectoryImitationLoss`` in
``diffsynth/diffusion/loss.py`` and the Z-Image ``train.py`` that builds the teacher): Z-Image-Turbo's few-step
distillation recipe (``examples/z_image/model_training/special/trajectory_imitation/Z-Image-Turbo.sh``).

* The teacher is a frozen copy of the trained models taken once, after LoRA injection and ``lora_checkpoint``
  (DiffSynth ``copy.deepcopy``\\s its whole pipeline at that point; the frozen models it shares with the student are
  not copied here, which changes nothing they compute).
* Each step draws fresh noise (DiffSynth's noise unit without a seed) and, without gradient, the teacher denoises
  it in 50 Euler steps at CFG 2 against the empty negative prompt, on the family's 50-step grid with the student's
  8 timesteps put in at their nearest grid points (DiffSynth's ``set_timesteps(50, target_timesteps=...)``): the
  teacher trajectory is the 51 latents.
* Trajectory loss: at each of the student's 8 timesteps (its ``set_timesteps(8, training=True)`` grid) the student
  (CFG 1) predicts a velocity from the teacher's latents at that timestep; the target is the teacher's secant to its
  latents at the student's next timestep (the final latents after the last), ``(x_next - x) / (sigma_next - sigma)``
  (denominator at least 1e-6 in size); MSE times the bell-curve weight of the 8-point grid, summed over the steps.
* LPIPS term: the student samples 8 steps from the same noise, its prediction detached at every step, and the VAE
  decodes its result and the teacher's final latents; the loss adds their AlexNet LPIPS distance. Because the
  prediction is detached (as in DiffSynth) the term carries **no gradient**: it only shows in the logged loss. We
  run that rollout without autograd, which gives the same numbers and the same (zero) gradient.

Timesteps go to the models in the model dtype and grid lookups compare in that dtype, as DiffSynth's do. A batch of
several rows averages the LPIPS distances (DiffSynth trains one row per step).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..families.base import Family
from ..models.lpips import DEFAULT_PATH as DEFAULT_LPIPS, LPIPS, TASK, lpips_file  # noqa: F401  (re-exported)
from .schedule import NUM_TRAIN_TIMESTEPS, bell_curve_weights

STUDENT_STEPS = 8
TEACHER_STEPS = 50
TEACHER_CFG = 2.0
NEGATIVE_PROMPT = ""  # DiffSynth's train.py: inputs_nega = {"negative_prompt": ""}
MIN_STEP = 1e-6  # smallest |sigma_next - sigma| of the secant's denominator


# ---------------------------------------------------------------- grids
def student_grid(family: type[Family]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas, timesteps) of the student's 8 steps, float32 (DiffSynth's ``set_timesteps(8)``)."""
    sigmas = family.train_sigmas(STUDENT_STEPS).float()
    return sigmas, sigmas * NUM_TRAIN_TIMESTEPS


def teacher_grid(family: type[Family], student_timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's 50-step grid with each student timestep put in at its nearest point (sigma = t / 1000)."""
    sigmas = family.train_sigmas(TEACHER_STEPS).float()
    timesteps = sigmas * NUM_TRAIN_TIMESTEPS
    for t in student_timesteps.float():
        i = torch.argmin((timesteps - t).abs())
        timesteps[i] = t
        sigmas[i] = t / NUM_TRAIN_TIMESTEPS
    return sigmas, timesteps


def _next_sigma(sigmas: torch.Tensor, i: int):
    return sigmas[i + 1] if i + 1 < len(sigmas) else 0


def _timestep(t: torch.Tensor, pipe: Family, batch: int) -> torch.Tensor:
    return t.reshape(1).to(pipe.torch_dtype).expand(batch)


# ---------------------------------------------------------------- the three parts
@torch.no_grad()
def teacher_trajectory(teacher: Family, noise: torch.Tensor, positive: dict, negative: dict, sigmas: torch.Tensor,
                       timesteps: torch.Tensor, cfg: float = TEACHER_CFG) -> list[torch.Tensor]:
    """The teacher's latents before its first step and after each step (len(sigmas) + 1 tensors)."""
    latents, trajectory = noise, [noise.clone()]
    for i in range(len(timesteps)):
        t = _timestep(timesteps[i], teacher, noise.shape[0])
        velocity = teacher.predict(latents, t, positive)
        if cfg != 1.0:
            uncond = teacher.predict(latents, t, negative)
            velocity = uncond + cfg * (velocity - uncond)
        latents = latents + velocity * (_next_sigma(sigmas, i) - sigmas[i])
        trajectory.append(latents.clone())
    return trajectory


def imitation_loss(pipe: Family, trajectory: list[torch.Tensor], teacher_timesteps: torch.Tensor,
                   positive: dict) -> torch.Tensor:
    """Sum over the student's 8 timesteps of weight(t) · MSE(student velocity at the teacher's latents, the
    teacher's secant to the student's next timestep)."""
    family = type(pipe)
    sigmas, timesteps = student_grid(family)
    weights = bell_curve_weights(sigmas).float()
    teacher_t = teacher_timesteps.to(pipe.torch_dtype)  # DiffSynth casts the teacher's timesteps to the model dtype
    batch = trajectory[0].shape[0]
    loss = 0
    for i in range(len(timesteps)):
        t = timesteps[i].reshape(1).to(pipe.torch_dtype)
        latents = trajectory[int(torch.argmin((teacher_t - t).abs()))]
        velocity = pipe.predict(latents, t.expand(batch), positive)
        if i + 1 < len(timesteps):
            target_latents = trajectory[int(torch.argmin((teacher_t - timesteps[i + 1]).abs()))]
        else:
            target_latents = trajectory[-1]
        step = _next_sigma(sigmas, i) - sigmas[i]
        step = torch.sign(step) * torch.clamp(step.abs(), min=MIN_STEP)
        target = (target_latents - latents) / step
        weight = weights[torch.argmin((timesteps - t).abs())]
        loss = loss + F.mse_loss(velocity.float(), target.float()) * weight
    return loss


@torch.no_grad()
def lpips_term(pipe: Family, lpips: LPIPS, trajectory: list[torch.Tensor], positive: dict) -> torch.Tensor:
    """The student's 8-step sample from the teacher's noise (CFG 1) against the teacher's result, in LPIPS over
    the decoded images: (B,) distances. No gradient (DiffSynth detaches the student's prediction)."""
    sigmas, timesteps = student_grid(type(pipe))
    latents = trajectory[0]
    for i in range(len(timesteps)):
        velocity = pipe.predict(latents, _timestep(timesteps[i], pipe, latents.shape[0]), positive)
        latents = latents + velocity * (_next_sigma(sigmas, i) - sigmas[i])
    device = next(lpips.parameters()).device
    return lpips(pipe.decode_pixels(latents).float().to(device), pipe.decode_pixels(trajectory[-1]).float().to(device))


def frozen_copy(pipe: Family) -> Family:
    """The teacher: the pipeline with each model that has trainable parameters deep-copied and frozen (LoRA and
    all); the frozen models are shared with the student."""
    teacher = copy.copy(pipe)
    teacher._modules = dict(pipe._modules)
    for name, child in pipe.named_children():
        if any(p.requires_grad for p in child.parameters()):
            teacher._modules[name] = copy.deepcopy(child).requires_grad_(False).eval()
    return teacher


class TrajectoryImitation:
    """The task's state beside the training module (not a submodule: nothing of it is trained or saved): the
    teacher, the LPIPS network and the negative prompt's conditioning."""

    def __init__(self, teacher: Family, lpips: LPIPS, negative: dict):
        self.teacher, self.lpips, self.negative = teacher, lpips, negative
        self.last: dict[str, float] = {}  # the parts of the latest loss

    @classmethod
    def build(cls, pipe: Family, config) -> "TrajectoryImitation":
        if not type(pipe).trajectory_imitation:  # config.validate refuses it first
            raise ValueError(f"the {type(pipe).name} family does not implement {TASK}")
        lpips = LPIPS.load(lpips_file(config.model.lpips_path)).to(pipe.device)
        negative = pipe.sample_inputs(NEGATIVE_PROMPT, 0, 0)
        return cls(frozen_copy(pipe), lpips, negative)

    def negative_batch(self, pipe: Family, batch: dict) -> dict:
        """The batch with its prompt conditioning replaced by the negative prompt's, one per row."""
        rows = batch["latents"].shape[0]
        negative = pipe.collate([{k: v.to(pipe.device) for k, v in self.negative.items()}] * rows)
        out = {k: v for k, v in batch.items() if k not in pipe.padded_inputs.values()}
        return {**out, **negative}

    def loss(self, pipe: Family, batch: dict, generator: torch.Generator) -> torch.Tensor:
        if self.teacher.device != pipe.device:  # accelerate moved the student (initialize_model_on_cpu)
            self.teacher.place(pipe.device)
            self.lpips.to(pipe.device)
        shape = batch["latents"].shape
        noise = torch.randn(shape, generator=generator).to(pipe.device, pipe.torch_dtype)
        family = type(pipe)
        _, student_t = student_grid(family)
        sigmas, timesteps = teacher_grid(family, student_t)
        trajectory = teacher_trajectory(self.teacher, noise, batch, self.negative_batch(pipe, batch), sigmas,
                                        timesteps)
        imitation = imitation_loss(pipe, trajectory, timesteps, batch)
        perceptual = lpips_term(pipe, self.lpips, trajectory, batch).to(imitation.device).mean()
        self.last = {"trajectory_loss": float(imitation.detach()), "lpips": float(perceptual)}
        return imitation + perceptual
