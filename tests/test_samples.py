"""Save-point samples with per-prompt settings (sample.prompts mappings): an entry's image reaches the sample
conditioning of the edit, Kontext and image-to-video families; cfg_scale != 1 is DiffSynth's classifier-free
guidance with the negative prompt; plain prompt strings render as before; the prompt cache holds the negatives and
notices a replaced image; bad entries are refused by name; the samples table carries the settings."""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from diffsynth import cache
from diffsynth.config import config_from_dict
from diffsynth.data.dataset import ImageRules
from diffsynth.data.operators import load_image_cell
from diffsynth.encoding import build_prompt_cache
from diffsynth.errors import ConfigError
from diffsynth.families import spec_for
from diffsynth.models.tiny import write_tiny_model
from diffsynth.presets import preset_params
from diffsynth.sampling import entry_inputs, guided_velocity, sample_entries
from diffsynth.training.evaluation import Evaluator, render_samples
from helpers import DEFAULT_PARAMS

REPO = Path(__file__).resolve().parents[1]
PRESETS = {"edit": "qwen-image-edit-lora", "kontext": "flux.1-kontext-dev-lora", "i2v": "wan2.1-i2v-14b-lora"}
SIZE = {"edit": (32, 32, 1), "kontext": (32, 32, 1), "i2v": (32, 32, 5)}  # height, width, num_frames


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The three tiny twins under one model base, and two different conditioning images."""
    base = tmp_path_factory.mktemp("models")
    for preset in PRESETS.values():
        model = preset_params(REPO / "presets" / "tiny" / f"{preset}.yaml")["model"]
        write_tiny_model(model["tiny_preset"], base / model["model_id_with_origin_paths"].split(":")[0])
    images = tmp_path_factory.mktemp("images")
    for name, colour, box in (("red", (220, 30, 30), (4, 4, 40, 40)), ("blue", (30, 30, 220), (20, 10, 60, 50))):
        image = Image.new("RGB", (64, 64), (250, 250, 250))
        ImageDraw.Draw(image).ellipse(box, fill=colour)
        image.save(images / f"{name}.png")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(base))
        mp.setenv("DIFFSYNTH_SKIP_DOWNLOAD", "true")
        yield {"red": str(images / "red.png"), "blue": str(images / "blue.png"), "dir": images}


def make_config(name: str, prompts: list, **sample):
    data = copy.deepcopy(preset_params(REPO / "presets" / "tiny" / f"{PRESETS[name]}.yaml"))
    data["dataset"]["dataset_metadata_path"] = ""  # no first row: only an entry's images condition the samples
    h, w, frames = SIZE[name]
    data["sample"].update({"prompts": prompts, "height": h, "width": w, "num_frames": frames,
                           "num_inference_steps": 2, "seeds": [0], "out_dir": "", **sample})
    return config_from_dict(data)


@pytest.fixture(scope="module")
def pipes(world):
    loaded = {}
    for name in PRESETS:
        config = make_config(name, ["x"])
        loaded[name] = spec_for(config).load_pipeline(config, torch.float32)
    return loaded


@contextlib.contextmanager
def raw_latents(pipe):
    """Samples as the latents before decoding: the random tiny decoders saturate (all-black images), the latents
    show every difference."""
    pipe.decode = lambda latents: latents
    try:
        yield
    finally:
        del pipe.decode


def family_encoding(name: str, pipe, image, config) -> dict:
    """What the family's own encoder makes of a conditioning image (the reference for the sample conditioning)."""
    s = config.sample
    if name == "edit":
        return pipe.edit_inputs("make it green", image)
    if name == "kontext":
        return {"kontext_latents": pipe.encode_references(image)}
    return pipe.image_inputs(image, s.num_frames, s.height, s.width)


def same(a, b) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a.shape == b.shape and torch.equal(a, b)


# ------------------------------------------------------------------------------- an entry's image conditions

@pytest.mark.parametrize("name", list(PRESETS))
def test_an_entrys_image_is_the_sample_conditioning(name, pipes, world):
    pipe = pipes[name]
    config = make_config(name, [{"prompt": "make it green", "images": world["red"]},
                                {"prompt": "make it green", "images": world["blue"], "seeds": [0]}])
    first, second = sample_entries(config, type(pipe))
    red, _ = entry_inputs(pipe, config, first)
    blue, _ = entry_inputs(pipe, config, second)
    rules = spec_for(config).data_rules(config)
    r = config.resolution
    loaded = load_image_cell(".", world["red"], ImageRules(r.max_pixels, r.height, r.width, rules.size_factor,
                                                           rules.width_factor))
    expected = family_encoding(name, pipe, loaded, config)
    assert expected and all(same(red[k], v) for k, v in expected.items())  # the entry's image, as a row's would be
    assert any(not same(red[k], blue[k]) for k in expected)  # another image, other conditioning
    with raw_latents(pipe):
        samples = [latents for _, _, latents in render_samples(pipe, config, None)]
    assert len(samples) == 2 and all(x.isfinite().all() for x in samples)
    assert not torch.allclose(*samples, atol=1e-4)


