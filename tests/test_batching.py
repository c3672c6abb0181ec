"""train.batch_size: shape buckets, one batch == the mean of its single-sample steps, batch size 1 == the code
before batching, bucket statistics in the data report and the MLflow run."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from diffsynth.presets import load_preset
from diffsynth.data.buckets import bucket_stats, row_key
from diffsynth.data.dataset import ImageRules, UnifiedDataset
from diffsynth.data.validate import check_dataset
from diffsynth.families import get_spec
from diffsynth.models.tiny import write_tiny_model
from diffsynth.training import FlowMatchSchedule
from diffsynth.training.loop import run_training
from diffsynth.training.module import TrainingModule, configure_trainable
from diffsynth.training.sampler import BucketBatchSampler, EpochShuffleSampler
from helpers import REPO, tiny_config

# ------------------------------------------------------------------------------------------- the sampler

MIXED_KEYS = ["a"] * 7 + ["b"] * 4 + ["c"] + ["d"] * 6  # 18 rows, 4 buckets: remainders 1, 1, 1, 0 at batch 3


def test_batches_stay_in_one_bucket_and_cover_every_row_once():
    keys = [MIXED_KEYS[i] for i in torch.randperm(len(MIXED_KEYS), generator=torch.Generator().manual_seed(1))]
    for epoch in (0, 1):
        batches = BucketBatchSampler(keys, 3, seed=5, epoch=epoch).batches()
        assert all(len({keys[i] for i in batch}) == 1 for batch in batches)   # never mixes shapes
        assert sorted(i for batch in batches for i in batch) == list(range(len(keys)))  # every row, once
        # a bucket's remainder is one smaller last batch: 7 -> 3+3+1, 4 -> 3+1, 1 -> 1, 6 -> 3+3
        sizes = sorted((keys[b[0]], len(b)) for b in batches)
        assert sizes == sorted([("a", 3), ("a", 3), ("a", 1), ("b", 3), ("b", 1), ("c", 1), ("d", 3), ("d", 3)])
    # deterministic given seed and epoch; another epoch is another order
    assert BucketBatchSampler(keys, 3, 5, 0).batches() == BucketBatchSampler(keys, 3, 5, 0).batches()
    assert BucketBatchSampler(keys, 3, 5, 0).batches() != BucketBatchSampler(keys, 3, 5, 1).batches()
    stats = bucket_stats(keys, 3)
    assert (stats["num_buckets"], stats["batches"], stats["padding_batches"]) == (4, 8, 0)
    assert {b["key"]: (b["rows"], b["batches"], b["remainder"]) for b in stats["buckets"]} == {
        "a": (7, 3, 1), "b": (4, 2, 1), "c": (1, 1, 1), "d": (6, 2, 0)}


def test_two_processes_get_disjoint_rows_and_equal_steps():
    keys = MIXED_KEYS
    ranks = [BucketBatchSampler(keys, 3, seed=0, epoch=0, rank=r, world_size=2).batches() for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 4                           # 8 batches: no padding needed
    rows = [{i for batch in batches for i in batch} for batches in ranks]
    assert not rows[0] & rows[1] and rows[0] | rows[1] == set(range(len(keys)))
    # 5 batches (batch 6: 7 -> 6+1, 4, 1, 6): padded by one batch repeating the epoch's first; only it overlaps
    ranks = [BucketBatchSampler(keys, 6, seed=0, epoch=0, rank=r, world_size=2) for r in (0, 1)]
    assert ranks[0].per_rank == ranks[1].per_rank == 3
    everything = BucketBatchSampler(keys, 6, seed=0, epoch=0).batches()
    assert len(everything) == 5 and ranks[1].batches()[-1] == everything[0]
    rows = [{i for batch in ranks[0].batches() for i in batch}, {i for batch in ranks[1].batches()[:2] for i in batch}]
    assert not rows[0] & rows[1] and rows[0] | rows[1] == set(range(len(keys)))
    assert ranks[0].samples_in_step(2) == len(everything[4]) + len(everything[0])  # both processes' samples


def test_batch_size_one_is_the_previous_order_and_resume_continues_it():
    for world in (1, 2):
        for rank in range(world):
            old = list(EpochShuffleSampler(13, 3, 2, rank, world))
            new = BucketBatchSampler(["any"] * 13, 1, 3, 2, rank, world).batches()
            assert new == [[i] for i in old]
    full = BucketBatchSampler(MIXED_KEYS, 2, 0, 0).batches()
    assert list(BucketBatchSampler(MIXED_KEYS, 2, 0, 0, start=4)) == full[4:]


@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory):
    """8 rows at three aspect ratios (three trained shapes under max_pixels 4096) and varied prompts."""
    folder = tmp_path_factory.mktemp("mixed")
    sizes = [(128, 128), (96, 64), (64, 96), (128, 128), (96, 64), (128, 128), (64, 96), (96, 64)]
    lines = ["image,prompt"]
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (30 * i, 200 - 20 * i, 90)).save(folder / f"{i}.png")
        lines.append(f"{i}.png,a {'very ' * i}colourful image number {i}")
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    return folder / "metadata.csv"


def test_bucket_keys_from_headers_match_validation_and_loaded_shapes(tmp_path, mixed_dataset, tiny_env):
    config = tiny_config(tmp_path, mixed_dataset, train__batch_size=3)
    rules = ImageRules(4096, height_factor=16, width_factor=16)
    report = check_dataset(config, 16, tmp_path / "m.jsonl", tmp_path / "data.json", tmp_path / "plot.csv")
    dataset = UnifiedDataset(mixed_dataset.parent, mixed_dataset, ["image"], rules)
    keys = [row_key(row, dataset.base_path, ["image"], (), rules) for row in dataset.rows]
    assert keys == report.row_keys and len(set(keys)) == 3
    # the data report carries the statistics: 3 buckets of 3, 3, 2 rows -> 1+1+1 batches at batch size 3
    buckets = json.loads((tmp_path / "data.json").read_text())["buckets"]
    assert buckets["batch_size"] == 3 and buckets["num_buckets"] == 3 and buckets["batches"] == 3
    assert sorted(b["rows"] for b in buckets["buckets"]) == [2, 3, 3]
    for batch in BucketBatchSampler(keys, 2, 0, 0).batches():  # the images each batch loads have one size
        assert len({dataset[i]["image"].size for i in batch}) == 1


# ------------------------------------------------------------------------------------------- batch == mean

@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    base = tmp_path_factory.mktemp("twins")
    for preset, folder in (("qwen-image", "Qwen-Image"), ("qwen-image-edit", "Qwen-Image-Edit"),
                           ("flux.1-dev", "FLUX.1-dev"), ("wan2.2-ti2v-5b", "Wan2.2-TI2V-5B"),
                           ("wan2.1-i2v-14b", "Wan2.1-I2V-14B-480P"), ("flux.2-klein-4b", "FLUX.2-klein-4B")):
        write_tiny_model(preset, base / "diffsynth-tiny" / folder)
    return base


def twin_module(preset: str) -> TrainingModule:
    """The tiny twin of a preset with LoRA, LoRA weights random so that every LoRA tensor gets a gradient."""
    config = load_preset(REPO / "presets" / "tiny" / f"{preset}.yaml")
    spec = get_spec(config.model.family)
    torch.manual_seed(0)
    pipe = spec.load_pipeline(config, torch.float32)
    module = TrainingModule(pipe, FlowMatchSchedule.for_family(spec.name), torch.Generator())
    configure_trainable(module, config, torch.float32)
    for p in module.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    return module


def frames(seed: int, n: int = 5, size: int = 32) -> list[Image.Image]:
    g = torch.Generator().manual_seed(seed)
    return [Image.fromarray(torch.randint(0, 255, (size, size, 3), generator=g, dtype=torch.uint8).numpy())
            for _ in range(n)]


PROMPTS = ["a red circle", "a large blue square with a thin green border on a black background, seen from above"]


def batch_items(preset: str) -> list[dict]:
    if preset.startswith("wan"):
        return [{"video": frames(i), "prompt": p} for i, p in enumerate(PROMPTS)]
    prompts = PROMPTS + ["a cat"] if preset.startswith("qwen") else PROMPTS  # three prompt lengths for Qwen
    items = [{"image": frames(i, 1, 64)[0], "prompt": p} for i, p in enumerate(prompts)]
    if "edit" in preset:
        for i, item in enumerate(items):
            item["edit_image"] = frames(10 + i, 1, 64)[0]
    return items


# fp32 on CPU; a batch changes the matmul shapes and the reduction order, nothing else
RTOL, ATOL = 1e-4, 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["qwen-image-lora", "qwen-image-edit-lora", "flux.1-dev-lora",
                                    "wan2.2-ti2v-5b-lora", "wan2.1-i2v-14b-lora", "flux.2-klein-4b-lora"])
def test_a_batch_is_the_mean_of_its_single_sample_steps(preset, twins, monkeypatch):
    """Same rows, same generator: sample i of the batch draws the timestep and noise the i-th single step
    draws, so loss and gradients must agree with the mean of the single steps up to float rounding."""
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(twins))
    module = twin_module(preset)
    items = batch_items(preset)
    seen = []
    predict = module.pipe.predict
    monkeypatch.setattr(module.pipe, "predict", lambda x, t, inputs: seen.append(t.clone()) or predict(x, t, inputs))

    module.generator.manual_seed(11)
    losses, grads = [], []
    for item in items:
        module.zero_grad()
        loss = module([item])
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad})
    module.generator.manual_seed(11)
    module.zero_grad()
    loss = module(items)
    loss.backward()

    assert torch.equal(seen[-1], torch.cat(seen[:-1])) and len(set(seen[-1].tolist())) == len(items)
    torch.testing.assert_close(loss.detach(), torch.stack(losses).mean(), rtol=RTOL, atol=ATOL)
    nonzero = 0
    for name, p in module.named_parameters():
        if p.requires_grad:
            expected = torch.stack([g[name] for g in grads]).mean(0)
            nonzero += bool(expected.abs().max() > 0)  # zero: modules whose output the loss never uses
            torch.testing.assert_close(p.grad, expected, rtol=RTOL, atol=ATOL, msg=name)
    assert nonzero > 0.8 * len(grads[0])
    if preset.startswith("qwen"):  # the prompts were padded, and the padding is masked
        batch = module.pipe.collate([module.encode(item) for item in items])
        lengths = batch["prompt_emb_mask"].sum(1).tolist()
        assert len(set(lengths)) == len(items) and max(lengths) == batch["prompt_emb"].shape[1]


@pytest.mark.slow
def test_padding_does_not_change_the_qwen_prediction(twins, monkeypatch):
    """diffusers' QwenImageTransformer2DModel masks padded text tokens out of the joint attention."""
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(twins))
    pipe = twin_module("qwen-image-lora").pipe
    one = pipe.encode({"image": frames(0, 1, 64)[0], "prompt": PROMPTS[0]})
    other = pipe.encode({"image": frames(1, 1, 64)[0], "prompt": PROMPTS[1]})
    batch = pipe.collate([one, other])
    assert batch["prompt_emb"].shape[1] > one["prompt_emb"].shape[1]
    x = torch.randn(1, *one["latents"].shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        alone = pipe.predict(x, torch.tensor([500.0]), one)
        padded = pipe.predict(torch.cat([x, x]), torch.tensor([500.0, 500.0]), batch)[:1]
        unmasked = pipe.predict(torch.cat([x, x]), torch.tensor([500.0, 500.0]),
                                {**batch, "prompt_emb_mask": torch.ones_like(batch["prompt_emb_mask"])})[:1]
    torch.testing.assert_close(padded, alone, rtol=RTOL, atol=ATOL)
    assert not torch.allclose(unmasked, alone, rtol=RTOL, atol=ATOL)  # without the mask the padding would count


# ------------------------------------------------------------------------------------------- whole runs

def per_sample_reference(config) -> dict[str, torch.Tensor]:
    """The code before batching (main at 481bfd3), written out as a plain loop: DiffSynth's one-item steps in
    the seeded epoch order, each drawing its timestep then its noise from the seeded generator, the weighted
    MSE of the velocity, backward, AdamW, no clipping, constant lr. Returns the trained tensors as the
    checkpoint names them. Shares with the trainer only what batching did not touch: model loading, LoRA
    injection, the dataset, the family's encode/predict and the sigma grid."""
    import torch.nn.functional as F

    from diffsynth.data.dataset import metadata_dataset
    from diffsynth.families import spec_for
    from diffsynth.config import torch_dtype

    t_cfg, dtype = config.train, torch_dtype(config.model.torch_dtype)
    assert (t_cfg.lr_scheduler, t_cfg.max_grad_norm, config.gradient.gradient_accumulation_steps) == \
        ("constant", None, 1), "the loop below is written for these params"
    torch.manual_seed(t_cfg.seed)  # LoRA's initialisation draws from it, as in the trainer
    spec = spec_for(config)
    pipe = spec.load_pipeline(config, dtype, "cpu", "full")
    schedule = FlowMatchSchedule.for_family(spec.name)
    generator = torch.Generator().manual_seed(t_cfg.seed)
    holder = TrainingModule(pipe, schedule, generator)  # names parameters pipe.<model>.<...>, as DiffSynth
    trainable = configure_trainable(holder, config, dtype)
    for child in pipe.children():  # DiffSynth: the trained model in train mode, frozen encoders in eval
        child.train(any(p.requires_grad for p in child.parameters()))
    params = dict(holder.named_parameters())
    optimizer = torch.optim.AdamW([params[n] for n in trainable], lr=t_cfg.learning_rate,
                                  weight_decay=t_cfg.weight_decay, fused=t_cfg.fused_optimizer or None)
    dataset = metadata_dataset(config, config.dataset.dataset_metadata_path, spec.data_rules(config))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(t_cfg.seed)).tolist()  # epoch 0
    for index in order[:t_cfg.max_steps]:
        inputs = pipe.encode(dataset[index])
        latents = inputs["latents"]
        t, sigma, weight = schedule.sample(generator, t_cfg.min_timestep_boundary, t_cfg.max_timestep_boundary)
        noise = torch.randn(latents.shape, generator=generator).to(latents.dtype)
        pred = pipe.predict((1 - sigma) * latents + sigma * noise, t, inputs)
        loss = F.mse_loss(pred.float(), (noise - latents).float()) * weight
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    prefix = config.output.remove_prefix_in_ckpt or ""
    return {n[len(prefix):] if n.startswith(prefix) else n: params[n].detach().clone() for n in trainable}


