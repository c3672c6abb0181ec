"""Tests never read the workspace's params.yaml: `dvc exp run -S train.learning_rate=0.001` rewrites it, and
`make test` must pass all the same. The tests' params are the committed params.yaml (tests/helpers.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import DEFAULT_PARAMS_TEXT, REPO, shipped_params_text, tiny_config
from test_pipeline_dvc import copy_repo

# a user's tuning, as `dvc exp run -S ...` leaves it in params.yaml
USER_EDITS = {"train": {"learning_rate": 0.001, "num_epochs": 40}, "lora": {"lora_rank": 4},
              "model": {"torch_dtype": "bfloat16"}}


def shipped_params() -> dict:
    return yaml.safe_load(DEFAULT_PARAMS_TEXT)


def test_tiny_config_takes_the_tests_params(tmp_path):
    config = tiny_config(tmp_path, tmp_path / "metadata.csv").to_dict()
    expected = shipped_params()
    for section, values in USER_EDITS.items():
        for key in values:
            assert config[section][key] == expected[section][key], f"{section}.{key} came from the workspace"


def test_tiny_config_writes_only_under_tmp_path(tmp_path):
    """Training clears its output folders on a fresh run: none of them may be the workspace's."""
    config = tiny_config(tmp_path, tmp_path / "metadata.csv")
    for path in (config.output.output_path, config.sample.out_dir):
        assert tmp_path in Path(path).parents, path


def test_copied_project_runs_on_the_tests_params(tmp_path):
    root = copy_repo(tmp_path / "repo")
    assert (root / "params.yaml").read_text() == DEFAULT_PARAMS_TEXT


def test_the_tests_params_are_the_committed_ones_not_the_workspace_file(tmp_path):
    """An edited, uncommitted params.yaml changes nothing; outside a git checkout the file is the shipped one."""
    root = copy_repo(tmp_path / "repo")
    committed = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(committed.replace("learning_rate:", "learning_rate: 0.5 #", 1))
    assert shipped_params_text(root) == committed
    plain = tmp_path / "archive"
    plain.mkdir()
    (plain / "params.yaml").write_text("train: {}\n")
    assert shipped_params_text(plain) == "train: {}\n"


def test_no_hand_copy_of_the_params():
    assert not (REPO / "tests" / "default_params.yaml").exists()


@pytest.mark.slow
def test_edited_workspace_params_change_no_test(tmp_path):
    """The checks above and the config tests, run in a copy of this checkout whose params.yaml is edited."""
    work = copy_repo(tmp_path / "work")
    params = yaml.safe_load((work / "params.yaml").read_text())
    for section, values in USER_EDITS.items():
        assert all(params[section][k] != v for k, v in values.items()), "the edits must change something"
        params[section].update(values)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(work)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not edited_workspace",
                           "tests/test_tests_own_params.py", "tests/test_config.py"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "deselected" in proc.stdout
