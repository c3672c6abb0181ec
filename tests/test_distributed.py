"""Multi-process training run for real on CPU (gloo): two machines on one host, and FSDP2 sharding, each
through the shipped accelerate config and compared with 2-process DDP on one machine."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import REPO, tiny_config

CONFIGS = REPO / "configs" / "accelerate"
STEPS = 6
# A full fine-tune of the tiny Qwen-Image DiT: every DiT weight is trained, so sharding splits trained tensors.
FULL = dict(train__trainable_models="dit", lora__lora_base_model=None, train__max_steps=STEPS,
            validation__num_samples=1, sample__prompts=[])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _machine(folder, metadata, model_base, **overrides):
    """A working folder with its own params.yaml; output.output_path is relative, so each folder is a disk."""
    folder.mkdir(parents=True, exist_ok=True)
    data = tiny_config(folder, metadata, **{**FULL, **overrides}).to_dict()
    data["output"]["output_path"] = "out"
    (folder / "params.yaml").write_text(yaml.safe_dump(data))
    env = dict(os.environ, DIFFSYNTH_MODEL_BASE_PATH=str(model_base), DIFFSYNTH_SKIP_DOWNLOAD="true",
               PYTHONPATH=str(REPO), ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    return env


def _launch(config: str, *flags: str) -> list[str]:
    # the train stage's command (dvc.yaml) with CPU-friendly overrides; -m diffsynth.train instead of
    # stages/train.py, which needs the DVC stage outputs
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"{config}.yaml"),
            "--num_processes", "2", "--mixed_precision", "no", *flags, "-m", "diffsynth.train", "--params",
            "params.yaml"]


def _checked(proc_or_result, out: str, folder):
    assert proc_or_result.returncode == 0, out[-4000:]
    args = json.loads((folder / "out/training_args.json").read_text())
    line = next(l for l in out.splitlines() if "checksums per rank" in l)
    sums = json.loads(line.split(":", 1)[1].strip())
    assert args["world_size"] == 2 and len(sums) == 2 and sums[0] == sums[1], (args["world_size"], sums)
    return args, load_file(str(folder / "out/state/trainable.safetensors"))


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory, shapes_dataset, model_base):
    """2-process DDP on one machine: the weights every other layout must reproduce."""
    folder = tmp_path_factory.mktemp("ddp")
    env = _machine(folder, shapes_dataset, model_base)
    done = subprocess.run(_launch("ddp"), cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    args, weights = _checked(done, done.stdout + done.stderr, folder)
    assert args["distributed_type"] == "MULTI_CPU"
    return weights


@pytest.mark.slow
def test_two_machines_train_like_one_machine_with_two_processes(tmp_path, shapes_dataset, model_base, ddp_reference):
    port, procs = _free_port(), []
    for rank in (0, 1):
        env = _machine(tmp_path / f"machine{rank}", shapes_dataset, model_base)
        cmd = _launch("multinode", "--num_machines", "2", "--machine_rank", str(rank),
                      "--main_process_ip", "127.0.0.1", "--main_process_port", str(port))
        procs.append(subprocess.Popen(cmd, cwd=tmp_path / f"machine{rank}", env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert procs[1].returncode == 0, outs[1][-4000:]
    args, weights = _checked(procs[0], outs[0], tmp_path / "machine0")
    assert args["distributed_type"] == "MULTI_CPU"
    assert weights.keys() == ddp_reference.keys()
    assert all(torch.equal(weights[k], ddp_reference[k]) for k in weights)
    # the machines share no folder: machine 1 keeps its own full resumable state, equal to machine 0's
    other = load_file(str(tmp_path / "machine1/out/state/trainable.safetensors"))
    assert all(torch.equal(other[k], weights[k]) for k in weights)
    assert not list((tmp_path / "machine1/out").glob("*.safetensors"))  # checkpoints and MLflow: machine 0 only


@pytest.mark.slow
def test_fsdp_full_fine_tune_matches_ddp_and_resumes(tmp_path, shapes_dataset, model_base, ddp_reference):
    """FSDP2 through configs/accelerate/fsdp.yaml, stopped by SIGTERM after a save point and resumed."""
    env = _machine(tmp_path, shapes_dataset, model_base, output__save_steps=2)
    cmd = _launch("fsdp")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    meta_path, deadline = tmp_path / "out/state/meta.json", time.time() + 300
    while time.time() < deadline and not meta_path.exists() and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)  # as Ctrl-C / a killed `dvc exp run` reaches every process
    out = proc.communicate(timeout=300)[0]
    meta = json.loads(meta_path.read_text())
    assert proc.returncode != 0 and "writing a resumable state" in out, out[-4000:]
    assert 2 <= meta["step"] < STEPS and not meta["finished"], meta
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    args, weights = _checked(done, done.stdout + done.stderr, tmp_path)
    assert f"resuming at step {meta['step']}" in done.stdout
    assert args["distributed_type"] == "FSDP"
    # Tolerance: reduce-scatter and all-reduce may sum in different orders on other hardware (measured: equal).
    assert weights.keys() == ddp_reference.keys()
    worst = max((weights[k] - ddp_reference[k]).abs().max().item() for k in weights)
    assert worst <= 1e-6, worst
    ckpt = load_file(str(tmp_path / f"out/step-{STEPS}.safetensors"))  # gathered whole at the save point
    assert all(torch.equal(ckpt[k], weights[f"pipe.dit.{k}"]) for k in ckpt) and len(ckpt) == len(weights)


@pytest.mark.parametrize("env, culprit", [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed configs need GPUs"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "fsdp_version: 2"),
])
def test_cpu_refuses_what_accelerate_would_silently_replace_by_ddp(monkeypatch, env, culprit):
    from diffsynth.errors import ConfigError
    from diffsynth.training.distributed import prepare_cpu_state

    for key, value in {"ACCELERATE_USE_CPU": "1", "WORLD_SIZE": "2", **env}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=culprit):
        prepare_cpu_state()
