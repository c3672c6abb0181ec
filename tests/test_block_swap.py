"""train.blocks_to_swap: LoRA training with N DiT blocks streamed from the host gives bit-identical LoRA weights
to resident training on each family's tiny twin, with and without gradient checkpointing. The CPU run uses the
engine's placement check (a released weight is NaN), so a block used outside its load window poisons the run."""
from __future__ import annotations

import pytest
import torch

from diffsynth.config import config_from_dict
from diffsynth.errors import ConfigError
from diffsynth.models.block_swap import BlockSwapError, enable_block_swap, swap_chain
from diffsynth.models.tiny import write_tiny_model
from diffsynth.presets import preset_params
from diffsynth.training import block_swap as swap_setup
from diffsynth.training.loop import Trainer
from helpers import REPO

# family twin -> (tiny preset written, its folder, dataset fixture, blocks to swap)
TWINS = {"qwen-image-lora": ("qwen-image", "Qwen-Image", "shapes", 1),
         "flux.1-dev-lora": ("flux.1-dev", "FLUX.1-dev", "shapes", 2),  # the double block and one single block
         "wan2.1-t2v-1.3b-lora": ("wan2.1-t2v-1.3b", "Wan2.1-T2V-1.3B", "clips", 1)}


@pytest.fixture(scope="module")
def twin_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("swap_models")
    for preset, folder, _, _ in TWINS.values():
        write_tiny_model(preset, base / "diffsynth-tiny" / folder)
    return base


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    from diffsynth.data.sample_dataset import build_shapes_dataset
    from diffsynth.data.sample_video import build_moving_shapes_dataset
    return {"shapes": build_shapes_dataset(tmp_path_factory.mktemp("d") / "shapes"),
            "clips": build_moving_shapes_dataset(tmp_path_factory.mktemp("d") / "clips")}


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"  # one database: migrations run once


@pytest.fixture()
def env(twin_base, monkeypatch, tracking_uri):
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(twin_base))
    monkeypatch.setenv("DIFFSYNTH_SKIP_DOWNLOAD", "true")
    monkeypatch.setattr(swap_setup, "CHECK_PLACEMENT", True)
    return tracking_uri


def twin(name, tmp_path, metadata, tracking_uri=None, **overrides):
    data = preset_params(REPO / "presets" / "tiny" / f"{name}.yaml")
    data["dataset"].update(dataset_base_path=str(metadata.parent), dataset_metadata_path=str(metadata))
    data["output"]["output_path"] = str(tmp_path / "out")
    data["sample"].update(prompts=[], out_dir=str(tmp_path / "samples"))
    data["tracking"]["uri"] = tracking_uri or f"sqlite:///{tmp_path / 'mlflow.db'}"
    data["train"].update(max_steps=2, num_epochs=1)
    data["validation"]["num_samples"] = 1
    data["cache"]["enabled"] = False
    for key, value in overrides.items():
        section, field = key.split("__")
        data[section][field] = value
    return config_from_dict(data)


def lora_after_training(config) -> tuple[dict, object]:
    trainer = Trainer(config)
    trainer.run()
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return lora, trainer.block_swap


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("name", list(TWINS))
def test_block_swap_gives_bit_identical_lora(name, checkpointing, env, datasets, tmp_path):
    _, _, data, n = TWINS[name]
    runs = {}
    for swap in (0, n):
        config = twin(name, tmp_path / f"swap{swap}", datasets[data], env, train__blocks_to_swap=swap,
                      gradient__use_gradient_checkpointing=checkpointing)
        runs[swap] = lora_after_training(config)
    resident, _ = runs[0]
    swapped, engine = runs[n]
    assert engine is not None and len(engine.swapped) == n
    assert resident.keys() == swapped.keys() and resident
    changed = 0
    for k in resident:
        assert torch.equal(resident[k], swapped[k]), k
        changed += "lora_B" in k and bool(resident[k].abs().sum() > 0)
    assert changed  # the LoRA did train: B moved off its zero start
    # after training every swapped weight is released (NaN under the check)
    assert all(torch.isnan(p.float()).all() for s in engine.swapped for p in s.params)


