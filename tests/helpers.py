"""Building configs for tests from the tests' own params (tests/default_params.yaml, a copy of the shipped
params.yaml): the workspace's params.yaml is the user's, and `dvc exp run -S` rewrites it."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from diffsynth.config import Config, config_from_dict

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS_FILE = Path(__file__).resolve().parent / "default_params.yaml"
DEFAULT_PARAMS = yaml.safe_load(DEFAULT_PARAMS_FILE.read_text())


def tiny_config(tmp_path: Path, metadata: Path, **overrides) -> Config:
    """The default params (tiny Qwen-Image LoRA) on ``metadata``, writing into ``tmp_path``.

    ``overrides`` are ``section__key=value`` pairs.
    """
    data = copy.deepcopy(DEFAULT_PARAMS)
    data["dataset"]["dataset_base_path"] = str(metadata.parent)
    data["dataset"]["dataset_metadata_path"] = str(metadata)
    data["output"]["output_path"] = str(tmp_path / "out")
    data["sample"]["out_dir"] = str(tmp_path / "samples")  # the default is the workspace's, which a run clears
    data["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data["cache"] = {"enabled": False}  # online unless a test builds a cache (tests/test_cache.py)
    for key, value in overrides.items():
        section, name = key.split("__", 1)
        data[section][name] = value
    return config_from_dict(data)
