"""Known errors (config, data, model file, tracking, export, unknown tiny preset) end the `diffsynth` commands and
the DVC stage scripts with ONE line naming the culprit and the fix, a non-zero exit and no traceback;
--debug / DIFFSYNTH_DEBUG=1 shows the traceback; anything else (a bug) keeps its traceback."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from torch.utils.data import DataLoader, Dataset

from helpers import DEFAULT_PARAMS, REPO, tiny_config

SHARD = "transformer/diffusion_pytorch_model-00002-of-00003.safetensors"


def run(args, cwd=None, env=None, timeout=300):
    full_env = {k: v for k, v in os.environ.items() if k != "DIFFSYNTH_DEBUG"}
    full_env.update({"PYTHONPATH": str(REPO), **(env or {})})
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def cli(*args, **kwargs):
    return run(["-m", "diffsynth.cli", *args], **kwargs)


def stage(name, project, **kwargs):
    return run([str(REPO / "stages" / f"{name}.py")], cwd=project, **kwargs)


def one_error_line(proc, *culprits) -> str:
    """The one ``error...`` line of a failed command; asserts exit code, no traceback, and the culprits named."""
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error")]
    assert len(errors) == 1, out
    for culprit in culprits:
        assert culprit in errors[0], errors[0]
    return errors[0]


def write_params(project: Path, **sections) -> Path:
    """The tests' default params with ``sections`` merged in (section -> {key: value}), as project/params.yaml."""
    params = json.loads(json.dumps(DEFAULT_PARAMS))
    for section, values in sections.items():
        params.setdefault(section, {}).update(values)
    project.mkdir(parents=True, exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


@pytest.fixture(scope="module")
def broken_model_base(tmp_path_factory) -> Path:
    """The tiny Qwen-Image preset with its second DiT shard cut short, as an interrupted download leaves it."""
    from diffsynth.models.tiny import write_tiny_model

    base = tmp_path_factory.mktemp("broken_models")
    folder = write_tiny_model("qwen-image", base / "diffsynth-tiny" / "Qwen-Image")
    shard = folder / SHARD
    shard.write_bytes(shard.read_bytes()[:5000])
    return base


# ----------------------------------------------------------------------------------------------- the CLI

def test_cli_config_error_names_the_flag():
    line = one_error_line(cli("params", "--from-args", "--learning_rate", "abc"), "train.learning_rate", "abc")
    assert line.startswith("error: ")


def test_cli_unknown_tiny_preset_names_it_and_the_choices(tmp_path):
    one_error_line(cli("tiny-model", "--family", "qwen-imag", "--out", str(tmp_path / "m")),
                   "'qwen-imag'", "did you mean 'qwen-image'", "wan2.1-t2v-1.3b")
    assert not (tmp_path / "m").exists()


def test_cli_export_errors_name_the_checkpoint(tmp_path):
    one_error_line(cli("export", "--checkpoint", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "o")),
                   "--checkpoint", "none.safetensors", "does not exist")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    one_error_line(cli("export", "--checkpoint", str(bad), "--out", str(tmp_path / "o")), str(bad), "copy it again")
    lora = tmp_path / "lora.safetensors"  # readable, but in a format export cannot name
    from safetensors.torch import save_file
    import torch
    save_file({"x.weight": torch.zeros(2)}, str(lora))
    proc = cli("export", "--checkpoint", str(lora), "--out", str(tmp_path / "o"))
    one_error_line(proc)
    assert not (tmp_path / "o").exists()


def test_cli_data_validate_without_metadata_names_the_flag():
    one_error_line(cli("data", "validate", "--dataset_base_path", "."), "dataset.dataset_metadata_path")


@pytest.mark.slow
def test_cli_train_on_a_truncated_shard_names_the_file_and_the_fix(tmp_path, shapes_dataset, broken_model_base):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_config(tmp_path, shapes_dataset).to_dict()))
    proc = run(["-m", "diffsynth.train", "--params", str(params)],
               env={"DIFFSYNTH_MODEL_BASE_PATH": str(broken_model_base), "DIFFSYNTH_SKIP_DOWNLOAD": "true"})
    one_error_line(proc, SHARD, "truncated", "delete it and run `dvc repro")


@pytest.mark.slow
def test_debug_flag_and_variable_show_the_traceback(tmp_path):
    args = ("tiny-model", "--family", "qwen-imag", "--out", str(tmp_path / "m"))
    for proc in (cli(*args, "--debug"), cli(*args, env={"DIFFSYNTH_DEBUG": "1"})):
        assert proc.returncode != 0
        assert "Traceback" in proc.stderr and "ModelConfigError: Unknown tiny preset 'qwen-imag'" in proc.stderr
    assert "Traceback" not in cli(*args, env={"DIFFSYNTH_DEBUG": "0"}).stderr


