"""Issue 21's data options: the folder source, trigger word, caption dropout (the empty prompt, encoded once),
several datasets with their own repeats/size/weight, per-sample masks (masked loss) and video frame sampling."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffsynth import cache
from diffsynth.data.dataset import metadata_dataset
from diffsynth.data.masks import latent_mask
from diffsynth.data.recipe import apply_trigger, caption_dropped, data_recipe
from diffsynth.data.validate import check_dataset
from diffsynth.data.video import frame_indices, load_video_frames
from diffsynth.errors import ConfigError
from diffsynth.families import spec_for
from diffsynth.training.loss import flow_match_loss, per_sample_mse

from helpers import tiny_config


def _image(path: Path, size=(64, 64), color=(200, 40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _validate(config, tmp_path: Path) -> tuple[dict, list[dict]]:
    out = tmp_path / "validated"
    out.mkdir(exist_ok=True)
    report = check_dataset(config, metadata_out=out / "metadata.jsonl", report_out=out / "data.json",
                           plot_out=out / "res.csv", **spec_for(config).data_rules(config).as_kwargs())
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()] \
        if (out / "metadata.jsonl").exists() else []
    return report.to_dict(), rows


def _folder_config(tmp_path: Path, folder: Path, **overrides):
    return tiny_config(tmp_path, folder / "unused.csv", dataset__source="folder", **overrides)


# ------------------------------------------------------------------------------------------ folder + trigger

def test_folder_source_finds_nested_files_and_their_captions(tmp_path):
    root = tmp_path / "imgs"
    _image(root / "cats" / "001.png")
    (root / "cats" / "001.txt").write_text("a cat on a sofa\n")
    _image(root / "cats" / "deep" / "002.jpg")
    (root / "cats" / "deep" / "002.txt").write_text("a [trigger] cat")
    _image(root / "dogs" / "003.png")                      # no caption
    _image(root / "cats" / "001_mask.png")                  # a mask, not a sample
    (root / "notes.md").write_text("not data")
    report, rows = _validate(_folder_config(tmp_path, root), tmp_path)
    assert [r["image"] for r in rows] == ["cats/001.png", "cats/deep/002.jpg", "dogs/003.png"]
    assert [r["prompt"] for r in rows] == ["a cat on a sofa", "a [trigger] cat", ""]
    assert report["valid_rows"] == 3
    assert any("dogs/003.png" in w["reason"] and "empty caption" in w["reason"] for w in report["warnings"])
    # missing_caption: error makes the file a row problem that names it
    report, rows = _validate(_folder_config(tmp_path, root, dataset__missing_caption="error"), tmp_path)
    assert report["invalid_rows"] == 1 and len(rows) == 2  # the data stage stops (on_invalid: error)
    assert "dogs/003.png has no caption file" in report["problems"][0]["reason"]
    # the trigger word: substituted for [trigger], else prepended (the empty caption becomes the trigger alone)
    _, rows = _validate(_folder_config(tmp_path, root, dataset__trigger_word="sks"), tmp_path)
    assert [r["prompt"] for r in rows] == ["sks a cat on a sofa", "a sks cat", "sks"]


def test_trigger_word_rule():
    assert apply_trigger("photo of [trigger], [trigger] smiling", "ohwx") == "photo of ohwx, ohwx smiling"
    assert apply_trigger("a dog", "ohwx") == "ohwx a dog"
    assert apply_trigger("", "ohwx") == "ohwx"
    assert apply_trigger("a dog [trigger]", "") == "a dog [trigger]"


# ------------------------------------------------------------------------------------------ several datasets

def test_each_dataset_has_its_own_repeats_size_and_weight(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(2):
        _image(a / f"{i}.png", (64, 64))
        (a / f"{i}.txt").write_text(f"a {i}")
    for i in range(3):
        _image(b / "sub" / f"{i}.png", (64, 48))
        (b / "sub" / f"{i}.txt").write_text(f"b {i}")
    datasets = [{"source": "folder", "dataset_base_path": str(a), "dataset_repeat": 3, "max_pixels": 1024,
                 "trigger_word": "aaa"},
                {"source": "folder", "dataset_base_path": str(b), "weight": 0.25}]
    config = _folder_config(tmp_path, a, dataset__datasets=datasets, train__batch_size=2)
    report, rows = _validate(config, tmp_path)
    assert [r["_dataset"] for r in rows] == [0, 0, 1, 1, 1]
    assert [r["prompt"] for r in rows] == ["aaa a 0", "aaa a 1", "b 0", "b 1", "b 2"]  # trigger of dataset 0 only
    assert report["buckets"]["rows"] == 2 * 3 + 3  # the bucket report counts each repeat
    dataset = metadata_dataset(config, tmp_path / "validated" / "metadata.jsonl", spec_for(config).data_rules(config))
    assert len(dataset) == 9 and [r["_dataset"] for r in dataset.rows] == [0, 0, 0, 0, 0, 0, 1, 1, 1]
    items = [dataset[i] for i in range(len(dataset))]
    assert {it["image"].size for it in items[:6]} == {(32, 32)}     # max_pixels 1024 of dataset 0
    assert {it["image"].size for it in items[6:]} == {(64, 48)}     # the default 4096 of dataset 1
    assert [it["loss_weight"] for it in items] == [1.0] * 6 + [0.25] * 3
    assert dataset.bucket_keys() == ["image=32x32"] * 6 + ["image=64x48"] * 3
    # the encoder cache sees the same datasets: rows once each, repeats and weights when read
    folder = tmp_path / "cache"
    once = metadata_dataset(config, tmp_path / "validated" / "metadata.jsonl", spec_for(config).data_rules(config),
                            repeat=1, each_row_once=True)
    cache.write_cache(folder, lambda item: {"latents": torch.zeros(1, 4, *item["image"].size[::-1])},
                      ((i, once[i]) for i in range(len(once.rows))), {})
    cached = cache.CachedDataset(folder, recipe=data_recipe(config))
    assert len(cached) == 9 and len(json.loads((folder / "index.json").read_text())["samples"]) == 5
    assert [float(cached[i]["cached_inputs"]["loss_weight"]) for i in range(9)] == [1.0] * 6 + [0.25] * 3
    # the weight multiplies the sample's loss exactly
    inputs = {"latents": torch.randn(2, 4, 4, 4)}
    loss = lambda extra: flow_match_loss(_Echo(), _FixedSchedule(), {**inputs, **extra}, torch.Generator().manual_seed(0))
    assert torch.allclose(loss({"loss_weight": torch.tensor([0.25, 0.25])}), loss({}) * 0.25)
    with pytest.raises(ConfigError, match=r"dataset.datasets\[0\]: unknown key\(s\) \['repeats'\]"):
        _folder_config(tmp_path, a, dataset__datasets=[{"dataset_base_path": str(a), "repeats": 2}])


# ------------------------------------------------------------------------------------------ masked loss

class _Echo:
    """A denoiser whose prediction is ``scale * noisy``: the gradient reaches ``scale`` element by element."""

    def __init__(self, shape=None):
        self.scale = torch.ones(shape, requires_grad=True) if shape else torch.tensor(1.0)

    def predict(self, noisy, t, inputs):
        return noisy * self.scale


class _FixedSchedule:
    def sample(self, generator, lo, hi):
        return torch.tensor([500.0]), torch.tensor([0.5]), torch.tensor([1.0])


@pytest.mark.parametrize("latent_shape", [(1, 3, 8, 8), (1, 3, 2, 8, 8)], ids=["image", "video"])
def test_masked_pixels_give_zero_gradient(latent_shape):
    mask_image = Image.new("L", (64, 64), 255)
    mask_image.paste(0, (0, 0, 32, 64))  # the left half is masked out
    latents = torch.randn(latent_shape)
    mask = latent_mask(mask_image, latents)
    assert mask.shape == (1, 1) + (1,) * (len(latent_shape) - 4) + (8, 8)
    assert mask[..., :4].abs().sum() == 0 and torch.all(mask[..., 4:] == 1)
    pipe = _Echo(latent_shape)
    loss = per_sample_mse(pipe, {"latents": latents, "loss_mask": mask}, torch.randn(latent_shape),
                          torch.tensor([500.0]), torch.tensor([0.5])).sum()
    loss.backward()
    assert torch.all(pipe.scale.grad[..., :4] == 0) and torch.all(pipe.scale.grad[..., 4:] != 0)
    # without a mask every element teaches
    pipe = _Echo(latent_shape)
    per_sample_mse(pipe, {"latents": latents}, torch.randn(latent_shape), torch.tensor([500.0]),
                   torch.tensor([0.5])).sum().backward()
    assert torch.all(pipe.scale.grad != 0)


@pytest.mark.slow
def test_masks_are_validated_cached_and_train_the_same_online_and_cached(tiny_env, tmp_path):
    from diffsynth.encoding import build_data_cache, build_prompt_cache
    from diffsynth.training.loop import run_training

    root = tmp_path / "imgs"
    for i in range(4):
        _image(root / f"{i}.png", color=(60 * i, 100, 200))
        (root / f"{i}.txt").write_text(f"shape {i}")
    mask = Image.new("L", (64, 64), 255)
    mask.paste(0, (0, 0, 32, 64))
    mask.save(root / "0_mask.png")
    Image.new("L", (32, 32), 255).save(root / "1_mask.png")  # wrong size: the row is invalid
    common = dict(dataset__masked_loss=True, dataset__on_invalid="skip", train__max_steps=2, train__num_epochs=1,
                  validation__num_samples=1, sample__prompts=["x"], tracking__enable_csv_log=False)
    report, rows = _validate(_folder_config(tmp_path, root, **common), tmp_path)
    assert report["invalid_rows"] == 1 and "masks must have the size of their image" in report["problems"][0]["reason"]
    assert [(r["image"], r["_mask"]) for r in rows] == [("0.png", "0_mask.png"), ("2.png", None), ("3.png", None)]
    metadata = str(tmp_path / "validated" / "metadata.jsonl")
    cached_cfg = _folder_config(tmp_path, root, cache__enabled=True, cache__data_dir=str(tmp_path / "c" / "data"),
                                cache__prompts_dir=str(tmp_path / "c" / "prompts"),
                                output__output_path=str(tmp_path / "cached"), **common)
    build_data_cache(cached_cfg, metadata, cached_cfg.cache.data_dir)
    build_prompt_cache(cached_cfg, metadata, cached_cfg.cache.prompts_dir)
    rows_cached = cache.CachedDataset(cached_cfg.cache.data_dir)
    m0 = rows_cached[0]["cached_inputs"]["loss_mask"]  # the mask went through the cache, on the latent grid
    assert m0.shape[-2:] == rows_cached[0]["cached_inputs"]["latents"].shape[-2:]
    half = m0.shape[-1] // 2
    assert m0[..., :half].sum() == 0 and torch.all(m0[..., half:] == 1)
    assert torch.all(rows_cached[1]["cached_inputs"]["loss_mask"] == 1)  # no mask: all ones
    cached = run_training(cached_cfg, metadata_path=metadata)
    online = run_training(_folder_config(tmp_path, root, output__output_path=str(tmp_path / "online"), **common),
                          metadata_path=metadata)
    assert cached.loss_history == online.loss_history and len(online.loss_history) == 2


# ------------------------------------------------------------------------------------------ caption dropout

@pytest.mark.slow  # ~10-50 s: loads the tiny encoders and encodes 12 rows
def test_dropped_captions_are_the_empty_prompt_encoded_once(tiny_env, shapes_dataset, tmp_path):
    from diffsynth.encoding import build_data_cache, load_encoders

    lines = shapes_dataset.read_text().splitlines()
    metadata = tmp_path / "first12.csv"  # 12 rows: enough draws, a fast test
    base = str(shapes_dataset.parent)
    metadata.write_text("\n".join(lines[:13]) + "\n")
    config = tiny_config(tmp_path, metadata, dataset__dataset_base_path=base, dataset__caption_dropout=0.5,
                         cache__enabled=True,
                         cache__data_dir=str(tmp_path / "cache"))
    pipe = load_encoders(config)
    index = build_data_cache(config, str(metadata), config.cache.data_dir, pipe=pipe, progress=None)
    assert index["rows"] == 12 and index["null_prompt"]["layout"] == {"prompt_emb": "tensor"}  # stored once
    online = metadata_dataset(config, metadata, spec_for(config).data_rules(config))
    empty = pipe.encode({**online[0], "prompt": ""})["prompt_emb"]
    expected = cache.fingerprint(config, metadata)

    def dropped_rows(dataset, epoch):
        dataset.set_epoch(epoch)
        out = []
        for i in range(len(dataset)):
            emb = dataset[i]["cached_inputs"]["prompt_emb"]
            own = dataset.load(i)["cached_inputs"]["prompt_emb"]
            assert torch.equal(emb, empty) or torch.equal(emb, own)
            out.append(emb.shape == empty.shape and torch.equal(emb, empty))
        return out

    ds = cache.CachedDataset(config.cache.data_dir, 1, expected, data_recipe(config))
    assert [ds[i]["cached_inputs"]["prompt_emb"].shape for i in range(2)] == \
        [ds.load(i)["cached_inputs"]["prompt_emb"].shape for i in range(2)]  # before an epoch: never dropped
    epoch0 = dropped_rows(ds, 0)
    assert 0 < sum(epoch0) < 12
    assert epoch0 == [caption_dropped(0.5, config.train.seed, 0, i) for i in range(12)]
    # a resumed run (a new dataset object) draws the same; another epoch draws anew
    assert dropped_rows(cache.CachedDataset(config.cache.data_dir, 1, expected, data_recipe(config)), 0) == epoch0
    assert dropped_rows(ds, 1) != epoch0
    # online training drops the same samples, to the empty prompt
    online.set_epoch(0)
    assert [online[i]["prompt"] == "" for i in range(12)] == epoch0
    # a cache built without dropout is refused by name rather than silently never dropping
    index_file = Path(config.cache.data_dir) / "index.json"
    index_file.write_text(json.dumps({k: v for k, v in json.loads(index_file.read_text()).items()
                                      if k != "null_prompt"}))
    with pytest.raises(ConfigError, match="no empty-prompt encoding"):
        cache.CachedDataset(config.cache.data_dir, 1, None, data_recipe(config))


# ------------------------------------------------------------------------------------------ frame sampling

def test_frame_indices_of_each_mode(tmp_path):
    assert frame_indices(100, 5, "first") == [0, 1, 2, 3, 4]
    assert frame_indices(100, 5, "uniform") == [0, 25, 50, 74, 99]
    start = frame_indices(100, 5, "random", seed=3, key="clip.mp4")
    assert start == list(range(start[0], start[0] + 5)) and 0 <= start[0] <= 95
    assert frame_indices(100, 5, "random", seed=3, key="clip.mp4") == start  # fixed per clip and seed
    assert {frame_indices(100, 5, "random", seed=s, key="clip.mp4")[0] for s in range(10)} != {start[0]}
    assert frame_indices(5, 5, "uniform") == frame_indices(5, 5, "random") == [0, 1, 2, 3, 4]
    # through the loader: a GIF whose frame i has grey level 10*i
    frames = [Image.new("RGB", (16, 16), (10 * i,) * 3) for i in range(20)]
    gif = tmp_path / "clip.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=40, loop=0)
    got = lambda mode: [f.getpixel((0, 0))[0] // 10 for f in load_video_frames(str(gif), 5, sampling=mode, seed=1)]
    assert got("first") == [0, 1, 2, 3, 4]
    assert got("uniform") == [0, 5, 10, 14, 19]
    assert got("random") == frame_indices(20, 5, "random", seed=1, key=str(gif))


# ------------------------------------------------------------------------------------------ dvc repro

@pytest.mark.slow
def test_a_captioned_image_folder_trains_through_dvc_repro_with_only_params_changed(tmp_path_factory):
    import yaml
    from test_pipeline_dvc import copy_repo, dvc

    root = copy_repo(tmp_path_factory.mktemp("repo"))
    folder = root / "my_images"  # a kohya / ai-toolkit style folder: images and same-name .txt captions
    for i, (sub, color) in enumerate([("red", (220, 30, 30)), ("red", (200, 40, 40)), ("blue/dark", (20, 20, 160)),
                                      ("blue", (40, 60, 230))]):
        _image(folder / sub / f"img{i}.png", color=color)
        (folder / sub / f"img{i}.txt").write_text(f"a [trigger] {sub.split('/')[0]} square")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["dataset"].update(source="folder", dataset_base_path="my_images", trigger_word="ohwx")
    params["train"]["num_epochs"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = dvc(root, "repro")
    for stage in ("data", "cache", "train", "export"):
        assert f"Running stage '{stage}'" in log
    rows = [json.loads(line) for line in (root / "outputs/data/metadata.jsonl").read_text().splitlines()]
    assert [(r["image"], r["prompt"]) for r in rows] == [
        ("blue/dark/img2.png", "a ohwx blue square"), ("blue/img3.png", "a ohwx blue square"),
        ("red/img0.png", "a ohwx red square"), ("red/img1.png", "a ohwx red square")]
    assert json.loads((root / "outputs/cache/data/index.json").read_text())["rows"] == 4
    assert json.loads((root / "outputs/train/metrics.json").read_text())["steps"] == 4
    assert (root / "outputs/export/pytorch_lora_weights.safetensors").exists()