# ------------------------------------------------------------------------------------ classifier-free guidance

def test_guided_velocity_is_diffsynths_formula():
    calls = []

    def predict(x, t, inputs):
        calls.append(inputs["c"])
        return x * inputs["c"]
    x = torch.randn(2, 3)
    assert torch.equal(guided_velocity(predict, x, 0, {"c": 2.0}), x * 2) and calls == [2.0]
    assert torch.equal(guided_velocity(predict, x, 0, {"c": 2.0}, 1.0, {"c": -1.0}), x * 2) and len(calls) == 2
    out = guided_velocity(predict, x, 0, {"c": 2.0}, 4.0, {"c": -1.0})
    assert calls[2:] == [2.0, -1.0] and torch.allclose(out, -x + 4.0 * (2 * x + x))


@pytest.mark.parametrize("name", list(PRESETS))
def test_guided_render_is_cond_uncond_on_one_step(name, pipes, world):
    """The first Euler step from the same noise: x + d·(u + s(c - u)) = (x + d·u) + s·((x + d·c) - (x + d·u)),
    so the guided step is the negative-only step plus s times the difference of the two plain steps. (Two steps:
    the latents the second step's prediction receives are the first step's result.)"""
    pipe = pipes[name]
    h, w, frames = SIZE[name]
    image = Image.open(world["red"]).convert("RGB").resize((w, h))
    cond = pipe.sample_inputs("make it green", h, w, frames, images=image)
    negative = pipe.sample_inputs("blurry, low quality", h, w, frames, images=image)
    seen, original = [], pipe.predict

    def spy(latents, timestep, inputs):
        seen.append((latents.clone(), inputs is negative or inputs.get("prompt_emb") is negative["prompt_emb"]))
        return original(latents, timestep, inputs)

    def first_step(**guidance):
        seen.clear()
        pipe.render(cond if guidance.pop("cond", True) else negative, 0, h, w, 2, num_frames=frames, **guidance)
        return seen[-1][0], [negative_call for _, negative_call in seen]
    pipe.predict = spy
    try:
        plain, calls = first_step()
        assert calls == [False, False]
        uncond, _ = first_step(cond=False)
        guided, calls = first_step(cfg_scale=4.0, negative_inputs=negative)
        assert calls == [False, True, False, True]  # cond, then uncond under the negative prompt, every step
        one, calls = first_step(cfg_scale=1.0, negative_inputs=negative)
        assert calls == [False, False]  # cfg 1: the negative prompt is not used
    finally:
        del pipe.predict
    assert all(x.isfinite().all() for x in (plain, uncond, guided))
    assert not torch.allclose(guided, plain, atol=1e-4) and not torch.allclose(plain, uncond, atol=1e-4)
    assert torch.allclose(guided, uncond + 4.0 * (plain - uncond), atol=1e-4, rtol=1e-4)
    assert torch.equal(one, plain)


def test_guided_entry_differs_and_the_prompt_cache_gives_the_online_samples(pipes, world, tmp_path):
    pipe = pipes["edit"]
    entries = [{"prompt": "make it green", "images": world["red"], "negative_prompt": "blurry", "cfg_scale": 4,
                "num_inference_steps": 2, "seeds": [0, 1]},
               {"prompt": "make it green", "images": world["red"], "num_inference_steps": 2}]
    config = make_config("edit", entries)
    index = build_prompt_cache(config, None, tmp_path / "prompts", pipe=pipe)
    assert [s["key"] for s in index["samples"]] == ["prompt0", "negative0", "prompt1"]  # negatives only when guided
    inputs = cache.read_prompt_cache(tmp_path / "prompts", cache.fingerprint(config, None, what="prompts"))
    with raw_latents(pipe):
        online = render_samples(pipe, config, None)
        cached = render_samples(pipe, config, inputs)
    assert [(e.index, e.cfg_scale, seed) for e, seed, _ in online] == [(0, 4.0, 0), (0, 4.0, 1), (1, 1.0, 0)]
    assert not torch.allclose(online[0][2], online[2][2], atol=1e-4)  # guided vs plain, same seed
    assert all(torch.equal(a[2], b[2]) for a, b in zip(online, cached))


# ------------------------------------------------------------------------------------ plain strings: as before

