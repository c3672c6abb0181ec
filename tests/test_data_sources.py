"""Dataset sources: built-in samples, ModelScope (faked at download_modelscope_dataset), local folders."""
import time

import pytest

from diffsynth.config import DatasetConfig
from diffsynth.data import sources
from diffsynth.data.dataset import ImageRules, UnifiedDataset
from diffsynth.data.metadata import read_metadata
from diffsynth.data.sources import DatasetSourceError, fetch_dataset


def test_builtin_video_sample_is_short_mp4_clips(tmp_path):
    pytest.importorskip("av")
    out = fetch_dataset(DatasetConfig(source="builtin", builtin_name="moving_shapes"), tmp_path / "fetched")
    rows = read_metadata(out / "metadata.csv")
    assert len(rows) == 8 and all(r["video"].endswith(".mp4") for r in rows)
    assert all("moving" in r["prompt"] for r in rows)
    ds = UnifiedDataset(out, out / "metadata.csv", "video", ImageRules(4096))
    lengths = sorted({len(ds[i]["video"]) for i in range(len(ds))})
    assert lengths == [9, 13, 17]                     # the 12-frame clips train as 9 (4k+1)
    assert ds[0]["video"][0].size == (64, 64)
    assert not (tmp_path / "fetched.tmp").exists()


def test_unknown_builtin_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="moving_shapes"):
        fetch_dataset(DatasetConfig(source="builtin", builtin_name="nope"), tmp_path / "f")


def test_modelscope_download_lands_in_the_data_folder_with_patterns(tmp_path, monkeypatch):
    calls = []

    def fake(dataset_id, local_dir, allow_patterns=None):
        calls.append((dataset_id, allow_patterns))
        (local_dir / "qwen_image").mkdir(parents=True)
        (local_dir / "qwen_image" / "metadata.csv").write_text("image,prompt\n")

    monkeypatch.setattr(sources, "download_modelscope_dataset", fake)
    config = DatasetConfig(source="modelscope", modelscope_dataset_id="Org/ds",
                           modelscope_include="qwen_image/*, README.md")
    out = fetch_dataset(config, tmp_path / "fetched")
    assert calls == [("Org/ds", ["qwen_image/*", "README.md"])]
    assert (out / "qwen_image" / "metadata.csv").exists() and not (tmp_path / "fetched.tmp").exists()


def test_modelscope_failure_leaves_nothing_and_says_how_to_go_local(tmp_path, monkeypatch):
    def fake(dataset_id, local_dir, allow_patterns=None):
        local_dir.mkdir(parents=True)
        (local_dir / "half.bin").write_text("x")
        raise ConnectionError("cannot reach www.modelscope.cn")

    monkeypatch.setattr(sources, "download_modelscope_dataset", fake)
    with pytest.raises(DatasetSourceError, match="dataset.source: local") as err:
        fetch_dataset(DatasetConfig(source="modelscope", modelscope_dataset_id="Org/ds",
                                    modelscope_include="a/*"), tmp_path / "fetched")
    assert "modelscope download --dataset Org/ds --include 'a/*'" in str(err.value)
    assert not (tmp_path / "fetched.tmp").exists() and not (tmp_path / "fetched").exists()


def test_offline_download_fails_at_once_not_after_retries(tmp_path, monkeypatch):
    # .invalid never resolves (RFC 2606): the reachability check must fail before modelscope retries for ~22 s
    monkeypatch.setenv("MODELSCOPE_DOMAIN", "www.modelscope.invalid")
    start = time.monotonic()
    with pytest.raises(DatasetSourceError, match="cannot reach www.modelscope.invalid"):
        fetch_dataset(DatasetConfig(source="modelscope", modelscope_dataset_id="Org/ds"), tmp_path / "f")
    assert time.monotonic() - start < 5


def test_modelscope_without_id(tmp_path):
    with pytest.raises(DatasetSourceError, match="modelscope_dataset_id is empty"):
        fetch_dataset(DatasetConfig(source="modelscope"), tmp_path / "f")


def test_local_source_checks_the_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    out = fetch_dataset(DatasetConfig(source="local", dataset_base_path=str(tmp_path / "mine")), tmp_path / "f")
    assert "nothing was fetched" in (out / "README.md").read_text()
    with pytest.raises(DatasetSourceError, match="is not a folder"):
        fetch_dataset(DatasetConfig(source="local", dataset_base_path=str(tmp_path / "nope")), tmp_path / "f")
    with pytest.raises(DatasetSourceError, match="which this stage owns"):
        fetch_dataset(DatasetConfig(source="local", dataset_base_path=str(tmp_path / "f" / "x")), tmp_path / "f")
