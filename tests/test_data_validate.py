"""Validation: every bad row is reported with its row and reason; `error` stops the stage, `skip` drops rows."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from diffsynth.config import config_from_dict
from diffsynth.data.dataset import ImageRules
from diffsynth.data.metadata import read_metadata
from diffsynth.data.validate import check_dataset, validate_dataset

REPO = Path(__file__).resolve().parents[1]
RULES = ImageRules(max_pixels=4096)


def _png(path, size=(64, 64), colour=(200, 30, 30)):
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def messy(tmp_path):
    """A CSV dataset with one good row between each kind of bad row."""
    _png(tmp_path / "good.png")
    _png(tmp_path / "tiny.png", size=(8, 8))
    _png(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.mp4").write_bytes(os.urandom(3000))
    rows = [
        ("good.png", "fine", ""),                 # 0 ok
        ("missing.png", "no file", ""),           # 1 missing file
        ("truncated.png", "cut", ""),             # 2 truncated image
        ("good.png", "", ""),                     # 3 empty prompt -> NaN in CSV
        ("", "no image", ""),                     # 4 NaN file cell
        ("tiny.png", "too small", ""),            # 5 smaller than one 16x16 block
        ("good.png", "also fine", ""),            # 6 ok
    ]
    text = "image,prompt,note\n" + "".join(f"{i},{p},{n}\n" for i, p, n in rows)
    (tmp_path / "metadata.csv").write_text(text)
    return tmp_path


def _reasons(report):
    return {p["row"]: (p["column"], p["reason"]) for p in report.problems}


def test_every_bad_row_is_reported_with_its_reason(messy):
    report = validate_dataset(messy, messy / "metadata.csv", "image", RULES)
    assert (report.total_rows, report.valid_rows) == (7, 2)
    reasons = _reasons(report)
    assert sorted(reasons) == [1, 2, 3, 4, 5]
    assert reasons[1][0] == "image" and "file not found" in reasons[1][1] and "missing.png" in reasons[1][1]
    assert "cannot decode" in reasons[2][1] and "truncated" in reasons[2][1]
    assert reasons[3] == ("prompt", "prompt must be a non-empty string, got an empty cell (NaN/null)")
    assert reasons[4][0] == "image" and "empty cell" in reasons[4][1]
    assert "smaller than one 16x16 block" in reasons[5][1]
    assert report.resolutions == {"64x64": 2}
    assert not report.fatal and report.failed("error") and not report.failed("skip")
    # the NaN in the unused `note` column is a warning only
    assert {w["column"] for w in report.warnings} == {"note"}


def test_video_problems_corrupt_file_and_frame_count(tmp_path):
    pytest.importorskip("av")
    from diffsynth.data.sample_video import write_mp4

    write_mp4(tmp_path / "ok.mp4", [Image.new("RGB", (64, 64), (i * 20,) * 3) for i in range(12)])
    write_mp4(tmp_path / "short.mp4", [Image.new("RGB", (64, 64))] * 3)
    (tmp_path / "noise.mp4").write_bytes(os.urandom(3000))
    rows = [{"video": v, "prompt": "p"} for v in ("ok.mp4", "noise.mp4", "short.mp4", "clip.avi.txt")]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "clip.avi.txt").write_text("x")
    report = validate_dataset(tmp_path, tmp_path / "m.jsonl", "video", RULES)
    reasons = _reasons(report)
    assert report.valid_rows == 2 and sorted(reasons) == [1, 3]       # short.mp4 -> 1 frame is valid for 4k+1
    assert "cannot decode" in reasons[1][1] and "noise.mp4" in reasons[1][1]
    assert "unsupported extension 'txt'" in reasons[3][1]
    assert report.frame_counts == {9: 1, 1: 1} and report.resolutions == {"64x64x9": 1, "64x64x1": 1}
    # with time division 4 / remainder 0 (no valid count below 4) a 3-frame clip cannot be used
    strict = validate_dataset(tmp_path, tmp_path / "m.jsonl", "video",
                              ImageRules(4096, time_division_factor=4, time_division_remainder=0))
    assert "short.mp4 gives 1 usable frame(s)" in _reasons(strict)[2][1]


def test_bad_jsonl_line_extra_inputs_and_unknown_key(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "m.jsonl").write_text('{"image": "a.png", "prompt": "x", "edit": "a.png"}\n'
                                      '{"image": "a.png", "prompt": \n'
                                      '{"image": "a.png", "prompt": "no edit"}\n'
                                      '{"image": "a.png", "prompt": "  ", "edit": "a.png"}\n')
    report = validate_dataset(tmp_path, tmp_path / "m.jsonl", "image,edt", RULES, extra_inputs="edit")
    by_row = {}
    for p in report.problems:
        by_row.setdefault(p["row"], []).append(p)
    assert by_row[1][0]["line"] == 2 and "invalid JSON" in by_row[1][0]["reason"]
    assert by_row[2][0]["column"] == "edit" and "extra_inputs column 'edit' is missing" in by_row[2][0]["reason"]
    assert by_row[3][0]["column"] == "prompt" and "got '  '" in by_row[3][0]["reason"]
    [unknown] = by_row[None]
    assert unknown["column"] == "edt" and "did you mean 'edit'?" in unknown["reason"]
    assert report.fatal and report.failed("skip")       # a config mistake: skipping rows cannot fix it
    # DiffSynth's default "image,video" on an image dataset: absent `video` is only a warning
    ok = validate_dataset(tmp_path, tmp_path / "m.jsonl", "image,video", RULES, extra_inputs="edit",
                          derived_inputs=())
    assert all(p["row"] is not None for p in ok.problems)
    assert any(w["column"] == "video" for w in ok.warnings)


def test_unreadable_json_file_is_a_dataset_level_problem(tmp_path):
    (tmp_path / "m.json").write_text('[{"image": "a.png", "prompt": "x"}')
    report = validate_dataset(tmp_path, tmp_path / "m.json", "image", RULES)
    [problem] = report.problems
    assert problem["row"] is None and "invalid JSON at line 1" in problem["reason"] and report.fatal


def test_fixed_size_off_the_family_multiple_is_reported(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("image,prompt\na.png,x\n")
    report = validate_dataset(tmp_path, tmp_path / "m.csv", "image", ImageRules(4096, 100, 64))
    assert [p["column"] for p in report.problems] == ["resolution.height"] and report.fatal


def test_check_dataset_writes_cleaned_metadata_report_and_plot(messy, tmp_path):
    config = config_from_dict({"dataset": {"dataset_base_path": str(messy), "data_file_keys": "image",
                                           "dataset_metadata_path": str(messy / "metadata.csv")},
                               "resolution": {"max_pixels": 4096}, "lora": {"lora_base_model": "dit"}})
    out = tmp_path / "out"
    report = check_dataset(config, 16, out / "m.jsonl", out / "report.json", out / "res.csv")
    assert [r["prompt"] for r in read_metadata(out / "m.jsonl")] == ["fine", "also fine"]
    assert read_metadata(out / "m.jsonl")[0]["note"] is None             # NaN written as null
    saved = json.loads((out / "report.json").read_text())
    assert saved["invalid_rows"] == 5 and len(saved["problems"]) == 5
    assert (out / "res.csv").read_text().splitlines() == ["resolution,count", "64x64,2"]
    assert "dropped 5 row(s)" in report.summary("skip")


def _run_stage(project, messy, on_invalid):
    params = {"dataset": {"source": "local", "dataset_base_path": str(messy),
                          "dataset_metadata_path": str(messy / "metadata.csv"), "data_file_keys": "image",
                          "on_invalid": on_invalid},
              "resolution": {"max_pixels": 4096}, "lora": {"lora_base_model": "dit"}}
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "stages" / "data.py")], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def test_stage_error_mode_exits_non_zero_listing_rows(messy, tmp_path):
    result = _run_stage(tmp_path / "proj", messy, "error")
    assert result.returncode == 1, result.stderr
    assert "row 1 [image]: file not found" in result.stdout and "row 5 [image]" in result.stdout
    assert "dataset.on_invalid: skip" in result.stderr
    assert json.loads((tmp_path / "proj/reports/data.json").read_text())["invalid_rows"] == 5


def test_stage_skip_mode_trains_on_the_rest(messy, tmp_path):
    result = _run_stage(tmp_path / "proj", messy, "skip")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dropped 5 row(s)" in result.stdout
    rows = read_metadata(tmp_path / "proj/outputs/data/metadata.jsonl")
    assert [r["image"] for r in rows] == ["good.png", "good.png"]


def test_fatal_dataset_leaves_no_stale_metadata(tmp_path):
    (tmp_path / "m.json").write_text("[{")
    (tmp_path / "out").mkdir()
    (tmp_path / "out/m.jsonl").write_text('{"image": "old.png", "prompt": "stale"}\n')
    config = config_from_dict({"dataset": {"dataset_base_path": str(tmp_path), "data_file_keys": "image",
                                           "dataset_metadata_path": str(tmp_path / "m.json")},
                               "lora": {"lora_base_model": "dit"}})
    report = check_dataset(config, 16, tmp_path / "out/m.jsonl", tmp_path / "out/r.json", tmp_path / "out/p.csv")
    assert report.fatal and not (tmp_path / "out/m.jsonl").exists()
    assert json.loads((tmp_path / "out/r.json").read_text())["fatal"] is True


@pytest.fixture
def clip_in_image_column(tmp_path):
    """A real clip (and an upper-case .MOV) listed in the `image` column, as an image family's dataset."""
    pytest.importorskip("av")
    from diffsynth.data.sample_video import write_mp4

    write_mp4(tmp_path / "clip.mp4", [Image.new("RGB", (64, 64), (i * 20,) * 3) for i in range(5)])
    (tmp_path / "CLIP.MOV").write_bytes((tmp_path / "clip.mp4").read_bytes())
    _png(tmp_path / "good.png")
    (tmp_path / "metadata.csv").write_text("image,prompt\ngood.png,fine\nclip.mp4,a clip\nCLIP.MOV,a clip\n")
    return tmp_path


