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
                                  "wan2.1-i2v-14b-lora"])
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