@pytest.mark.slow
def test_batch_size_one_reproduces_the_checkpoint_of_the_code_before_batching(tmp_path, shapes_dataset, tiny_env):
    """The tiny default (the shipped params.yaml) for 5 steps, seed 0, at train.batch_size 1: the trainer's
    checkpoint equals, bit for bit, the per-sample loop's (computed here, in this process: floats differ
    between CPUs, so no digest recorded on another machine is compared)."""
    from safetensors.torch import load_file

    config = tiny_config(tmp_path, shapes_dataset, train__max_steps=5, validation__num_samples=1,
                         sample__prompts=[])
    assert config.train.batch_size == 1
    run_training(config)
    trained = load_file(str(tmp_path / "out" / "epoch-0.safetensors"))
    reference = per_sample_reference(config)
    assert sorted(trained) == sorted(reference) and len(trained) == 34
    for name, tensor in trained.items():
        assert torch.equal(tensor, reference[name]), f"{name}: max diff {(tensor - reference[name]).abs().max()}"
    # the 5 steps moved the LoRA (lora_B starts at zero; it stays so only where the loss never reaches): the
    # comparison is not between two untrained copies
    moved = [bool(t.abs().max() > 0) for n, t in trained.items() if "lora_B" in n]
    assert sum(moved) > len(moved) / 2, moved


