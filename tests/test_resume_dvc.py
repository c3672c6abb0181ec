"""Resume however the train stage is re-run: the state lives in a store outside the DVC outputs, so `dvc exp run`
checking out the last finished outputs first cannot replace it, and a run killed after its last step is
published from the store instead of being trained again."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from _state_store import Slot, run_key
from helpers import tiny_config
from test_pipeline_dvc import copy_workspace, dvc, pipeline_env


def tensors_equal(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def only_slot(store: Path) -> Path:
    slots = [p for p in store.iterdir() if p.is_dir()]
    assert len(slots) == 1, slots
    return slots[0]


def test_the_key_covers_every_param_that_shapes_the_run(tmp_path, shapes_dataset):
    """Other params (even the step count alone), other data or process count: another slot."""
    config = tiny_config(tmp_path, shapes_dataset, train__max_steps=12)
    other = tiny_config(tmp_path, shapes_dataset, train__max_steps=4)
    rows = [{"image": "a.png", "prompt": "a"}]
    assert len({run_key(other, rows, 1), run_key(config, rows, 1), run_key(config, [], 1),
                run_key(config, rows, 2)}) == 4
    # what changes neither the weights nor the log keeps the slot
    same = tiny_config(tmp_path, shapes_dataset, train__max_steps=12, dataset__dataset_num_workers=2,
                       train__resume="never", export__formats=["kohya"])
    assert run_key(same, rows, 1) == run_key(config, rows, 1)


def test_a_second_training_with_the_same_params_is_refused(tmp_path):
    from diffsynth.errors import ConfigError

    first, second = Slot(tmp_path, "k"), Slot(tmp_path, "k")
    first.acquire()
    with pytest.raises(ConfigError, match="same params is running"):
        second.acquire()
    first.release_lock()
    second.acquire()
    second.release_lock()


# ---------------------------------------------------------------------------------------- DVC, for real
# (one sample prompt: with none, sample.out_dir is never created and DVC reports the output missing)
SMALL = {"validation": {"num_samples": 1}, "sample": {"prompts": ["a red circle"], "num_inference_steps": 2},
         "train": {"max_steps": 4}}


@pytest.fixture(scope="module")
def repo(reproduced, tmp_path_factory):
    """A reproduced copy whose train stage ran once more on small params: DVC's cache holds finished outputs to
    check out."""
    root = copy_workspace(reproduced[0], tmp_path_factory.mktemp("repo") / "repo")
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in SMALL.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "commit", "-qam", "small"], cwd=root, check=True, env=pipeline_env(root))
    dvc(root, "repro", "train")
    return root


def exp_run(root: Path, *args: str) -> subprocess.Popen:
    """`dvc exp run train ...` in its own process group (a user's Ctrl-C / a scheduler's SIGTERM hits all)."""
    return subprocess.Popen([str(Path(sys.executable).parent / "dvc"), "exp", "run", "train", *args], cwd=root,
                            env=pipeline_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    return out


def mlflow_client(root: Path):
    import mlflow
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


@pytest.mark.slow
def test_killed_dvc_exp_run_resumes_in_the_same_mlflow_run(repo):
    params = ["-S", "train.max_steps=12", "-S", "output.save_steps=4"]
    store, ckpts = repo / ".resume", repo / "outputs" / "train" / "checkpoints"
    proc = exp_run(repo, *params)
    deadline, meta = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        metas = list(store.glob("*/state/meta.json"))
        if metas and json.loads(metas[0].read_text())["step"] >= 4:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + finish(proc)
    os.killpg(proc.pid, signal.SIGTERM)
    out = finish(proc)
    while True:  # the training process may outlive dvc by a moment
        try:
            os.killpg(proc.pid, 0)
            time.sleep(0.1)
        except ProcessLookupError:
            break
    assert proc.returncode != 0, out
    meta = json.loads(only_slot(store).joinpath("state", "meta.json").read_text())
    assert 4 <= meta["step"] < 12 and not meta["finished"], meta

    proc = exp_run(repo, *params)
    out = finish(proc)
    assert proc.returncode == 0, out[-4000:]
    assert f"resuming at step {meta['step']}" in out, out[-4000:]
    assert not any(store.glob("*/state")), "the stage releases the state once its outputs are written"
    run_id = json.loads((repo / "outputs/train/mlflow_run.json").read_text())["run_id"]
    assert run_id == meta["mlflow_run_id"]
    client = mlflow_client(repo)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert sorted({m.step for m in client.get_metric_history(run_id, "loss")}) == list(range(1, 13))
    with open(repo / "outputs/train/plots/loss.csv") as f:
        assert [int(r.split(",")[0]) for r in f.read().split()[1:]] == list(range(1, 13))
    resumed = repo.parent / "resumed_ckpts"
    shutil.copytree(ckpts, resumed)

    out = finish(exp_run(repo, "-f", *params))  # the same experiment, uninterrupted
    assert "resuming" not in out and json.loads((repo / "outputs/train/mlflow_run.json").read_text())["run_id"] != run_id
    for name in ("step-4.safetensors", "step-8.safetensors", "step-12.safetensors"):
        assert tensors_equal(ckpts / name, resumed / name), name


@pytest.mark.slow
def test_run_killed_after_its_last_step_is_published_not_retrained(repo):
    stage = repo / "stages" / "train.py"
    original = stage.read_text()
    anchor = "    if result.run_id is None and not result.loss_history:\n"
    assert anchor in original, "stages/train.py changed: move the simulated kill to just after training"
    # a kill that lands after training finished, before the stage wrote its outputs
    stage.write_text(original.replace(anchor, "    import signal; os.kill(os.getpid(), signal.SIGKILL)\n" + anchor))
    params = ["-S", "train.max_steps=8", "-S", "output.save_steps=4"]
    try:
        proc = exp_run(repo, *params)
        out = finish(proc)
    finally:
        stage.write_text(original)
    assert proc.returncode != 0, out[-4000:]
    slot = only_slot(repo / ".resume")
    meta = json.loads((slot / "state" / "meta.json").read_text())
    assert meta["finished"] and meta["step"] == 8
    trained = load_file(str(slot / "state" / "files" / "output" / "step-8.safetensors"))

    proc = exp_run(repo, *params)
    out = finish(proc)
    assert proc.returncode == 0, out[-4000:]
    assert "already finished (step 8" in out and "resuming" not in out
    assert "[train] step " not in out, "nothing is trained or evaluated again"
    published = load_file(str(repo / "outputs/train/checkpoints/step-8.safetensors"))
    assert published.keys() == trained.keys() and all(torch.equal(published[k], trained[k]) for k in trained)
    assert json.loads((repo / "outputs/train/metrics.json").read_text())["steps"] == 8
    assert json.loads((repo / "outputs/train/mlflow_run.json").read_text())["run_id"] == meta["mlflow_run_id"]
    assert not slot.exists()


def test_store_of_a_queued_experiment_is_the_real_projects(tmp_path, monkeypatch):
    """Queued and --temp experiments run in <project>/.dvc/tmp/exps/<tmp>/: their state must outlive that copy."""
    from _state_store import ENV_DIR, default_store

    workspace = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpabc"
    workspace.mkdir(parents=True)
    monkeypatch.delenv(ENV_DIR, raising=False)
    monkeypatch.chdir(workspace)
    assert default_store() == (tmp_path / "project" / ".resume").resolve()
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "elsewhere"))
    assert default_store() == tmp_path / "elsewhere"
