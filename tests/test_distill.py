"""--task direct_distill (DiffSynth's DirectDistillLoss): the student's few-step Euler sample from each row's seeded
noise against the row's latents, gradients through every step; its recipes parse as written. The loss against
DiffSynth's own on identical weights is a `make parity` row (tests/parity, "direct_distill loss")."""
from __future__ import annotations

import pytest
import torch
import yaml

from diffsynth.cli import main as cli_main
from diffsynth.command_line import config_from_args
from diffsynth.config import config_from_dict
from diffsynth.errors import ConfigError
from diffsynth.families import all_specs, get_spec, upstream
from diffsynth.training import distill

RECIPES = {r["path"].split("/model_training/")[1]: r for r in upstream.table()["recipes"]
           if "direct_distill" in r["tasks"] and r["family"] in {upstream.diffsynth_family(s.name) for s in all_specs()}}


def stub(family: str, velocity: torch.Tensor) -> "Stub":
    """A Stub with the family's grid (a class attribute: the loss asks the pipeline's class)."""
    return type("Stub", (Stub,), {"train_sigmas": staticmethod(get_spec(family).train_sigmas)})(velocity)


class Stub(torch.nn.Module):
    name = "stub"
    """A pipeline whose velocity is ``scale * velocity`` (one trainable number), recording the timesteps."""

    torch_dtype = torch.float32
    noise_in_model_dtype = False

    def __init__(self, velocity: torch.Tensor):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.velocity, self.timesteps, self.seen = velocity, [], []

    def predict(self, latents, timestep, inputs):
        self.timesteps.append(timestep.clone())
        self.seen.append(latents.detach().clone())
        return self.scale * self.velocity


@pytest.mark.parametrize("family", ["qwen_image", "flux", "wan"])
@pytest.mark.parametrize("steps", [2, 4])
def test_loss_is_the_mse_of_the_students_euler_sample(family, steps):
    g = torch.Generator().manual_seed(0)
    latents, noise, velocity = (torch.randn(1, 4, 2, 4, 4, generator=g) for _ in range(3))
    pipe = stub(family, velocity)
    loss = distill.direct_distill_loss(pipe, {"latents": latents, distill.NOISE: noise, distill.STEPS: steps})
    grid = get_spec(family).train_sigmas(steps).float()  # DiffSynth: scheduler.set_timesteps(steps), its defaults
    # one DiT call per step at sigma * 1000, on DiffSynth's set_timesteps(steps) grid
    assert torch.allclose(torch.cat(pipe.timesteps), grid * 1000)
    # Euler steps to sigma 0 with a constant velocity telescope: x0 = noise - sigma_0 * v
    assert torch.allclose(loss, torch.nn.functional.mse_loss(noise - grid[0] * velocity, latents), atol=1e-6)
    # gradients run through every step: d loss / d scale of that closed form
    loss.backward()
    expected = (2 * (noise - grid[0] * velocity - latents) * (-grid[0] * velocity)).mean()
    assert torch.allclose(pipe.scale.grad, expected, rtol=1e-4)


def test_a_step_count_without_a_grid_is_refused():
    with pytest.raises(ConfigError, match="num_inference_steps = 1 gives no finite grid"):
        distill.distill_sigmas(get_spec("qwen_image"), 1)
    assert distill.distill_sigmas(get_spec("wan"), 1).tolist() == [1.0, 0.0]


def test_a_clean_first_frame_is_put_in_once_and_the_loss_covers_every_frame():
    """DiffSynth's TI2V unit writes frame 0 into the noise before the loop; its loss steps it like the rest."""
    g = torch.Generator().manual_seed(1)
    latents, noise, velocity = (torch.randn(1, 4, 3, 4, 4, generator=g) for _ in range(3))
    first = torch.randn(1, 4, 1, 4, 4, generator=g)
    pipe = stub("wan", velocity)
    inputs = {"latents": latents, distill.NOISE: noise, distill.STEPS: 2, "first_frame_latents": first}
    loss = distill.direct_distill_loss(pipe, inputs)
    assert torch.equal(pipe.seen[0][:, :, 0:1], first) and not torch.equal(pipe.seen[1][:, :, 0:1], first)
    start = torch.cat([first, noise[:, :, 1:]], dim=2)
    sigma0 = get_spec("wan").train_sigmas(2).float()[0]
    assert torch.allclose(loss, torch.nn.functional.mse_loss(start - sigma0 * velocity, latents), atol=1e-6)


def test_each_rows_noise_is_diffsynths_seeded_noise():
    shape = (1, 16, 8, 8)
    row = {"seed": "7", "rand_device": "cpu", "num_inference_steps": "4"}
    want = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(7), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(distill.initial_noise(shape, row, torch.float32, False, g), want)
    # Qwen-Image draws it in the model dtype (DiffSynth: rand_torch_dtype=pipe.torch_dtype); the others cast float32
    in_bf16 = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(7), dtype=torch.bfloat16)
    assert torch.equal(distill.initial_noise(shape, row, torch.bfloat16, True, g), in_bf16)
    assert torch.equal(distill.initial_noise(shape, row, torch.bfloat16, False, g), want.to(torch.bfloat16))
    assert get_spec("qwen_image").noise_in_model_dtype and not get_spec("wan").noise_in_model_dtype
    with pytest.raises(ConfigError, match="rand_device 'nowhere'"):
        distill.initial_noise(shape, {**row, "rand_device": "nowhere"}, torch.float32, False, g)


def test_attach_adds_the_rows_noise_and_steps():
    pipe = stub("flux", torch.zeros(1))
    inputs = {"latents": torch.zeros(1, 16, 8, 8)}
    out = distill.attach(inputs, {"seed": 3, "rand_device": "cpu", "num_inference_steps": "4.0"}, pipe,
                         torch.Generator())
    assert out[distill.STEPS] == 4 and out[distill.NOISE].shape == (1, 16, 8, 8)
    with pytest.raises(ConfigError, match="num_inference_steps"):
        distill.attach(inputs, {"seed": 3}, pipe, torch.Generator())


@pytest.mark.parametrize("path", sorted(RECIPES))
def test_diffsynths_direct_distill_recipes_parse_as_written(path, capsys):
    (command,) = RECIPES[path]["commands"]
    assert cli_main(["params", "--from-args", *command["args"]]) == 0
    params = yaml.safe_load(capsys.readouterr().out)
    assert params["train"]["task"] == "direct_distill" and params["cache"]["enabled"] is False
    assert set(distill.INPUTS) <= set(params["model"]["extra_inputs"].split(","))


def test_distillation_needs_the_step_column_and_online_encoding():
    args = ["--model_id_with_origin_paths", "Qwen/Qwen-Image:transformer/*.safetensors", "--lora_base_model", "dit",
            "--task", "direct_distill"]
    with pytest.raises(ConfigError, match="num_inference_steps"):
        config_from_args(args)
    config = config_from_args([*args, "--extra_inputs", "seed,rand_device,num_inference_steps,cfg_scale"])
    assert config.train.task == "direct_distill"
    data = config.to_dict()
    data["cache"]["enabled"] = True
    with pytest.raises(ConfigError, match="cache.enabled: false"):
        config_from_dict(data)
    # the split variants are refused by name
    with pytest.raises(ConfigError, match="direct_distill:train"):
        config_from_args([*args, "--extra_inputs", "num_inference_steps", "--task", "direct_distill:train"])
    # the distill columns are no extra input of a family outside the task
    with pytest.raises(ConfigError, match="does not implement"):
        config_from_args([*args[:-2], "--extra_inputs", "seed"])
