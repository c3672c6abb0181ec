"""Building configs for tests from the shipped defaults: params.yaml as committed (``git show HEAD:./params.yaml``),
not the workspace's file, which is the user's (`dvc exp run -S` rewrites it). Outside a git checkout (an unpacked
archive) the file itself is the shipped one. No copy is kept: a changed default reaches the tests once committed."""
from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import yaml

from diffsynth.config import Config, config_from_dict

REPO = Path(__file__).resolve().parents[1]


def shipped_params_text(repo: Path = REPO) -> str:
    """The committed params.yaml of ``repo`` (its workspace file when ``repo`` is no git checkout)."""
    try:
        proc = subprocess.run(["git", "show", "HEAD:./params.yaml"], cwd=repo, capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        proc = None
    if proc is not None and proc.returncode == 0:
        return proc.stdout
    return (repo / "params.yaml").read_text()


DEFAULT_PARAMS_TEXT = shipped_params_text()
DEFAULT_PARAMS = yaml.safe_load(DEFAULT_PARAMS_TEXT)


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
