"""Resolution rules (DiffSynth's ImageCropAndResize), with sizes worked out by hand from DiffSynth's formula."""
import pytest
from PIL import Image

from diffsynth.data.dataset import ImageRules
from diffsynth.data.resolution import crop_and_resize, resize_for_training, target_size


@pytest.mark.parametrize("w, h, max_pixels, factor, expected", [
    # s = sqrt(1920*1080/1048576) = 1.40625; w = int(1365.33) = 1365 -> 1360; h = int(768.0) = 768
    (1920, 1080, 1048576, 16, (1360, 768)),
    (1920, 1080, 1048576, 32, (1344, 768)),
    # s = sqrt(3e6/262144) = 3.3829; w = int(295.6) = 295 -> 288; h = int(886.8) = 886 -> 880 (864 at 32)
    (1000, 3000, 262144, 16, (288, 880)),
    (1000, 3000, 262144, 32, (288, 864)),
    (4000, 3000, 1048576, 16, (1168, 880)),
])
def test_dynamic_resolution_follows_diffsynth_formula(w, h, max_pixels, factor, expected):
    assert target_size(w, h, max_pixels, None, None, factor, factor) == expected


def test_small_images_are_never_upscaled_only_floored():
    assert target_size(100, 60, 1048576) == (96, 48)
    assert target_size(100, 60, 1048576, height_factor=32, width_factor=32) == (96, 32)
    assert target_size(64, 64, 4096) == (64, 64)      # exactly max_pixels: untouched
    out = resize_for_training(Image.new("RGB", (100, 60)), 1048576)
    assert out.size == (96, 48)


def test_fixed_size_is_used_as_given_even_off_multiple():
    assert target_size(1920, 1080, 1048576, 512, 768) == (768, 512)
    assert target_size(10, 10, 1048576, 100, 50) == (50, 100)   # upscaled, not rounded: DiffSynth's behaviour
    assert ImageRules(4096, 48, 80).apply(Image.new("RGB", (300, 200))).size == (80, 48)
    # one of height/width missing means dynamic resolution
    assert target_size(1920, 1080, 1048576, 512, None) == (1360, 768)


def test_scale_then_centre_crop_keeps_the_middle():
    image = Image.new("RGB", (200, 100), (0, 255, 0))
    image.paste((255, 0, 0), (0, 0, 50, 100))      # left quarter red
    image.paste((0, 0, 255), (150, 0, 200, 100))   # right quarter blue
    out = crop_and_resize(image, 100, 100)          # scale max(0.5, 1) = 1, crop x 50..150
    assert out.size == (100, 100)
    assert set(out.getdata()) == {(0, 255, 0)}


def test_cover_scale_rounds_like_torchvision():
    # scale = max(256/1000, 256/500) = 0.512 -> 512x256, crop left = round((512-256)/2) = 128
    image = Image.new("RGB", (1000, 500), (0, 0, 0))
    image.paste((255, 255, 255), (250, 0, 750, 500))   # the middle half is white
    out = crop_and_resize(image, 256, 256)
    assert out.size == (256, 256)
    assert out.getpixel((128, 128)) == (255, 255, 255)


def test_image_smaller_than_one_block_is_an_error():
    with pytest.raises(ValueError, match="smaller than one 16x16 block"):
        resize_for_training(Image.new("RGB", (8, 40)), 1048576)
