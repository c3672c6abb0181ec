"""The encoder cache: cached and online training give the same run; the cached train process never builds the
encoders; bad or foreign caches are named; DiffSynth's split-training command lines and `.pth` files work."""
from __future__ import annotations

import copy
import pickle
import shlex
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffsynth import cache
from diffsynth.command_line import config_from_args
from diffsynth.config import config_from_dict
from diffsynth.errors import ConfigError
from diffsynth.encoding import build_data_cache, build_prompt_cache
from diffsynth.models.tiny import write_tiny_model
from diffsynth.presets import preset_params
from diffsynth.training.loop import Trainer, run_training

REPO = Path(__file__).resolve().parents[1]

# tiny twin -> built-in dataset it trains on
TWINS = {"qwen-image-lora": "shapes", "qwen-image-edit-lora": "shapes_edit", "flux.1-dev-lora": "shapes",
         "wan2.2-ti2v-5b-lora": "moving_shapes"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Every twin's tiny model under one model base, and the built-in datasets."""
    from diffsynth.data.sample_dataset import build_builtin

    base = tmp_path_factory.mktemp("models")
    data = {name: build_builtin(name, tmp_path_factory.mktemp("data") / name) for name in set(TWINS.values())}
    for twin in TWINS:
        model = preset_params(REPO / "presets" / "tiny" / f"{twin}.yaml")["model"]
        model_id = model["model_id_with_origin_paths"].split(":")[0]
        if not (base / model_id).exists():
            write_tiny_model(model["tiny_preset"], base / model_id)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(base))
        mp.setenv("DIFFSYNTH_SKIP_DOWNLOAD", "true")
        yield data


