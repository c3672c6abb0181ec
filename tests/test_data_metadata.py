"""Metadata formats and UnifiedDataset row semantics (DiffSynth's unified_dataset.py)."""
import json
import math

import pytest
from PIL import Image

from diffsynth.data.dataset import DataLoadError, ImageRules, UnifiedDataset, split_keys
from diffsynth.data.metadata import MetadataError, read_metadata, read_metadata_records

RULES = ImageRules(max_pixels=4096)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "img").mkdir()
    for name, colour, size in (("a.png", (255, 0, 0), (64, 64)), ("b.jpg", (0, 0, 255), (96, 64)),
                               ("c.webp", (0, 255, 0), (80, 80))):
        Image.new("RGB", size, colour).save(tmp_path / "img" / name)
    return tmp_path


def test_csv_json_jsonl_and_other_extensions_give_the_same_rows(folder):
    rows = [{"image": "img/a.png", "prompt": "red"}, {"image": "img/b.jpg", "prompt": "blue"}]
    (folder / "m.json").write_text(json.dumps(rows))
    (folder / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")   # blank line tolerated
    csv_text = "image,prompt\nimg/a.png,red\nimg/b.jpg,blue\n"
    (folder / "m.csv").write_text(csv_text)
    (folder / "m.txt").write_text(csv_text)   # any other extension is read as CSV
    for name in ("m.json", "m.jsonl", "m.csv", "m.txt"):
        assert read_metadata(folder / name) == rows, name


def test_empty_csv_cell_is_nan(folder):
    (folder / "m.csv").write_text("image,prompt,seed\nimg/a.png,,3\n")
    row = read_metadata(folder / "m.csv")[0]
    assert math.isnan(row["prompt"]) and row["seed"] == 3 and type(row["seed"]) is int


def test_bad_json_names_file_and_position(folder):
    (folder / "m.json").write_text('[{"image": "img/a.png", "prompt": "x"},\n {"image": ]')
    with pytest.raises(MetadataError, match=r"m\.json: invalid JSON at line 2"):
        read_metadata(folder / "m.json")
    (folder / "m2.json").write_text('{"image": "img/a.png"}')
    with pytest.raises(MetadataError, match="must hold a list of objects"):
        read_metadata(folder / "m2.json")


def test_bad_jsonl_line_is_one_bad_record_not_a_dead_file(folder):
    (folder / "m.jsonl").write_text('{"image": "img/a.png", "prompt": "x"}\n{"image": oops}\n'
                                    '{"image": "img/b.jpg", "prompt": "y"}\n')
    records = read_metadata_records(folder / "m.jsonl")
    assert [r.error is None for r in records] == [True, False, True]
    assert records[1].line == 2 and records[1].index == 1 and "invalid JSON" in records[1].error
    with pytest.raises(MetadataError, match=r"m\.jsonl:2: invalid JSON"):
        read_metadata(folder / "m.jsonl")


def test_paths_joined_to_base_and_non_file_keys_pass_through(folder):
    (folder / "m.csv").write_text("image,prompt,seed\nimg/b.jpg,blue,7\n")
    ds = UnifiedDataset(folder, folder / "m.csv", "image", RULES)
    item = ds[0]
    assert isinstance(item["image"], Image.Image) and item["image"].size == (64, 48)  # 96x64 under 4096 px
    assert item["image"].getpixel((10, 10))[2] > 200
    assert item["prompt"] == "blue" and item["seed"] == 7


def test_list_valued_cells_load_every_image(folder):
    rows = [{"image": "img/a.png", "edit_image": ["img/b.jpg", "img/c.webp"], "prompt": "p"}]
    (folder / "m.jsonl").write_text(json.dumps(rows[0]) + "\n")
    ds = UnifiedDataset(folder, folder / "m.jsonl", ["image", "edit_image"], RULES)
    item = ds[0]
    assert isinstance(item["edit_image"], list) and len(item["edit_image"]) == 2
    assert [im.size for im in item["edit_image"]] == [(64, 48), (64, 64)]


def test_repeat_and_data_file_keys(folder):
    (folder / "m.csv").write_text("image,prompt\nimg/a.png,red\nimg/b.jpg,blue\n")
    ds = UnifiedDataset(folder, folder / "m.csv", "image,video", RULES, repeat=3)
    assert len(ds) == 6
    assert ds[3]["prompt"] == "blue"                     # index % rows
    assert split_keys(" image , edit_image,") == ["image", "edit_image"]
    raw = UnifiedDataset(folder, folder / "m.csv", [], RULES)
    assert raw[0]["image"] == "img/a.png"                # not in data_file_keys: passes through raw
    assert len(UnifiedDataset(folder, folder / "m.csv", "image", RULES, max_data_items=5)) == 5


def test_missing_file_error_names_row_and_column(folder):
    (folder / "m.csv").write_text("image,prompt\nimg/a.png,red\nimg/nope.png,blue\n")
    ds = UnifiedDataset(folder, folder / "m.csv", "image", RULES)
    with pytest.raises(DataLoadError, match=r"row 1, column 'image'.*nope\.png"):
        ds[1]
