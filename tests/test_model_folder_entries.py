"""A model entry whose pattern is a folder (DiffSynth's FLUX recipes: `black-forest-labs/FLUX.1-dev:text_encoder_2/`)
loads the folder's weights as one model: its safetensors set, a sharded set complete as its index lists it, with the
config.json beside. Tokenizer and processor folders stay folders."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from diffsynth.models import model_config as mc
from diffsynth.models.components import detect, load_component, load_tokenizer
from diffsynth.models.model_config import (
    ModelConfigError,
    fetch,
    folder_weight_files,
    parse_model_configs,
    parse_path_or_model_id,
)

REPO_ID = "diffsynth-tiny/FLUX.1-dev"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from diffsynth.models.tiny import write_tiny_model
    root = tmp_path_factory.mktemp("models")
    write_tiny_model("flux.1-dev", root / REPO_ID)
    return root


def entry(text: str):
    (config,) = parse_model_configs(None, text)
    return config


def shards_listed(folder) -> list[str]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return sorted(str(folder / name) for name in set(index["weight_map"].values()))


def test_folder_entry_is_the_folders_sharded_weights(base):
    folder = base / REPO_ID / "text_encoder_2"
    config = fetch(entry(f"{REPO_ID}:text_encoder_2/"), base_path=base)
    assert len(shards_listed(folder)) > 1  # the twin's T5 is sharded, as the real one is
    assert config.files() == config.weight_files() == shards_listed(folder)
    # the config.json beside the shards gives the architecture, as for the real T5-XXL
    assert detect(config.files(), "flux").component == "text_encoder_2"
    by_folder = load_component(config, "flux", torch.float32)[1].state_dict()
    by_glob = load_component(fetch(entry(f"{REPO_ID}:text_encoder_2/*.safetensors"), base_path=base), "flux",
                             torch.float32)[1].state_dict()
    assert by_folder.keys() == by_glob.keys() and all(torch.equal(by_folder[k], by_glob[k]) for k in by_glob)


def test_folder_without_slash_and_local_folder_load_the_same_files(base):
    folder = base / REPO_ID / "text_encoder_2"
    assert fetch(entry(f"{REPO_ID}:text_encoder_2"), base_path=base).files() == shards_listed(folder)
    (local,) = parse_model_configs(json.dumps([str(folder)]), None)  # --model_paths '["<folder>"]'
    assert fetch(local).files() == shards_listed(folder)


def test_tokenizer_folders_stay_folders(base):
    config = fetch(parse_path_or_model_id(f"{REPO_ID}:tokenizer_2/", ""), base_path=base)
    assert config.files() == [str(base / REPO_ID / "tokenizer_2")]
    assert load_tokenizer(config)("a red circle").input_ids
    local = fetch(parse_path_or_model_id(str(base / REPO_ID / "tokenizer"), ""))
    assert local.files() == [str(base / REPO_ID / "tokenizer")]


def test_folder_download_asks_for_weights_and_configs_only(tmp_path, monkeypatch, base):
    calls = []

    def fake_download(model_id, local_dir, allow, ignore):
        calls.append((allow, ignore))
        shutil.copytree(base / REPO_ID / "text_encoder_2", local_dir / "text_encoder_2")

    monkeypatch.setattr(mc, "download", fake_download)
    config = fetch(entry("black-forest-labs/FLUX.1-dev:text_encoder_2/"), base_path=tmp_path, skip=False)
    # pickled copies in the folder would be refused anyway: never downloaded
    assert calls == [(["text_encoder_2/*.safetensors", "text_encoder_2/*.json"], [])]
    assert config.files() == shards_listed(tmp_path / "black-forest-labs/FLUX.1-dev/text_encoder_2")


def test_incomplete_shard_set_is_refused_by_name(tmp_path, base):
    folder = tmp_path / "text_encoder_2"
    shutil.copytree(base / REPO_ID / "text_encoder_2", folder)
    lost = shards_listed(folder)[-1]
    (folder / lost).unlink()
    with pytest.raises(ModelConfigError, match=rf"{lost.rsplit('/', 1)[-1]}.*incomplete"):
        folder_weight_files(folder, "x:text_encoder_2/")


def test_pickled_only_and_empty_folders_are_refused(tmp_path):
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelConfigError, match="only pickled files .*pytorch_model.bin"):
        folder_weight_files(tmp_path / "pickled", "x:pickled/")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelConfigError, match="holds no .safetensors"):
        folder_weight_files(tmp_path / "empty", "x:empty/")


def test_a_variant_beside_the_weights_is_left_out_and_two_models_are_refused(tmp_path, base):
    folder = tmp_path / "text_encoder_2"
    shutil.copytree(base / REPO_ID / "text_encoder_2", folder)
    shards = shards_listed(folder)
    shutil.copyfile(shards[0], folder / "model.fp16.safetensors")  # from_pretrained skips variants too
    assert folder_weight_files(folder) == shards
    shutil.copyfile(shards[0], folder / "other.safetensors")
    with pytest.raises(ModelConfigError, match="several weight sets .*model, model.fp16, other"):
        folder_weight_files(folder, "x:text_encoder_2/")
