"""Image preprocessing as DiffSynth's code does it: ``resize_pixels`` (torchvision's tensor resize in plain torch),
``image_to_tensor`` (its ``preprocess_image``), and the Qwen2-VL processor's output built from its config
(``qwen_image/vision_inputs.py``). ``make parity`` (case ``edit``) compares them with DiffSynth's own code; these
tests pin the arithmetic without it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffsynth.errors import ConfigError
from diffsynth.families.images import image_to_tensor, resize_pixels
from diffsynth.families.qwen_image.edit import load_image_processor
from diffsynth.families.qwen_image.vision_inputs import VisionConfig, VisionInputs, smart_resize

# Qwen2.5-VL's preprocessor_config.json (also Qwen-Image-Edit's processor/)
REAL = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


# ------------------------------------------------------------------------------------------ resize_pixels

@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(17, 45), (64, 90), (31, 31)])  # down, up, mixed
def test_float_resize_is_antialiased_interpolate(mode, size):
    x = torch.rand(2, 3, 40, 52, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(x, size=list(size), mode=mode, align_corners=False, antialias=True)
    assert torch.equal(resize_pixels(x, *size, mode=mode), expected)
    plain = F.interpolate(x, size=list(size), mode=mode, align_corners=False, antialias=False)
    assert torch.equal(resize_pixels(x, *size, mode=mode, antialias=False), plain)


def test_uint8_bicubic_on_cpu_is_torchs_uint8_kernel():
    # torchvision hands a uint8 image to interpolate as it is for bicubic on a CPU: values stay in 0..255
    x = chw(noise(61, 97)).unsqueeze(0)
    out = resize_pixels(x, 28, 56, mode="bicubic")
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 28, 56)
    assert torch.equal(out, F.interpolate(x, size=[28, 56], mode="bicubic", align_corners=False, antialias=True))


def test_uint8_resize_through_float_rounds_and_clamps(monkeypatch):
    # where torch has no uint8 kernel for the mode (bilinear without AVX2, or off the CPU) torchvision resizes a
    # float32 copy, clamps bicubic overshoot to 0..255 and rounds back
    from diffsynth.families import images
    monkeypatch.setattr(images, "_native_uint8_resize", lambda mode, device: False)
    x = chw(noise(61, 97, seed=1))
    out = resize_pixels(x, 20, 33, mode="bicubic")
    ref = F.interpolate(x[None].float(), size=[20, 33], mode="bicubic", align_corners=False, antialias=True)
    assert out.dtype == torch.uint8 and out.shape == (3, 20, 33)
    assert torch.equal(out, ref[0].clamp(0, 255).round().to(torch.uint8))


def test_half_precision_resizes_in_float32():
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    out = resize_pixels(x, 10, 14)
    ref = F.interpolate(x.float(), size=[10, 14], mode="bilinear", align_corners=False, antialias=True)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref.to(torch.bfloat16))


def test_resize_keeps_leading_dims_and_same_size_is_the_input():
    x = torch.rand(2, 4, 3, 12, 20)
    assert resize_pixels(x, 6, 10).shape == (2, 4, 3, 6, 10)
    assert resize_pixels(x, 12, 20) is x


@pytest.mark.parametrize("args, message", [
    ((torch.rand(3, 8, 8), 4, 4, "lanczos"), "mode 'lanczos'"),
    ((torch.rand(3, 8, 8), 0, 4), "at least 1x1"),
    ((torch.rand(8, 8), 4, 4), r"\(\.\.\., C, H, W\)"),
    ((torch.zeros(3, 8, 8, dtype=torch.int32), 4, 4), "torch.int32"),
])
def test_resize_errors(args, message):
    with pytest.raises(ValueError, match=message):
        resize_pixels(*args)


# ------------------------------------------------------------------------------------------ image_to_tensor

def test_image_to_tensor_is_diffsynths_preprocess_image():
    array = noise(5, 7)
    image = Image.fromarray(array)
    for dtype in (torch.float32, torch.bfloat16):
        x = image_to_tensor(image, dtype)
        # DiffSynth: the 0..255 values cast to the pipeline dtype, then x * (2/255) + (-1) in that dtype
        expected = (torch.tensor(array, dtype=torch.float32).to(dtype) * (2 / 255) + (-1)).permute(2, 0, 1)[None]
        assert x.dtype == dtype and x.shape == (1, 3, 5, 7) and torch.equal(x, expected)
    assert image_to_tensor(Image.new("RGB", (2, 2), (0, 0, 0))).min() == -1
    assert image_to_tensor(Image.new("RGB", (2, 2), (255, 255, 255))).max() == 1
    # bfloat16 arithmetic is not the float32 result rounded once
    direct = image_to_tensor(image, torch.bfloat16)
    rounded = image_to_tensor(image).to(torch.bfloat16)
    assert not torch.equal(direct, rounded)


def test_image_to_tensor_needs_rgb():
    with pytest.raises(ValueError, match="convert"):
        image_to_tensor(Image.new("L", (4, 4)))


# ------------------------------------------------------------------------------------------ Qwen2-VL inputs

@pytest.mark.parametrize("hw, expected", [
    ((250, 333), (252, 336)),          # round to multiples of 28
    ((896, 1184), (896, 1176)),        # 1184/28 = 42.3 -> 42
    ((1024, 1024), (1036, 1036)),      # 36.57 -> 37: Qwen-Image-Edit's 1024² edit image grows to 1036²
    ((20, 20), (56, 56)),              # under min_pixels (56²): scaled up, sides rounded up
    ((10000, 10000), (3556, 3556)),    # over max_pixels: scaled down, floored (3583.99.. -> 127·28)
    ((14, 30), (56, 84)),
])
def test_smart_resize(hw, expected):
    h, w = smart_resize(*hw, factor=28, min_pixels=REAL["min_pixels"], max_pixels=REAL["max_pixels"])
    assert (h, w) == expected and h % 28 == 0 and w % 28 == 0
    assert REAL["min_pixels"] <= h * w <= REAL["max_pixels"]


def test_smart_resize_errors():
    with pytest.raises(ValueError, match="ratio over 200"):
        smart_resize(10, 2100)
    with pytest.raises(ValueError, match="no area"):
        smart_resize(0, 10)


def test_vision_inputs_layout():
    """pixel_values row r is patch r in merge order (2x2 groups of 14² patches), C·T·14·14 values, the frame
    repeated T=2 times; each value the normalised bicubic-resized pixel."""
    processor = VisionInputs(VisionConfig.from_dict(REAL))
    image = Image.fromarray(noise(61, 97))
    out = processor(images=[image, image])
    h, w = smart_resize(61, 97, 28, REAL["min_pixels"], REAL["max_pixels"])
    assert (h, w) == (56, 84)
    assert out["image_grid_thw"].tolist() == [[1, 4, 6], [1, 4, 6]]
    assert out["pixel_values"].shape == (2 * 24, 3 * 2 * 14 * 14) and out["pixel_values"].dtype == torch.float32
    resized = F.interpolate(chw(noise(61, 97))[None], size=[h, w], mode="bicubic", align_corners=False,
                            antialias=True)[0].float()
    mean = torch.tensor(REAL["image_mean"]) * 255
    std = torch.tensor(REAL["image_std"]) * 255
    norm = (resized - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    rows = out["pixel_values"][:24].view(24, 3, 2, 14, 14)
    assert torch.equal(rows[:, :, 0], rows[:, :, 1])  # the temporal repeat
    # merge group (0, 1) holds patches (0,2), (0,3), (1,2), (1,3): rows 4..7
    for row, (py, px) in zip(range(4, 8), [(0, 2), (0, 3), (1, 2), (1, 3)]):
        patch = norm[:, py * 14:(py + 1) * 14, px * 14:(px + 1) * 14]
        assert torch.allclose(rows[row, :, 0], patch, atol=1e-5)
    assert torch.equal(out["pixel_values"][:24], out["pixel_values"][24:])


def test_vision_inputs_composites_transparency_on_white():
    processor = VisionInputs(VisionConfig.from_dict(REAL))
    clear = processor(images=[Image.new("RGBA", (56, 56), (10, 20, 30, 0))])["pixel_values"]
    white = processor(images=[Image.new("RGB", (56, 56), (255, 255, 255))])["pixel_values"]
    assert torch.equal(clear, white)


def test_vision_config_from_folder(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 1024, "longest_edge": 65536}, "resample": 2, "merge_size": 2}))
    config = load_image_processor(str(tmp_path)).config
    assert (config.min_pixels, config.max_pixels, config.resample) == (1024, 65536, "bilinear")
    # min_pixels / max_pixels win over size, as in transformers
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 1024, "longest_edge": 65536}, "min_pixels": 3136, "max_pixels": 12845056}))
    config = VisionConfig.from_folder(tmp_path)
    assert (config.min_pixels, config.max_pixels, config.resample) == (3136, 12845056, "bicubic")


@pytest.mark.parametrize("data, message", [
    ({"resample": 1}, "resample 1"),
    ({"image_processor_type": "CLIPImageProcessor"}, "CLIPImageProcessor"),
    ({"min_pixels": 5000, "max_pixels": 4000}, "exceeds max_pixels"),
    ({"patch_size": 0}, "patch_size = 0"),
    ({"image_std": [0.5, 0.0, 0.5]}, "std non-zero"),
])
def test_vision_config_errors(data, message):
    with pytest.raises(ValueError, match=message):
        VisionConfig.from_dict(data)


def test_missing_processor_folder_names_the_flag(tmp_path):
    with pytest.raises(ConfigError, match="model.processor_path.*preprocessor_config.json"):
        load_image_processor(str(tmp_path))


def test_vision_inputs_errors():
    processor = VisionInputs(VisionConfig())
    with pytest.raises(TypeError, match="PIL images"):
        processor(images=[np.zeros((28, 28, 3), np.uint8)])
    with pytest.raises(ValueError, match="no images"):
        processor(images=[])
    unresized = VisionInputs(VisionConfig(do_resize=False))
    with pytest.raises(ValueError, match="multiple of patch_size·merge_size = 28"):
        unresized(images=[Image.new("RGB", (30, 28))])
