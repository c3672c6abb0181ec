"""Video columns (DiffSynth's default_video_operator): first
n frames with n = 4k+1, GIF via PIL, still image = 1-frame video."""
import numpy as np
import pytest
from PIL import Image

from diffsynth.data.dataset import ImageRules, UnifiedDataset
from diffsynth.data.video import count_frames, load_video_frames, usable_frames, video_kind

pytest.importorskip("av")
from diffsynth.data.sample_video import write_mp4  # noqa: E402  (PyAV writer)


def numbered_frames(n, size=(64, 48)):
    """Frame i is a flat grey of brightness 10*i, so decoded frames can be told apart."""
    return [Image.new("RGB", size, (10 * i,) * 3) for i in range(n)]


def brightness(image):
    return float(np.asarray(image).mean())


@pytest.mark.parametrize("total, num_frames, tdf, tdr, expected", [
    (12, 81, 4, 1, 9), (17, 81, 4, 1, 17), (100, 81, 4, 1, 81), (12, 6, 4, 1, 5), (3, 81, 4, 1, 1),
    (12, 81, 1, 0, 12), (20, 81, 8, 1, 17), (0, 81, 4, 1, 0),
])
def test_usable_frames_is_the_largest_valid_prefix(total, num_frames, tdf, tdr, expected):
    assert usable_frames(total, num_frames, tdf, tdr) == expected


def test_mp4_gives_the_first_4k_plus_1_frames_in_order(tmp_path):
    path = tmp_path / "clip.mp4"
    write_mp4(path, numbered_frames(12))
    assert count_frames(str(path)) == 12
    frames = load_video_frames(str(path), num_frames=81)
    assert len(frames) == 9 and frames[0].size == (64, 48)        # native size from decord
    levels = [brightness(f) for f in frames]
    assert all(abs(level - 10 * i) < 4 for i, level in enumerate(levels)), levels   # prefix, no stride
    assert len(load_video_frames(str(path), num_frames=6)) == 5
    assert len(load_video_frames(str(path), num_frames=81, time_division_factor=1,
                                 time_division_remainder=0)) == 12


def test_video_column_in_dataset_is_a_list_of_resized_frames(tmp_path):
    write_mp4(tmp_path / "clip.mp4", numbered_frames(17, size=(96, 64)))
    (tmp_path / "m.csv").write_text("video,prompt\nclip.mp4,a clip\n")
    ds = UnifiedDataset(tmp_path, tmp_path / "m.csv", "video", ImageRules(max_pixels=1536, num_frames=13))
    video = ds[0]["video"]
    # 96x64 under 1536 px: s = 2, 48x32 -> floored to 48x32
    assert isinstance(video, list) and len(video) == 13 and {f.size for f in video} == {(48, 32)}
    fixed = UnifiedDataset(tmp_path, tmp_path / "m.csv", "video", ImageRules(4096, 32, 32, num_frames=5))[0]["video"]
    assert len(fixed) == 5 and {f.size for f in fixed} == {(32, 32)}


def test_gif_frames_via_pil(tmp_path):
    frames = numbered_frames(7, size=(32, 32))
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50)
    assert count_frames(str(tmp_path / "a.gif")) == 7
    loaded = load_video_frames(str(tmp_path / "a.gif"), num_frames=81)
    assert len(loaded) == 5 and all(f.mode == "RGB" for f in loaded)
    assert brightness(loaded[4]) == pytest.approx(40, abs=3)


def test_image_in_a_video_column_is_a_one_frame_video(tmp_path):
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "still.JPG")
    (tmp_path / "m.jsonl").write_text('{"video": "still.JPG", "prompt": "p"}\n')
    video = UnifiedDataset(tmp_path, tmp_path / "m.jsonl", "video", ImageRules(4096))[0]["video"]
    assert isinstance(video, list) and len(video) == 1 and video[0].size == (64, 64)


def test_extension_routing():
    assert [video_kind(p) for p in ("a.PNG", "b.bmp", "c.gif", "d.MOV", "e.webm", "f.mkv")] == \
        ["still", "still", "gif", "video", "video", "video"]
    with pytest.raises(ValueError, match="unsupported extension 'txt'"):
        video_kind("notes.txt")


def test_non_string_video_cell_is_an_error(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"video": ["a.mp4", "b.mp4"], "prompt": "p"}\n')
    with pytest.raises(RuntimeError, match="expected a video"):
        UnifiedDataset(tmp_path, tmp_path / "m.jsonl", "video", ImageRules(4096))[0]
