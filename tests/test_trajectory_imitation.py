"""--task trajectory_imitation (DiffSynth's TrajectoryImitationLoss, Z-Image-Turbo's distillation recipe): the
grids, the teacher's CFG trajectory, the secant loss and its weights, the LPIPS term (no gradient, as DiffSynth's),
the frozen teacher, refusals, and the tiny twin through training. The numbers against DiffSynth's own loss on
identical random weights are a `make parity` case (tests/parity, "trajectory z_image")."""
from __future__ import annotations

import math
import shlex

import pytest
import torch
from safetensors.torch import save_file

from diffsynth.command_line import config_from_args
from diffsynth.config import config_from_dict
from diffsynth.errors import ConfigError
from diffsynth.families import upstream
from diffsynth.families.base import Family
from diffsynth.families.z_image import pipeline as zi
from diffsynth.models.lpips import ALEX_CHANNELS, LPIPS, write_tiny_lpips
from diffsynth.training import trajectory
from diffsynth.training.schedule import bell_curve_weights

(RECIPE,) = [r for r in upstream.table()["recipes"] if "special/trajectory_imitation" in r["path"]]
ARGS = list(RECIPE["commands"][0]["args"])


class Stub(Family):
    """A pipeline on Z-Image's grid whose velocity is ``scale * inputs["v"]`` (one trainable number)."""

    name = "stub"
    trajectory_imitation = True
    train_sigmas = staticmethod(zi.train_sigmas)

    def __init__(self):
        super().__init__(torch.float32, dit=torch.nn.Linear(1, 1), vae=torch.nn.Linear(1, 1))
        self.dit.weight.data.fill_(1.0)
        self.seen = []

    def predict(self, latents, timestep, inputs):
        self.seen.append((latents.detach().clone(), timestep.clone()))
        return self.dit.weight[0, 0] * inputs["v"].expand_as(latents)

    def decode_pixels(self, latents):
        return torch.nn.functional.interpolate(latents[:, :3], size=(32, 32)).tanh()


def test_bell_curve_weights_of_a_short_grid_are_diffsynths_empirical_formula():
    sigmas = zi.train_sigmas(8).float()
    x = sigmas.double() * 1000
    y = torch.exp(-2 * ((x - 500) / 1000) ** 2)
    y = y - y.min()
    w = y * (1000 / y.sum()) * (8 / 1000)  # its set_training_weight, steps = 1000, then len != 1000
    w = w + w[1]
    assert torch.allclose(bell_curve_weights(sigmas).double(), w, rtol=1e-6)
    # the shift lifts sigma 1 (zero before it) to the second point's unshifted weight, half its shifted one
    assert bell_curve_weights(sigmas)[0].item() == pytest.approx(w[1].item() / 2, rel=1e-6)


def test_the_teacher_grid_is_50_steps_with_the_students_8_put_in():
    sigmas, timesteps = trajectory.student_grid(zi.ZImage)
    assert len(timesteps) == 8 and timesteps[0] == 1000 and torch.equal(timesteps, sigmas * 1000)
    t_sigmas, t_steps = trajectory.teacher_grid(zi.ZImage, timesteps)
    plain = zi.train_sigmas(50).float() * 1000
    assert len(t_steps) == 50 and bool((t_steps[1:] < t_steps[:-1]).all())
    hit = [int(torch.argmin((plain - t).abs())) for t in timesteps]
    assert len(set(hit)) == 8 and all(t_steps[i] == t for i, t in zip(hit, timesteps))
    assert all(t_steps[i] == plain[i] for i in range(50) if i not in hit)
    assert torch.allclose(t_sigmas, t_steps / 1000)


def test_the_teachers_trajectory_is_cfg_2_euler_steps_to_sigma_0():
    teacher, noise = Stub(), torch.randn(1, 4, 2, 2)
    positive, negative = {"v": torch.full((1, 4, 2, 2), 3.0)}, {"v": torch.full((1, 4, 2, 2), 1.0)}
    sigmas, timesteps = trajectory.teacher_grid(Stub, trajectory.student_grid(Stub)[1])
    path = trajectory.teacher_trajectory(teacher, noise, positive, negative, sigmas, timesteps)
    assert len(path) == 51 and torch.equal(path[0], noise)
    # velocity 1 + 2 * (3 - 1) = 5 at every step; the steps add up to sigma 1 -> 0
    assert torch.allclose(path[-1], noise - 5.0, atol=1e-5)
    assert torch.allclose(path[10], noise - 5.0 * (1 - sigmas[10]), atol=1e-5)
    assert len(teacher.seen) == 100  # positive and negative at each of the 50 steps
    assert [float(t[0]) for _, t in teacher.seen[::2]] == timesteps.tolist()