@pytest.mark.parametrize("name", list(PRESETS))
def test_prompt_strings_render_as_before(name, pipes, world):
    pipe = pipes[name]
    prompts = ["make it green", "a blue square"]
    config = make_config(name, prompts, seeds=[3])
    s = config.sample
    seen = []
    original = pipe.render

    def spy(*args, **kwargs):
        seen.append(sorted(kwargs))
        return original(*args, **kwargs)
    with raw_latents(pipe):
        pipe.render = spy
        try:
            ours = render_samples(pipe, config, None)
        finally:
            del pipe.render
        # what the evaluator called before entries existed: Family.sample per prompt and seed
        before = [pipe.sample(p, seed, s.height, s.width, s.num_inference_steps, num_frames=s.num_frames)
                  for p in prompts for seed in s.seeds]
    assert [(e.prompt, seed) for e, seed, _ in ours] == [(p, seed) for p in prompts for seed in s.seeds]
    assert all(torch.equal(a, b) for (_, _, a), b in zip(ours, before))
    assert not torch.equal(before[0], before[1])  # the prompts give different samples: the comparison can fail
    # no guidance argument reaches render; FLUX.1 gets its embedded guidance, 3.5 as before
    assert all(k in (["num_frames"], ["embedded_guidance", "num_frames"]) for k in seen)


# ------------------------------------------------------------------------------------ config check and cache

def qwen_params(prompts, family: str = "qwen_image") -> dict:
    data = copy.deepcopy(DEFAULT_PARAMS)
    data["sample"]["prompts"] = prompts
    return data


@pytest.mark.parametrize("entry, message", [
    ({"prompt": "x", "images": "nowhere/cat.png"}, r"sample\.prompts\[1\]\.images: nowhere/cat\.png does not exist"),
    ({"prompt": "x", "negativ_prompt": "y"}, r"sample\.prompts\[1\]\.negativ_prompt: unknown entry key; did you mean "
                                             "'negative_prompt'"),
    ({"prompt": "x", "cfg_scale": "high"}, r"sample\.prompts\[1\]\.cfg_scale = 'high': must be a number"),
    ({"prompt": "x", "cfg_scale": 2, "guidance_scale": 3}, "sets both cfg_scale and guidance_scale"),
    ({"negative_prompt": "y"}, r"sample\.prompts\[1\] has no prompt string"),
    ({"prompt": "x", "seeds": []}, r"sample\.prompts\[1\]\.seeds is empty"),
    (3, r"sample\.prompts\[1\] is a int"),
])
def test_bad_entries_are_refused_by_name(entry, message, world):
    data = preset_params(REPO / "presets" / "tiny" / f"{PRESETS['edit']}.yaml")
    data["sample"]["prompts"] = ["fine", entry]
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_images_and_embedded_guidance_need_a_family_that_takes_them(world):
    with pytest.raises(ConfigError, match=r"sample\.prompts\[0\]\.images: the qwen_image family's samples take no "
                                          "images"):
        config_from_dict(qwen_params([{"prompt": "x", "images": world["red"]}]))
    with pytest.raises(ConfigError, match=r"set model\.extra_inputs: input_image"):
        data = preset_params(REPO / "presets" / "tiny" / "wan2.1-t2v-1.3b-lora.yaml")
        data["sample"]["prompts"] = [{"prompt": "x", "images": world["red"]}]
        config_from_dict(data)
    with pytest.raises(ConfigError, match=r"sample\.prompts\[0\]\.embedded_guidance: the qwen_image family has no"):
        config_from_dict(qwen_params([{"prompt": "x", "embedded_guidance": 2.0}]))
    config = config_from_dict(qwen_params(["a", {"prompt": "b", "guidance_scale": 3, "seed": 7,
                                                 "negative_prompt": "ugly"}]))
    a, b = sample_entries(config)
    assert (a.cfg_scale, a.negative_prompt, a.seeds, a.num_inference_steps) == (1.0, "", (0,), 8)
    assert (b.cfg_scale, b.negative_prompt, b.seeds, b.guided) == (3.0, "ugly", (7,), True)


def test_prompt_cache_fingerprint_follows_negatives_and_image_contents(world, tmp_path):
    image = tmp_path / "ref.png"
    Image.open(world["red"]).save(image)
    entry = {"prompt": "make it green", "images": str(image), "cfg_scale": 4, "negative_prompt": "blurry"}

    def fp(**change):
        return cache.fingerprint(make_config("edit", [{**entry, **change}]), None, what="prompts")
    before = fp()
    assert fp(negative_prompt="dark") != before and fp(images=world["blue"]) != before
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / cache.INDEX).write_text('{"version": 1, "kind": "prompts", "shards": [], "samples": []}')
    cache._check_fingerprint(folder, {"fingerprint": before}, fp())  # unchanged: accepted
    Image.open(world["blue"]).save(image)  # the same path, another picture
    with pytest.raises(cache.CacheError, match="built from other sample images.*--force --single-item cache_prompts"):
        cache._check_fingerprint(folder, {"fingerprint": before}, fp())