@pytest.mark.slow
def test_batched_run_logs_samples_optimizer_steps_and_buckets(tmp_path, mixed_dataset, tiny_env):
    config = tiny_config(tmp_path, mixed_dataset, train__batch_size=3, train__num_epochs=2,
                         gradient__gradient_accumulation_steps=2, validation__num_samples=1, sample__prompts=[],
                         tracking__enable_csv_log=True)
    result = run_training(config)
    assert result.steps == 6  # 3 buckets (3, 3, 2 rows) -> 3 batches per epoch, 2 epochs
    rows = [line.split(",") for line in (tmp_path / "out/loss.csv").read_text().splitlines()[1:]]
    series = {key: [float(v) for _, k, v in rows if k == key] for key in ("samples_seen", "optimizer_step")}
    assert series["optimizer_step"] == [0, 1, 1, 2, 2, 3]
    seen = series["samples_seen"]
    assert seen[2] == 8 and seen[-1] == 16 and sorted(b - a for a, b in zip([0] + seen, seen)) == [2, 2, 3, 3, 3, 3]
    buckets = json.loads((tmp_path / "out/buckets.json").read_text())
    assert buckets["num_buckets"] == 3 and buckets["batches"] == 3
    import mlflow
    client = mlflow.MlflowClient(tracking_uri=config.tracking.uri)
    assert "data/buckets.json" in [a.path for a in client.list_artifacts(result.run_id, "data")]
    assert client.get_run(result.run_id).data.tags["batches_per_epoch"] == "3"
