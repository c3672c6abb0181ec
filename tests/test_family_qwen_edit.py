"""Qwen-Image-Edit: what the DiT and the text encoder receive for fixed edit rows (one and two edit images),
as DiffSynth's EditImageEmbedder / PromptEmbedder / model_fn build them; zero_cond_t; the built-in edit data."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from PIL import Image

from diffsynth.command_line import config_from_args
from diffsynth.config import config_from_dict
from diffsynth.errors import ConfigError
from diffsynth.data.dataset import ImageRules, UnifiedDataset
from diffsynth.data.sample_dataset import BUILTIN_DATASETS, build_builtin
from diffsynth.families import get_spec, spec_for
from diffsynth.families.images import unpack_latents
from diffsynth.families.qwen_image.pipeline import set_zero_cond_t
from diffsynth.families.qwen_image.edit import (EDIT_SYSTEM, QwenImageEdit, edit_size, first_row_edit_image,
                                                resize_to_area)
from helpers import DEFAULT_PARAMS

TINY = "diffsynth-tiny/Qwen-Image-Edit"
AREA = 128 * 128  # edit_image_area of these tests: small, and large enough that the ratio survives rounding


def edit_params(metadata, **model) -> dict:
    data = copy.deepcopy(DEFAULT_PARAMS)
    data["model"].update(
        family="qwen_image", tiny_preset="qwen-image-edit", extra_inputs="edit_image", edit_image_area=AREA,
        model_id_with_origin_paths=f"{TINY}:transformer/diffusion_pytorch_model*.safetensors,"
                                   f"{TINY}:text_encoder/model*.safetensors,{TINY}:vae/diffusion_pytorch_model.safetensors",
        tokenizer_path=f"{TINY}:tokenizer/", processor_path=f"{TINY}:processor/", **model)
    data["dataset"].update(dataset_base_path=str(metadata.parent), dataset_metadata_path=str(metadata),
                           data_file_keys="image,edit_image")
    return data



@pytest.fixture(scope="module")
def edit_dataset(tmp_path_factory):
    return build_builtin("shapes_edit", tmp_path_factory.mktemp("data") / "shapes_edit")


@pytest.fixture(scope="module")
def pipe(edit_model_base, edit_dataset):
    """The tiny edit pipeline, chosen as DiffSynth does: family qwen_image + edit_image among the extra inputs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(edit_model_base))
        config = config_from_dict(edit_params(edit_dataset))
        return spec_for(config).load_pipeline(config, torch.float32)


class Spy:
    """Records the kwargs of every forward call of a module, and the images given to the image processor."""

    def __init__(self, pipe):
        self.dit, self.text, self.images = [], [], []
        self.handles = [
            pipe.dit.register_forward_pre_hook(lambda m, a, k: self.dit.append(k), with_kwargs=True),
            pipe.text_encoder.register_forward_pre_hook(lambda m, a, k: self.text.append(k), with_kwargs=True)]
        self.pipe, self.processor = pipe, pipe.image_processor

        def processor(images, **kw):
            self.images.append([im.size for im in images])
            return self.processor(images=images, **kw)
        processor.merge_size = self.processor.merge_size
        pipe.image_processor = processor

    def close(self):
        for h in self.handles:
            h.remove()
        self.pipe.image_processor = self.processor


def shape_of(x):
    return tuple(x.shape)


# ------------------------------------------------------------------------------------------ pure functions

def test_edit_size_is_diffsynths_calculate_dimensions():
    # w = sqrt(area·r), h = w/r, each rounded to a multiple of 32 (DiffSynth's EditImageEmbedder)
    assert edit_size(1536, 1024, 1024 * 1024) == (1248, 832)
    assert edit_size(1024, 1024, 1024 * 1024) == (1024, 1024)
    assert edit_size(720, 1280, 1024 * 1024) == (768, 1376)
    assert edit_size(160, 96, 384 * 384) == (480, 288)   # the multi-image vision-tower size
    assert resize_to_area(Image.new("RGB", (192, 128)), AREA).size == (160, 96)