# ------------------------------------------------------------------------------------ the samples table

def test_samples_table_has_the_entry_settings(pipes, world):
    config = make_config("kontext", ["plain", {"prompt": "make it green", "images": [world["red"], world["blue"]],
                                               "cfg_scale": 2.5, "negative_prompt": "dark", "seeds": [5],
                                               "embedded_guidance": 2.0}])

    class Tracker:
        table = None

        def log_sample(self, image, key, step):
            return image

        def log_table(self, table, name):
            self.table, self.name = table, name
    tracker = Tracker()
    evaluator = Evaluator(pipes["kontext"], None, config, None, None, tracker, None, True)
    evaluator._log_samples(3)
    t = tracker.table
    assert tracker.name == "samples.json" and t["prompt"] == ["plain", "make it green"] and t["seed"] == [0, 5]
    assert t["cfg_scale"] == [1.0, 2.5] and t["negative_prompt"] == ["", "dark"]
    assert t["num_inference_steps"] == [2, 2] and t["embedded_guidance"] == [3.5, 2.0]
    assert t["images"] == ["", f"{world['red']},{world['blue']}"] and t["step"] == [3, 3]


def test_families_without_the_hook_arguments_are_refused_by_name(world, monkeypatch):
    """A family (or a variant overriding a hook) that does not take images= / negative_inputs= yet: refused at
    config time, naming the entry, never a TypeError at the first save point."""
    from diffsynth.families.qwen_image.edit import QwenImageEdit
    from diffsynth.families.qwen_image.pipeline import QwenImage

    monkeypatch.setattr(QwenImage, "render", lambda self, inputs, seed, height, width, steps, num_frames=1: None)
    monkeypatch.setattr(QwenImageEdit, "sample_inputs", lambda self, prompt, height=0, width=0, num_frames=1: {})
    with pytest.raises(ConfigError, match=r"sample\.prompts\[0\]: cfg_scale 4\.0, but the qwen_image family's "
                                          "samples have no classifier-free guidance"):
        config_from_dict({**qwen_params(["x"]), "sample": {**DEFAULT_PARAMS["sample"], "cfg_scale": 4}})
    data = preset_params(REPO / "presets" / "tiny" / f"{PRESETS['edit']}.yaml")
    data["sample"]["prompts"] = [{"prompt": "x", "images": world["red"]}]
    with pytest.raises(ConfigError, match=r"sample\.prompts\[0\]\.images: the qwen_image_edit family's samples take "
                                          "no images"):
        config_from_dict(data)


def test_sigma_shift_reaches_wans_sampling_grid_and_is_refused_elsewhere(pipes, world):
    """DiffSynth's Wan samples take sigma_shift (Krea Realtime's validation: 6 steps at 20): the section's value or
    an entry's; unset, Wan's own 5; a family sampling on its own grid refuses it by name."""
    from diffsynth.families.wan.pipeline import SHIFT, inference_sigmas
    pipe = pipes["i2v"]
    grids = []
    original = pipe.render

    def spy(*args, **kwargs):
        grids.append(kwargs.get("sigma_shift", SHIFT))
        return original(*args, **kwargs)

    def latents(config):
        with raw_latents(pipe):
            pipe.render = spy
            try:
                return [x for _, _, x in render_samples(pipe, config, None)]
            finally:
                del pipe.render
    plain = latents(make_config("i2v", ["x"]))
    five = latents(make_config("i2v", ["x"], sigma_shift=5))
    twenty = latents(make_config("i2v", ["x", {"prompt": "x", "sigma_shift": 20}]))
    assert grids == [SHIFT, 5.0, SHIFT, 20.0]
    assert torch.equal(plain[0], five[0]) and torch.equal(plain[0], twenty[0])  # 5 is Wan's own grid
    assert not torch.equal(twenty[0], twenty[1])  # the same prompt and seed on another grid
    assert not torch.allclose(inference_sigmas(6, 20.0), inference_sigmas(6, SHIFT))
    config = make_config("i2v", [{"prompt": "x", "sigma_shift": 20}])
    assert sample_entries(config)[0].settings()["sigma_shift"] == 20.0
    with pytest.raises(ConfigError, match=r"sample\.sigma_shift: the qwen_image family samples on its own sigma"):
        config_from_dict({**qwen_params(["x"]), "sample": {**qwen_params(["x"])["sample"], "sigma_shift": 3}})
    with pytest.raises(ConfigError, match=r"sample\.prompts\[0\]\.sigma_shift: the qwen_image family samples on"):
        config_from_dict(qwen_params([{"prompt": "x", "sigma_shift": 3}]))
    with pytest.raises(ConfigError, match=r"sample\.prompts\[0\]\.sigma_shift = 0\.0: must be > 0"):
        make_config("i2v", [{"prompt": "x", "sigma_shift": 0}])
