"""Every shipped recipe: loads, has a tiny twin of the same recipe, names an accelerate config that exists, and
the twin's models stage pins every file training will read (training itself never downloads)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffsynth.presets import load_preset, write_preset
from diffsynth.models.tiny import TINY_PRESETS
from helpers import REPO

PRESETS = sorted(p for p in (REPO / "presets").glob("*.yaml") if p.name != "base.yaml")


def test_presets_exist_for_every_family():
    families = {load_preset(p).model.family for p in PRESETS}
    assert {"qwen_image", "flux", "wan"} <= families and len(PRESETS) >= 11


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_and_tiny_twin(preset):
    real, twin = load_preset(preset), load_preset(REPO / "presets" / "tiny" / preset.name)
    assert real.model.tiny_preset == "" and twin.model.tiny_preset in TINY_PRESETS
    assert real.model.family == twin.model.family
    assert (real.lora.lora_base_model, real.train.trainable_models) == (twin.lora.lora_base_model, twin.train.trainable_models)
    for config in (real, twin):
        name = config.extra["accelerate"]["config"]
        assert (REPO / "configs" / "accelerate" / f"{name}.yaml").exists(), f"{preset.name}: accelerate.config {name}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen-image-edit-lora", "flux.1-dev-lora", "flux.1-kontext-dev-lora",
                                  "wan2.1-i2v-14b-lora", "flux.2-klein-4b-lora", "flux.2-dev-lora"])
def test_models_stage_pins_weights_and_tokenizers(name, tmp_path):
    write_preset(REPO / "presets" / "tiny" / f"{name}.yaml", tmp_path / "params.yaml")
    env = dict(os.environ, DIFFSYNTH_MODEL_BASE_PATH=str(tmp_path / "models"), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "models.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((tmp_path / "outputs/models/manifest.json").read_text())
    config = yaml.safe_load((tmp_path / "params.yaml").read_text())["model"]
    wanted = [v for k, v in config.items() if k in ("tokenizer_path", "tokenizer_1_path", "tokenizer_2_path",
                                                      "processor_path") and v]
    assert wanted and all(w in manifest["models"] and manifest["models"][w] for w in wanted)
    for files in manifest["models"].values():
        assert all(f["size"] > 0 and len(f["sha256"]) == 64 for f in files)
        assert all((tmp_path / f["path"]).exists() for f in files if not Path(f["path"]).is_absolute())


ALL = sorted(p for p in (REPO / "presets").rglob("*.yaml") if p.name not in ("base.yaml", "cpu.yaml"))


@pytest.mark.parametrize("preset", ALL, ids=lambda p: p.relative_to(REPO / "presets").as_posix())
def test_preset_writes_the_params_file_it_means(preset, tmp_path):
    """`diffsynth preset` writes every params key, and reading it back gives the merged preset exactly."""
    from diffsynth.config import load_params
    from diffsynth.presets import preset_params

    out = write_preset(preset, tmp_path / "params.yaml")
    data = yaml.safe_load(out.read_text())
    merged = preset_params(preset)
    assert set(data) == set(merged) and all(set(data[s]) == set(merged[s]) for s in merged)
    assert load_params(out) == load_preset(preset)
    # an overlay read directly (`diffsynth train --params presets/...`) means the same run
    assert load_params(preset) == load_preset(preset)


def test_overlays_list_only_what_the_recipe_sets():
    """A real recipe's overlay sets no key to the value it would get anyway (base.yaml over the schema)."""
    from diffsynth.config import config_from_dict
    from diffsynth.presets import layers, preset_params

    raw = preset_params(REPO / "presets" / "base.yaml")
    base = {**config_from_dict(raw, check=False).to_dict(), "accelerate": raw["accelerate"]}
    for preset in PRESETS:
        (overlay,) = [data for path, data in layers(preset) if path.name == preset.name]
        merged = load_preset(preset).to_dict()
        same = [f"{s}.{k}" for s, values in overlay.items() for k in values if merged[s][k] == base[s][k]]
        assert same == [], f"{preset.name} repeats what base.yaml and the schema already say: {same}"


def test_bad_extends_names_the_file(tmp_path):
    from diffsynth.errors import ConfigError

    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_preset(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_preset(tmp_path / "c.yaml")