def test_clip_in_an_image_family_says_it_is_a_video_and_how_to_train_on_it(clip_in_image_column, tmp_path):
    """`diffsynth data validate` of a Qwen-Image run: the rows are named, not 'cannot identify image file'."""
    data = clip_in_image_column
    report_file = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "diffsynth.cli", "data", "validate", "--report", str(report_file),
                           "--dataset_base_path", str(data), "--dataset_metadata_path", str(data / "metadata.csv"),
                           "--data_file_keys", "image", "--max_pixels", "4096"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    problems = json.loads(report_file.read_text())["problems"]
    assert [(p["row"], p["column"]) for p in problems] == [(1, "image"), (2, "image")]
    for p, name in zip(problems, ("clip.mp4", "CLIP.MOV")):
        assert name in p["reason"] and "is a video" in p["reason"] and "cannot identify" not in p["reason"]
        assert "model.family: wan" in p["reason"] and "data_file_keys" in p["reason"]
    assert "row 1 [image]:" in proc.stdout and "is a video (.mp4" in proc.stdout


def test_clip_in_the_image_column_of_a_video_family_points_at_the_video_column(clip_in_image_column):
    data = clip_in_image_column
    report = validate_dataset(data, data / "metadata.csv", "image", RULES, video_keys=("video",))
    reasons = _reasons(report)
    assert sorted(reasons) == [1, 2]
    assert "is a video (.mov" in reasons[2][1] and "video column (video)" in reasons[2][1]
    assert "model.family: wan" not in reasons[1][1]
    # the same clip in the video column is a valid 5-frame video
    (data / "m2.csv").write_text("video,prompt\nclip.mp4,a clip\n")
    assert validate_dataset(data, data / "m2.csv", "video", RULES, video_keys=("video",)).valid_rows == 1