def test_one_step_moves_twice_the_swapped_bytes_and_releases_on_time(env, datasets, tmp_path):
    """One forward + backward loads each swapped block twice; between uses its weights are released."""
    from diffsynth.families import spec_for
    from diffsynth.training.loop import TrainingModule, configure_trainable
    from diffsynth.training.schedule import FlowMatchSchedule
    config = twin("qwen-image-lora", tmp_path, datasets["shapes"])
    spec = spec_for(config)
    pipe = spec.load_pipeline(config, torch.float32, "cpu")
    module = TrainingModule(pipe, FlowMatchSchedule.for_family(spec.name), torch.Generator().manual_seed(0))
    configure_trainable(module, config, torch.float32)
    chain = swap_chain(pipe.dit)
    engine = enable_block_swap(pipe.dit, len(chain), "cpu", check=True)  # every block swapped
    frozen = sum(p.numel() * p.element_size() for _, b in chain for p in b.parameters() if not p.requires_grad)
    assert engine.swapped_bytes == frozen and engine.planned_transfer_per_step == 2 * frozen
    item = {"image": __import__("PIL.Image", fromlist=["Image"]).new("RGB", (64, 64), "red"), "prompt": "a red square"}
    loss = module([item])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.requires_grad)
    assert engine.bytes_moved == engine.planned_transfer_per_step
    assert all(not s.loaded for s in engine.swapped)
    engine.remove()
    assert all(p.device.type == "cpu" for _, b in chain for p in b.parameters())


def test_refusals_name_the_setting(env, datasets, tmp_path):
    config = twin("qwen-image-lora", tmp_path, datasets["shapes"], env, train__blocks_to_swap=99)
    with pytest.raises(ConfigError, match="train.blocks_to_swap: 99 is not between 1 and"):
        Trainer(config)
    full = torch.nn.Module()
    full.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
    with pytest.raises(BlockSwapError, match="no frozen weights"):
        enable_block_swap(full, 1, "cpu")
    with pytest.raises(BlockSwapError, match="no list of repeated blocks"):
        enable_block_swap(torch.nn.Linear(2, 2), 1, "cpu")


class _Chain(torch.nn.Module):
    def __init__(self, width=64, depth=4):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(width, 2 * width), torch.nn.GELU(),
                                                              torch.nn.Linear(2 * width, width)) for _ in range(depth))
        self.lora = torch.nn.Parameter(torch.full((width,), 0.5))  # something trainable outside the blocks

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x * self.lora)
        return x.pow(2).mean()


def test_disk_offload_maps_the_weights_and_gives_the_same_gradients(tmp_path):
    """Weights memory-mapped from safetensors, paged per block: same loss and gradients as resident weights."""
    from diffsynth.models.disk_offload import enable_disk_offload, write_block_weights
    torch.manual_seed(0)
    resident = _Chain().requires_grad_(False)
    resident.lora.requires_grad_(True)
    path = write_block_weights(resident, tmp_path / "blocks.safetensors")
    with torch.device("meta"):
        mapped = _Chain().requires_grad_(False)
    mapped.lora = torch.nn.Parameter(resident.lora.detach().clone())
    engine = enable_disk_offload(mapped, path, "cpu")
    x = torch.randn(3, 64)
    for model in (resident, mapped):
        model(x).backward()
    assert torch.equal(resident.lora.grad, mapped.lora.grad)
    assert all(p.device.type == "cpu" for p in mapped.parameters())
    assert engine.bytes_moved == engine.planned_transfer_per_step == 2 * path.stat().st_size - 2 * (
        path.stat().st_size - sum(p.numel() * 4 for p in resident.blocks.parameters()))
    with pytest.raises(BlockSwapError, match="has no tensor"):
        with torch.device("meta"):
            other = _Chain(depth=5)
        enable_disk_offload(other.requires_grad_(False), path)


@pytest.mark.slow
def test_block_swap_composes_with_fp8_batches_and_checkpointing_offload(env, datasets, tmp_path):
    """An fp8 base, batches of 2 and checkpointing with its CPU offload: the same LoRA with and without swap."""
    runs = {}
    for swap in (0, 1):
        config = twin("qwen-image-lora", tmp_path / f"swap{swap}", datasets["shapes"], env, train__blocks_to_swap=swap,
                      train__batch_size=2, gradient__use_gradient_checkpointing=True,
                      gradient__use_gradient_checkpointing_offload=True)
        config.model.fp8_models = next(e for e in config.model.model_id_with_origin_paths.split(",")
                                       if "transformer" in e)
        runs[swap] = lora_after_training(config)
    (resident, _), (swapped, engine) = runs[0], runs[1]
    assert engine is not None and resident.keys() == swapped.keys()
    assert all(torch.equal(resident[k], swapped[k]) for k in resident)
    fp8 = [p for s in engine.swapped for p in s.params if p.dtype == torch.float8_e4m3fn]
    assert fp8  # the swapped weights are the fp8 ones
