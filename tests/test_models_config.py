"""Model flags, fetching (ModelScope faked at its boundary) and clear failures on bad files."""
from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import save_file

from diffsynth.models import model_config as mc
from diffsynth.models.components import DetectionError, detect, load_component
from diffsynth.models.model_config import ModelConfig, ModelConfigError, fetch, parse_model_configs, parse_path_or_model_id
from diffsynth.models.safetensors_io import ModelFileError, save_sharded


def tiny_dit_state() -> dict:
    from diffusers import QwenImageTransformer2DModel
    torch.manual_seed(0)
    return QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
                                       num_attention_heads=2, joint_attention_dim=16,
                                       axes_dims_rope=(2, 6, 8)).state_dict()


def test_both_flags_mixed_and_split_on_last_colon():
    configs = parse_model_configs('["a.safetensors", ["s1.safetensors", "s2.safetensors"]]',
                                  "Qwen/Qwen-Image:transformer/diffusion_pytorch_model*.safetensors, "
                                  "Wan-AI/Wan2.1-T2V-1.3B:models_t5_umt5-xxl-enc-bf16.pth")
    assert [c.path for c in configs[:2]] == ["a.safetensors", ["s1.safetensors", "s2.safetensors"]]
    assert (configs[2].model_id, configs[2].origin_file_pattern) == ("Qwen/Qwen-Image", "transformer/diffusion_pytorch_model*.safetensors")
    # Wan's pickled files come from DiffSynth's converted-safetensors repo (redirect_common_files)
    assert (configs[3].model_id, configs[3].origin_file_pattern) == (
        "DiffSynth-Studio/Wan-Series-Converted-Safetensors", "models_t5_umt5-xxl-enc-bf16.safetensors")
    assert configs[3].source_string == "Wan-AI/Wan2.1-T2V-1.3B:models_t5_umt5-xxl-enc-bf16.pth"


def test_model_paths_json_error_names_position_and_stray_comma():
    with pytest.raises(ModelConfigError, match=r"line 1 column \d+.*stray comma"):
        parse_model_configs('["a.safetensors",]', None)
    with pytest.raises(ModelConfigError, match="item 1"):
        parse_model_configs('["a.safetensors", 3]', None)


def test_tokenizer_path_or_model_id(tmp_path):
    assert parse_path_or_model_id(str(tmp_path), "x:y/").path == str(tmp_path)
    c = parse_path_or_model_id(None, "Qwen/Qwen-Image:tokenizer/")
    assert (c.model_id, c.origin_file_pattern) == ("Qwen/Qwen-Image", "tokenizer/")
    with pytest.raises(ModelConfigError, match="neither an existing path"):
        parse_path_or_model_id("no_such_folder", "")


def test_shard_list_and_glob_pattern_load_the_same_model(tmp_path):
    state = tiny_dit_state()
    shards = [str(p) for p in save_sharded(state, tmp_path / "transformer", "diffusion_pytorch_model", 3)]
    by_list = load_component(fetch(ModelConfig(path=shards, source_string="list")), "qwen_image", torch.float32)[1]
    glob_config = fetch(ModelConfig(path=str(tmp_path / "transformer" / "*.safetensors"), source_string="glob"))
    assert glob_config.path == shards
    by_glob = load_component(glob_config, "qwen_image", torch.float32)[1]
    for k, v in state.items():
        assert torch.equal(by_list.state_dict()[k], v) and torch.equal(by_glob.state_dict()[k], v)


def test_missing_shard_is_named(tmp_path):
    shards = save_sharded(tiny_dit_state(), tmp_path, "diffusion_pytorch_model", 3)
    with pytest.raises(ModelFileError, match="00003-of-00003.*exist on disk"):
        detect([str(shards[0]), str(shards[1])], "qwen_image")
    shards[2].unlink()
    with pytest.raises(ModelFileError, match="missing on disk"):
        detect([str(shards[0]), str(shards[1])], "qwen_image")