def test_the_trajectory_loss_is_the_weighted_mse_to_the_teachers_secants():
    student = Stub()
    sigmas, timesteps = trajectory.teacher_grid(Stub, trajectory.student_grid(Stub)[1])
    noise = torch.randn(1, 4, 2, 2)
    # a straight teacher path of velocity 2: every secant is 2
    path = trajectory.teacher_trajectory(Stub(), noise, {"v": torch.full_like(noise, 2.0)}, {}, sigmas, timesteps,
                                         cfg=1.0)
    loss = trajectory.imitation_loss(student, path, timesteps, {"v": torch.full_like(noise, 2.0)})
    assert loss.item() == pytest.approx(0.0, abs=1e-8)
    student.seen.clear()
    loss = trajectory.imitation_loss(student, path, timesteps, {"v": torch.full_like(noise, 3.0)})
    weights = bell_curve_weights(trajectory.student_grid(Stub)[0])
    assert loss.item() == pytest.approx(weights.sum().item(), rel=1e-4)  # (3 - 2)^2 at each step, weighted
    # the student sees the teacher's latents at its own timesteps
    for (latents, t), s in zip(student.seen, trajectory.student_grid(Stub)[0]):
        assert float(t[0]) == pytest.approx(float(s) * 1000)
        assert torch.allclose(latents, noise - 2.0 * (1 - s), atol=1e-5)
    loss.backward()
    assert student.dit.weight.grad.abs().item() > 0


def test_the_lpips_term_carries_no_gradient_and_is_zero_for_the_teachers_own_path():
    lpips = LPIPS(ALEX_CHANNELS)
    torch.nn.init.uniform_(lpips.lin0.model[1].weight, 0.1, 1.0)
    student, noise = Stub(), torch.randn(1, 4, 8, 8)
    sigmas, timesteps = trajectory.teacher_grid(Stub, trajectory.student_grid(Stub)[1])
    path = trajectory.teacher_trajectory(Stub(), noise, {"v": torch.ones_like(noise)}, {}, sigmas, timesteps, cfg=1.0)
    same = trajectory.lpips_term(student, lpips, path, {"v": torch.ones_like(noise)})
    assert same.shape == (1,) and same.item() == pytest.approx(0.0, abs=1e-6) and not same.requires_grad
    other = trajectory.lpips_term(student, lpips, path, {"v": -torch.ones_like(noise)})
    assert other.item() > 1e-4 and not other.requires_grad