def twin_config(twin: str, world: dict, tmp_path: Path, cached: bool, **train):
    data = copy.deepcopy(preset_params(REPO / "presets" / "tiny" / f"{twin}.yaml"))
    metadata = world[TWINS[twin]]
    data["dataset"].update(dataset_base_path=str(metadata.parent), dataset_metadata_path=str(metadata))
    data["output"]["output_path"] = str(tmp_path / ("cached" if cached else "online"))
    data["tracking"].update(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", enable_csv_log=False)
    data["train"].update({"num_epochs": 1, "max_steps": 3, **train})
    data["validation"]["num_samples"] = 2
    data["sample"].update(out_dir="", prompts=data["sample"]["prompts"][:1])
    data["cache"] = {"enabled": cached, "data_dir": str(tmp_path / "cache" / "data"),
                     "prompts_dir": str(tmp_path / "cache" / "prompts")}
    return config_from_dict(data)


@pytest.mark.slow
@pytest.mark.parametrize("twin", list(TWINS))
def test_cached_and_online_training_are_identical(twin, world, tmp_path):
    online = run_training(twin_config(twin, world, tmp_path, cached=False))
    config = twin_config(twin, world, tmp_path, cached=True)
    metadata = config.dataset.dataset_metadata_path
    build_data_cache(config, metadata, config.cache.data_dir)
    build_prompt_cache(config, metadata, config.cache.prompts_dir)
    cached = run_training(config)
    # encoding is deterministic (VAE mode, no dropout) and cached tensors keep the model dtype bit for bit, and
    # noise/timesteps come from the same seeded generator: the runs match exactly
    assert cached.loss_history == online.loss_history
    assert [m for _, m in cached.val_history] == [m for _, m in online.val_history]
    a, b = load_file(online.checkpoints[-1]), load_file(cached.checkpoints[-1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cached_training_never_builds_the_encoders(world, tmp_path, monkeypatch):
    from diffsynth.models import components

    twin = "qwen-image-lora"
    config = twin_config(twin, world, tmp_path, cached=True, max_steps=1)
    build_data_cache(config, config.dataset.dataset_metadata_path, config.cache.data_dir)
    build_prompt_cache(config, config.dataset.dataset_metadata_path, config.cache.prompts_dir)
    loaded, original = [], components.load_state_dict

    def spy(files, dtype=None):  # every weight file read
        state = original(files, dtype)
        loaded.append(state)
        return state
    monkeypatch.setattr(components, "load_state_dict", spy)
    trainer = Trainer(config)
    result = trainer.run()
    assert result.steps == 1
    keys = [k for state in loaded for k in state]
    assert len(loaded) == 2  # the DiT and the VAE; the text encoder's files were never opened
    assert any(k.startswith("decoder.") for k in keys)
    # the VAE encoder's weights may be read from the file, but none reaches the model: it is an empty shell
    pipe = trainer.pipe
    assert pipe.text_encoder is None
    assert all(p.is_meta for p in pipe.vae.encoder.parameters()) and not any(
        p.is_meta for p in pipe.vae.decoder.parameters())
    assert not any(n.startswith("encoder.") for n, _ in pipe.vae.named_parameters())  # not part of the model


def test_cache_checks_and_errors(world, tmp_path):
    twin = "qwen-image-lora"
    config = twin_config(twin, world, tmp_path, cached=True)
    metadata = config.dataset.dataset_metadata_path
    folder = Path(config.cache.data_dir)
    with pytest.raises(ConfigError, match="index.json is missing"):
        cache.CachedDataset(folder)
    index = build_data_cache(config, metadata, folder)
    assert index["rows"] == len(cache.CachedDataset(folder)) == 32
    assert len(cache.CachedDataset(folder, repeat=3)) == 96  # dataset_repeat re-reads, never re-encodes
    # built from another resolution: named, never used
    other = twin_config(twin, world, tmp_path, cached=True)
    other.resolution.max_pixels = 1024
    with pytest.raises(ConfigError, match="max_pixels: cache 4096 vs params 1024"):
        cache.CachedDataset(folder, expected=cache.fingerprint(other, metadata))
    # a truncated shard is named
    shard = folder / index["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ConfigError, match=f"{shard.name} has 100 bytes"):
        cache.CachedDataset(folder)
    # a crash while building leaves the previous cache (or none), never half of one
    def boom(item):
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        cache.write_cache(folder, boom, [(0, {})], {})
    assert sorted(p.name for p in folder.parent.iterdir()) == ["data"]
    shard.unlink()
    with pytest.raises(ConfigError, match="is missing"):
        cache.CachedDataset(folder)[0]


def test_diffsynth_split_training_command_lines(world, tmp_path):
    """As DiffSynth's split recipes do: step 1 names only the text encoder and the VAE, step 2 only the DiT (the
    recipes as written, for every family: tests/test_split_recipes.py)."""
    metadata = world["shapes"]
    encoders = ("diffsynth-tiny/Qwen-Image:text_encoder/model*.safetensors,"
                "diffsynth-tiny/Qwen-Image:vae/diffusion_pytorch_model.safetensors")
    dit = "diffsynth-tiny/Qwen-Image:transformer/diffusion_pytorch_model*.safetensors"
    common = ("--tokenizer_path diffsynth-tiny/Qwen-Image:tokenizer/ "
              "--lora_base_model dit --lora_target_modules to_q,to_k,to_v --lora_rank 4 --max_pixels 4096 "
              "--torch_dtype float32")
    step1 = config_from_args(shlex.split(
        f"--task sft:data_process --dataset_base_path {metadata.parent} --dataset_metadata_path {metadata} "
        f"--output_path {tmp_path / 'cache'} --model_id_with_origin_paths {encoders} {common}"))
    run_training(step1)
    assert (tmp_path / "cache" / "index.json").exists()
    step2 = config_from_args(shlex.split(
        f"--task sft:train --dataset_base_path {tmp_path / 'cache'} --output_path {tmp_path / 'train'} "
        f"--num_epochs 1 --max_steps 2 --enable_csv_log --model_id_with_origin_paths {dit} {common}"))
    step2.tracking.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_training(step2)
    assert result.steps == 2 and len(load_file(result.checkpoints[-1])) == 2 * 3 * 2  # A, B x 3 targets x 2 blocks
    assert result.val_history  # no VAE, no samples: the validation loss is still logged


def test_diffsynth_pth_files_are_read_with_weights_only(tmp_path):
    rank = tmp_path / "0"
    rank.mkdir()
    torch.save({"input_latents": torch.randn(1, 16, 8, 8), "prompt_emb": torch.randn(1, 5, 32), "height": 64,
                "prompt": "a cat"}, rank / "0.pth")
    dataset = cache.open_cached_dataset(tmp_path, 2, None, {"input_latents": "latents"})
    item = dataset[1]["cached_inputs"]
    assert len(dataset) == 2 and item["latents"].shape == (1, 16, 8, 8) and set(item) == {"latents", "prompt_emb"}

    class Payload:  # anything that needs full unpickling (it could run code) is refused
        def __reduce__(self):
            return (print, ("pwned",))
    with open(rank / "1.pth", "wb") as f:
        pickle.dump({"input_latents": Payload()}, f)
    with pytest.raises(ConfigError, match="refused, it needs full unpickling"):
        cache.open_cached_dataset(tmp_path, 1, None, {})[1]