def test_truncated_file_says_fetch_again(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"img_in.weight": torch.zeros(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match=r"model\.safetensors.*truncated"):
        detect([str(path)], "qwen_image")


def test_unknown_file_shows_keys_and_known_kinds(tmp_path):
    path = tmp_path / "mystery.safetensors"
    save_file({"foo.bar.weight": torch.zeros(2), "baz.weight": torch.zeros(2)}, str(path))
    with pytest.raises(DetectionError) as e:
        detect([str(path)], "qwen_image")
    msg = str(e.value)
    assert "mystery.safetensors" in msg and "baz.weight" in msg and "Known kinds" in msg and "flux" in msg


def test_partial_fine_tuned_key_set_is_recognised_but_not_loaded_silently(tmp_path):
    state = {k: v for k, v in tiny_dit_state().items() if not k.startswith("transformer_blocks.1.attn.to_")}
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    assert detect([str(path)], "qwen_image").kind.name == "qwen_image_dit"
    only_block = {k: v for k, v in state.items() if k.startswith("transformer_blocks.0.img_mod")}
    save_file(only_block, str(tmp_path / "lora_like.safetensors"))
    # a handful of keys is still recognised as a Qwen-Image DiT; its architecture then needs the config
    with pytest.raises(DetectionError, match="qwen_image dit.*config.json"):
        detect([str(tmp_path / "lora_like.safetensors")], "qwen_image")
    with pytest.raises(DetectionError, match=r"\d+ missing.*partial"):
        load_component(ModelConfig(path=str(path), source_string="partial"), "qwen_image", torch.float32)


def test_download_called_with_modelscope_arguments(tmp_path, monkeypatch):
    calls = []

    def fake_download(model_id, local_dir, allow, ignore):
        calls.append((model_id, local_dir, allow, ignore))
        (local_dir / "transformer").mkdir(parents=True, exist_ok=True)
        for n in (1, 2):
            (local_dir / "transformer" / f"diffusion_pytorch_model-0000{n}-of-00002.safetensors").write_bytes(b"x")

    monkeypatch.setattr(mc, "download", fake_download)
    (tmp_path / "Qwen/Qwen-Image/transformer").mkdir(parents=True)
    (tmp_path / "Qwen/Qwen-Image/transformer/config.json").write_text("{}")
    config = fetch(parse_model_configs(None, "Qwen/Qwen-Image:transformer/diffusion_pytorch_model*.safetensors")[0],
                   base_path=tmp_path, skip=False)
    model_id, local_dir, allow, ignore = calls[0]
    assert model_id == "Qwen/Qwen-Image" and local_dir == tmp_path / "Qwen/Qwen-Image"
    assert allow == ["transformer/diffusion_pytorch_model*.safetensors", "transformer/*.json"]
    assert ignore == ["transformer/config.json"]  # present files are not fetched again
    assert len(config.path) == 2
    # a second fetch skips the shards that are now present
    fetch(parse_model_configs(None, "Qwen/Qwen-Image:transformer/diffusion_pytorch_model*.safetensors")[0],
          base_path=tmp_path, skip=False)
    assert "transformer/diffusion_pytorch_model-00001-of-00002.safetensors" in calls[1][3]


def test_real_download_passes_modelscope_arguments(tmp_path, monkeypatch):
    seen = {}
    import modelscope
    monkeypatch.setattr(mc, "hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(modelscope, "snapshot_download", lambda model_id, **kw: seen.update(model_id=model_id, **kw))
    mc.download("Qwen/Qwen-Image", tmp_path / "Qwen/Qwen-Image", ["vae/*"], ["vae/config.json"])
    from modelscope.hub.callback import ProgressCallback
    [callback] = seen.pop("progress_callbacks")  # per-file progress lines in logs
    assert issubclass(callback, ProgressCallback)
    assert seen == {"model_id": "Qwen/Qwen-Image", "local_dir": str(tmp_path / "Qwen/Qwen-Image"),
                    "allow_file_pattern": ["vae/*"], "ignore_file_pattern": ["vae/config.json"]}


def test_skip_download_with_files_present(tmp_path, monkeypatch):
    monkeypatch.setattr(mc, "download", lambda *a: pytest.fail("must not download"))
    monkeypatch.setenv("DIFFSYNTH_SKIP_DOWNLOAD", "TRUE")
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(tmp_path))
    (tmp_path / "Qwen/Qwen-Image/vae").mkdir(parents=True)
    (tmp_path / "Qwen/Qwen-Image/vae/diffusion_pytorch_model.safetensors").write_bytes(b"x")
    config = fetch(parse_model_configs(None, "Qwen/Qwen-Image:vae/diffusion_pytorch_model.safetensors")[0])
    assert config.path == str(tmp_path / "Qwen/Qwen-Image/vae/diffusion_pytorch_model.safetensors")
    with pytest.raises(ModelConfigError, match="DIFFSYNTH_SKIP_DOWNLOAD is set"):
        fetch(parse_model_configs(None, "Qwen/Qwen-Image:transformer/*.safetensors")[0])


def test_offline_failure_is_quick_and_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(mc, "hub_reachable", lambda *a, **k: False)
    start = time.perf_counter()
    with pytest.raises(ModelConfigError) as e:
        fetch(parse_model_configs(None, "Qwen/Qwen-Image:vae/*.safetensors")[0], base_path=tmp_path, skip=False)
    elapsed = time.perf_counter() - start
    print(f"offline failure after {elapsed:.3f} s: {e.value}")
    assert elapsed < 1.0
    assert "Offline?" in str(e.value) and "DIFFSYNTH_SKIP_DOWNLOAD=true" in str(e.value) and "not reachable" in str(e.value)


def test_hub_reachable_gives_up_quickly_on_a_closed_port():
    start = time.perf_counter()
    assert mc.hub_reachable("http://127.0.0.1:9", timeout=0.5) is False
    assert time.perf_counter() - start < 2