def test_lpips_reads_diffsynths_and_the_lpips_packages_layouts(tmp_path):
    path = write_tiny_lpips(tmp_path / "LPIPS" / "alexnet.safetensors", seed=3)
    model = LPIPS.load(path)
    assert model.channels == (8, 16, 16, 16, 16) and not any(p.requires_grad for p in model.parameters())
    a, b = torch.rand(2, 3, 40, 40) * 2 - 1, torch.rand(2, 3, 40, 40) * 2 - 1
    assert torch.allclose(model(a, a), torch.zeros(2), atol=1e-7) and bool((model(a, b) > 0).all())
    state = {k.replace("lin", "lins.", 1) if k.startswith("lin") else k: v for k, v in model.state_dict().items()}
    assert torch.equal(LPIPS.from_state_dict(state)(a, b), model(a, b))
    keys = set(LPIPS().state_dict())
    assert {"net.slice1.0.weight", "net.slice2.3.weight", "net.slice3.6.weight", "net.slice4.8.weight",
            "net.slice5.10.bias", "lin4.model.1.weight", "scaling_layer.shift"} <= keys
    save_file({"conv.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConfigError, match="not an AlexNet LPIPS file.*model.lpips_path"):
        LPIPS.load(tmp_path / "bad.safetensors")


def test_the_teacher_is_a_frozen_copy_of_the_trained_models_only():
    pipe = Stub()
    pipe.vae.requires_grad_(False)
    teacher = trajectory.frozen_copy(pipe)
    assert teacher.dit is not pipe.dit and teacher.vae is pipe.vae and pipe.dit.weight.requires_grad
    assert not teacher.dit.weight.requires_grad and torch.equal(teacher.dit.weight, pipe.dit.weight)
    with torch.no_grad():
        pipe.dit.weight.add_(1.0)  # an optimizer step moves the student only
    assert teacher.dit.weight.item() == 1.0 and dict(pipe.named_children())["dit"] is pipe.dit


def test_the_recipe_parses_as_written():
    config = config_from_args(ARGS)
    assert (config.model.family, config.train.task) == ("z_image", "trajectory_imitation")
    assert config.lora.lora_checkpoint == "./models/train/Z-Image-Turbo_lora/epoch-4.safetensors"
    assert config.model.lpips_path == trajectory.DEFAULT_LPIPS == "DiffSynth-Studio/ImageMetrics:LPIPS/alexnet.safetensors"


def test_other_families_and_bad_settings_are_refused_by_name():
    qwen = ["--model_id_with_origin_paths", "Qwen/Qwen-Image:transformer/*.safetensors", "--lora_base_model", "dit",
            "--task", "trajectory_imitation"]
    with pytest.raises(ConfigError, match="trajectory_imitation: DiffSynth defines trajectory imitation for "
                                          "Z-Image-Turbo only.*qwen_image family does not implement it"):
        config_from_args(qwen)
    data = config_from_args(ARGS).to_dict()
    data["cache"]["enabled"] = True
    with pytest.raises(ConfigError, match="trajectory_imitation encodes online.*cache.enabled: false"):
        config_from_dict(data)
    data["cache"]["enabled"] = False
    data["model"]["lpips_path"] = "alexnet.safetensors"
    with pytest.raises(ConfigError, match="model.lpips_path 'alexnet.safetensors' is neither an existing file"):
        config_from_dict(data)


def test_the_task_no_longer_says_it_is_unsupported():
    with pytest.raises(ConfigError) as refused:
        config_from_args(["--lora_base_model", "dit", "--task", "direct_distill:train"])
    message = str(refused.value)  # it lists trajectory_imitation among the choices, not among the refused tasks
    assert "'trajectory_imitation']" in message and "LPIPS" not in message.split("]:", 1)[1]


# ------------------------------------------------------------------------------------- training

@pytest.mark.slow
def test_the_tiny_twin_trains_with_a_frozen_teacher(tmp_path, shapes_dataset, monkeypatch):
    from diffsynth.config import preset_params
    from diffsynth.models.tiny import write_tiny_model
    from diffsynth.training.loop import run_training
    from diffsynth.training import module as training_module
    base = tmp_path / "models"
    write_tiny_model("z-image-turbo", base / "diffsynth-tiny" / "Z-Image-Turbo")
    write_tiny_lpips(base / "diffsynth-tiny" / "ImageMetrics" / "LPIPS" / "alexnet.safetensors")
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(base))
    monkeypatch.setenv("DIFFSYNTH_SKIP_DOWNLOAD", "true")
    data = preset_params("tiny/z-image-turbo-trajectory-imitation-lora")
    data["dataset"].update(dataset_base_path=str(shapes_dataset.parent), dataset_metadata_path=str(shapes_dataset))
    data["output"]["output_path"] = str(tmp_path / "out")
    data["sample"]["out_dir"], data["sample"]["prompts"] = str(tmp_path / "samples"), []
    data["tracking"].update(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", enable_csv_log=False)
    data["train"].update(max_steps=2, num_epochs=1)
    data["validation"]["num_samples"] = 1
    seen = []
    loss = training_module.TrainingModule.forward

    def spy(self, items):
        out = loss(self, items)
        seen.append((self.trajectory.last, {n: p.detach().clone() for n, p in self.trajectory.teacher.dit.named_parameters()
                                            if "lora_B" in n}, {n: p.detach().clone() for n, p in
                                                                 self.pipe.dit.named_parameters() if "lora_B" in n}))
        return out
    monkeypatch.setattr(training_module.TrainingModule, "forward", spy)
    result = run_training(config_from_dict(data))
    assert result.steps == 2 and all(math.isfinite(v) for _, v in result.loss_history)
    (first, teacher0, student0), (second, teacher1, student1) = seen
    assert first["trajectory_loss"] > 0 and first["lpips"] >= 0
    # the student moved, the teacher (its copy at the start, LoRA included) did not
    assert teacher0.keys() == student0.keys() and teacher0
    assert all(torch.equal(teacher0[n], teacher1[n]) for n in teacher0)
    assert any(not torch.equal(student0[n], student1[n]) for n in student0)
    assert (tmp_path / "out" / "step-2.safetensors").exists()


def test_the_preset_is_the_recipe_with_only_paths_changed():
    from diffsynth.config import preset_params
    preset = preset_params("z-image-turbo-trajectory-imitation-lora")
    ours = config_from_args(shlex.split(shlex.join(ARGS))).to_dict()
    for section in ("train", "lora", "gradient"):
        for key, value in ours[section].items():
            assert preset[section][key] == value, f"{section}.{key}"
    assert preset["output"]["save_steps"] == 10 and preset["cache"]["enabled"] is False