def test_shapes_edit_dataset(edit_dataset):
    rows = json.loads(edit_dataset.read_text())
    assert "shapes_edit" in BUILTIN_DATASETS and edit_dataset.name == "metadata.json"
    assert len(rows) == 16 and set(rows[0]) == {"image", "edit_image", "prompt"}
    for row in rows:
        colour, shape = row["image"][:-4].split("_")
        assert row["prompt"] == f"make the {shape} {colour}"
        assert row["edit_image"].endswith(f"_{shape}.png") and row["edit_image"] != row["image"]
    a = Image.open(edit_dataset.parent / rows[0]["edit_image"])
    b = Image.open(edit_dataset.parent / rows[0]["image"])
    mask = lambda im: [p != (245, 245, 245) for p in im.convert("RGB").getdata()]  # noqa: E731
    assert mask(a) == mask(b) and a.tobytes() != b.tobytes()  # same shape, other colour


# ------------------------------------------------------------------------------------------ model inputs

def test_family_choice(pipe):
    assert isinstance(pipe, QwenImageEdit) and pipe.name == "qwen_image_edit"
    rules = get_spec("qwen_image_edit").data_rules()
    assert rules.size_factor == 16 and rules.video_keys == ()


def test_single_edit_image_inputs(pipe):
    target, edit = Image.new("RGB", (64, 64), (40, 70, 220)), Image.new("RGB", (192, 128), (220, 40, 40))
    spy = Spy(pipe)
    try:
        inputs = pipe.encode({"image": target, "edit_image": edit, "prompt": "make the circle blue"})
        pred = pipe.predict(torch.randn(1, 16, 8, 8), torch.tensor([500.0]), inputs)
    finally:
        spy.close()
    # EditImageEmbedder: 192x128 -> 160x96 at area 128², VAE /8 -> 12x20 latents
    assert shape_of(inputs["latents"]) == (1, 16, 8, 8)
    assert [shape_of(x) for x in inputs["edit_latents"]] == [(1, 16, 12, 20)]
    assert torch.allclose(inputs["edit_latents"][0], pipe.encode_image(edit.resize((160, 96))))
    # PromptEmbedder: the VL template over the resized edit image; system prefix dropped, vision tokens kept
    assert spy.images == [[(160, 96)]]
    (text,) = spy.text
    ids, grid = text["input_ids"][0], text["image_grid_thw"]
    tok = pipe.tokenizer
    pads = int((ids == tok.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert pads == int(grid.prod()) // 4 and shape_of(text["pixel_values"])[0] == int(grid.prod())
    drop = len(tok(EDIT_SYSTEM)["input_ids"])
    assert tok.decode(ids[:drop]) == EDIT_SYSTEM
    assert tok.decode(ids[drop:drop + 1]) == "<|vision_start|>"
    assert shape_of(inputs["prompt_emb"]) == (1, len(ids) - drop, 32)
    # model_fn: edit tokens appended to the target tokens, one RoPE frame each, t/1000, output sliced back
    (call,) = spy.dit
    assert shape_of(call["hidden_states"]) == (1, 16 + 60, 64)
    assert call["img_shapes"] == [[(1, 4, 4), (1, 6, 10)]]
    assert call["timestep"].tolist() == [0.5]
    assert call["encoder_hidden_states"] is inputs["prompt_emb"]
    assert shape_of(pred) == (1, 16, 8, 8)
    with torch.no_grad():
        full = pipe.dit(**call)[0]
    assert torch.allclose(pred, unpack_latents(full[:, :16], 8, 8))


def test_two_edit_images_inputs(pipe):
    edits = [Image.new("RGB", (192, 128), (220, 40, 40)), Image.new("RGB", (128, 128), (40, 170, 60))]
    spy = Spy(pipe)
    try:
        inputs = pipe.encode({"image": Image.new("RGB", (64, 64)), "edit_image": edits, "prompt": "swap them"})
        pipe.predict(torch.randn(1, 16, 8, 8), torch.tensor([250.0]), inputs)
    finally:
        spy.close()
    assert [shape_of(x) for x in inputs["edit_latents"]] == [(1, 16, 12, 20), (1, 16, 16, 16)]
    # 2509-style: "Picture i: " prefixes, each image at 384² area for the vision tower
    assert spy.images == [[(480, 288), (384, 384)]]
    (text,) = spy.text
    ids, grid = text["input_ids"][0], text["image_grid_thw"]
    tok = pipe.tokenizer
    drop = len(tok(EDIT_SYSTEM)["input_ids"])
    kept = tok.decode(ids[drop:])
    assert kept.startswith("Picture 1: <|vision_start|>") and "<|vision_end|>Picture 2: <|vision_start|>" in kept
    assert kept.endswith("swap them<|im_end|>\n<|im_start|>assistant\n")
    assert len(grid) == 2 and int((ids == tok.convert_tokens_to_ids("<|image_pad|>")).sum()) == int(grid.prod(1).sum()) // 4
    assert shape_of(inputs["prompt_emb"]) == (1, len(ids) - drop, 32)
    (call,) = spy.dit
    assert call["img_shapes"] == [[(1, 4, 4), (1, 6, 10), (1, 8, 8)]]
    assert shape_of(call["hidden_states"]) == (1, 16 + 60 + 64, 64)
    assert call["timestep"].tolist() == [0.25]


def test_zero_cond_t_gives_edit_tokens_timestep_zero(pipe):
    inputs = pipe.encode({"image": Image.new("RGB", (64, 64)), "edit_image": Image.new("RGB", (64, 64), (9, 99, 9)),
                          "prompt": "make the circle blue"})
    noisy, t = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([700.0])
    text_only = {"prompt_emb": inputs["prompt_emb"]}
    with torch.no_grad():
        plain, plain_t2i = pipe.predict(noisy, t, inputs), pipe.predict(noisy, t, text_only)
        set_zero_cond_t(pipe.dit, True)
        try:
            assert all(b.zero_cond_t for b in pipe.dit.transformer_blocks) and pipe.dit.config.zero_cond_t
            zero, zero_t2i = pipe.predict(noisy, t, inputs), pipe.predict(noisy, t, text_only)
        finally:
            set_zero_cond_t(pipe.dit, False)
    assert not torch.allclose(plain, zero, atol=1e-6)   # the edit tokens now see t=0
    assert torch.allclose(plain_t2i, zero_t2i, atol=1e-6)  # no conditioning tokens: nothing changes
    # the flag is a supported DiffSynth flag and a params key
    assert config_from_args(["--zero_cond_t", "--lora_base_model", "dit"]).model.zero_cond_t is True
    assert DEFAULT_PARAMS["model"]["zero_cond_t"] is False


def test_samples_use_the_first_rows_edit_image(pipe, edit_dataset, shapes_dataset):
    rules = ImageRules(4096, None, None, 16, 16)
    first = UnifiedDataset(edit_dataset.parent, edit_dataset, ["edit_image"], rules)[0]["edit_image"]
    spy = Spy(pipe)
    try:
        image = pipe.sample("make the circle blue", 0, 64, 64, 2)
    finally:
        spy.close()
    assert image.size == (64, 64)
    assert pipe.sample_edit_image.tobytes() == first.tobytes()
    # the 64x64 edit image is resized to the edit area (128²): 16x16 latents, one extra RoPE frame
    assert all(call["img_shapes"] == [[(1, 4, 4), (1, 8, 8)]] for call in spy.dit) and len(spy.dit) == 2
    # a dataset without edit_image gives text-to-image samples
    config = config_from_dict(edit_params(shapes_dataset))
    assert first_row_edit_image(config, 16, 16) is None


@pytest.mark.parametrize("change, message", [
    ({"model": {"family": "qwen_image_edit", "extra_inputs": None}}, "needs model.extra_inputs to include edit_image"),
    ({"model": {"extra_inputs": "edit_image,context_image"}}, "context_image: the qwen_image_edit family does not"),
    ({"dataset": {"data_file_keys": "image"}}, "data_file_keys lacks edit_image"),
])
def test_config_errors_name_key_and_fix(edit_dataset, change, message):
    data = edit_params(edit_dataset)
    for section, values in change.items():
        data[section].update(values)
    with pytest.raises(ConfigError, match=message):  # when the config is built, or at the latest when loading
        QwenImageEdit.load_pipeline(config_from_dict(data), torch.float32)


def test_path_string_edit_image_is_a_clear_error(pipe):
    with pytest.raises(ValueError, match="add edit_image to dataset.data_file_keys"):
        pipe.encode({"image": Image.new("RGB", (64, 64)), "edit_image": "a.png", "prompt": "x"})
    with pytest.raises(ValueError, match="no edit_image"):
        pipe.encode({"image": Image.new("RGB", (64, 64)), "prompt": "x"})