def test_tracking_error_is_one_line_and_a_bug_keeps_its_traceback():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    tracking = ("import sys; from diffsynth.errors import run_main; from diffsynth.tracking import check_reachable; "
                f"sys.exit(run_main(lambda: check_reachable('http://127.0.0.1:{port}')))")
    one_error_line(run(["-c", tracking]), f"http://127.0.0.1:{port}", "tracking.uri")
    bug = run(["-c", "import sys; from diffsynth.errors import run_main; sys.exit(run_main(lambda: 1 / 0))"])
    assert bug.returncode != 0 and "Traceback" in bug.stderr and "ZeroDivisionError" in bug.stderr


# ------------------------------------------------------------------------------------------ the DVC stages

def test_stage_config_error_names_the_key(tmp_path):
    project = write_params(tmp_path / "p", train={"learnign_rate": 0.1})
    one_error_line(stage("fetch_data", project), "params.yaml", "train.learnign_rate", "learning_rate")


def test_stage_data_errors_name_the_param(tmp_path):
    project = write_params(tmp_path / "p", dataset={"source": "local", "dataset_base_path": str(tmp_path / "nope")})
    one_error_line(stage("fetch_data", project), "dataset.dataset_base_path", str(tmp_path / "nope"))
    project = write_params(tmp_path / "q", dataset={"dataset_metadata_path": ""})
    one_error_line(stage("data", project), "dataset.dataset_metadata_path")


@pytest.mark.slow
def test_stage_unknown_tiny_preset_and_truncated_shard(tmp_path):
    project = write_params(tmp_path / "p", model={"tiny_preset": "qwen-imag"})
    one_error_line(stage("models", project, env={"DIFFSYNTH_MODEL_BASE_PATH": str(tmp_path / "models")}),
                   "'qwen-imag'", "model.tiny_preset", "did you mean 'qwen-image'")
    from safetensors.torch import save_file
    import torch
    weights = tmp_path / "dit.safetensors"
    save_file({"w": torch.zeros(64, 64)}, str(weights))
    weights.write_bytes(weights.read_bytes()[:-100])
    project = write_params(tmp_path / "q", model={"tiny_preset": "", "model_paths": json.dumps([str(weights)]),
                                                   "model_id_with_origin_paths": None})
    one_error_line(stage("models", project), str(weights), "truncated", "dvc repro -f -s models")
    proc = stage("models", project, env={"DIFFSYNTH_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ModelFileError" in proc.stderr
    assert not (project / "outputs" / "models" / "manifest.json").exists()


@pytest.mark.slow
def test_export_stage_error_names_the_checkpoint(tmp_path, model_base):
    project = write_params(tmp_path / "p")
    (project / "outputs/train").mkdir(parents=True)
    (project / "outputs/train/metrics.json").write_text(json.dumps({"last_checkpoint": "gone.safetensors"}))
    (project / "outputs/train/mlflow_run.json").write_text("{}")
    proc = stage("export", project, env={"DIFFSYNTH_MODEL_BASE_PATH": str(model_base)})
    one_error_line(proc, "training checkpoint gone.safetensors", "does not exist")
    assert not (project / "outputs/export").exists()


@pytest.mark.slow
def test_train_stage_under_accelerate_launch_one_line(tmp_path, shapes_dataset, broken_model_base):
    """The train stage as dvc.yaml runs it (through diffsynth.launch): the launcher adds no traceback."""
    project = write_params(tmp_path / "p", dataset={"dataset_base_path": str(shapes_dataset.parent)},
                           output={"output_path": str(tmp_path / "out")},
                           tracking={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    rows = pd.read_csv(shapes_dataset).to_dict("records")
    (project / "outputs/data").mkdir(parents=True)
    (project / "outputs/data/metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for path in ("reports/data.json", "outputs/models/manifest.json"):
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text("{}")
    cmd = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["cmd"]
    assert cmd.startswith("python -m diffsynth.launch ")
    args = cmd.split()[1:]
    args = [a.replace("${accelerate.config}", "single").replace("${accelerate.num_processes}", "1") for a in args]
    args = [str(REPO / a) if a.startswith(("configs/", "stages/")) else a for a in args]
    env = {"DIFFSYNTH_MODEL_BASE_PATH": str(broken_model_base)}
    one_error_line(run(args, cwd=project, env=env), SHARD, "truncated")
    debug = run(args, cwd=project, env={**env, "DIFFSYNTH_DEBUG": "1"})
    assert debug.returncode != 0 and "ModelFileError" in debug.stderr and "Traceback" in debug.stderr


class _BadRows(Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        from diffsynth.data.dataset import DataLoadError
        raise DataLoadError("row 0 [image]: cannot decode a.png")


def test_error_from_a_dataloader_worker_is_still_one_line():
    """torch re-raises a worker's error with the worker's traceback inside the message; the line keeps only ours."""
    from diffsynth.errors import DiffSynthError, one_line
    with pytest.raises(DiffSynthError) as caught:
        next(iter(DataLoader(_BadRows(), num_workers=1)))
    assert "Traceback" in str(caught.value)
    assert one_line(caught.value) == "error: row 0 [image]: cannot decode a.png"
