"""DiffSynth's --enable_wandb_log / --enable_swanlab_log log through the real packages, beside MLflow: a tiny
run in their offline modes, read back from the files they wrote, holds the losses the CSV holds and the sample
images. A missing package is one line naming the extra."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
from PIL import Image

from diffsynth.errors import MissingExtraError, one_line
from diffsynth.tracking import Tracker, extra_loggers
from helpers import tiny_config


def leveldb_records(path: Path, ident: bytes) -> list[bytes]:
    """The records of a wandb ``.wandb`` / SwanLab ``.swanlab`` file: both are LevelDB log files (32 KiB blocks of
    ``crc32, length, type`` chunks) after a 7-byte header that starts with ``ident``."""
    data = path.read_bytes()
    assert data[:4] == ident, data[:7]
    block, records, partial, i = 32768, [], b"", 7
    while i + 7 <= len(data):
        if block - i % block < 7:  # too little room for a chunk header: the block is padded
            i += block - i % block
            continue
        _, length, kind = struct.unpack("<IHB", data[i:i + 7])
        if kind == 0 and length == 0:
            break
        chunk, i = data[i + 7:i + 7 + length], i + 7 + length
        if kind == 1:        # full
            records.append(chunk)
        elif kind == 2:      # first
            partial = chunk
        elif kind == 3:      # middle
            partial += chunk
        elif kind == 4:      # last
            records.append(partial + chunk)
    return records


def csv_metrics(path: Path) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for line in path.read_text().splitlines()[1:]:
        step, key, value = line.split(",")
        out.setdefault(key, {})[int(step)] = float(value)
    return out


def wandb_history(run_dir: Path) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, Path]]]:
    """Scalars (key -> step -> value) and images (key -> step -> file) of an offline wandb run, by wandb's proto."""
    import json

    from wandb.proto import wandb_internal_pb2
    scalars: dict[str, dict[int, float]] = {}
    images: dict[str, dict[int, Path]] = {}
    (run_file,) = run_dir.glob("run-*.wandb")
    for raw in leveldb_records(run_file, b":W&B"):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") != "history":
            continue
        items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        step = items["_step"]
        media = [key[:-len("/_type")] for key, value in items.items() if key.endswith("/_type")]
        for name in media:
            assert items[f"{name}/_type"] == "image-file", items
            images.setdefault(name, {})[step] = run_dir / "files" / items[f"{name}/path"]
        for key, value in items.items():
            if not key.startswith("_") and not any(key.startswith(f"{name}/") for name in media):
                scalars.setdefault(key, {})[step] = float(value)
    return scalars, images


def swanlab_history(run_dir: Path) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, Path]]]:
    """Scalars and images of an offline SwanLab run, by SwanLab's proto."""
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    scalars: dict[str, dict[int, float]] = {}
    images: dict[str, dict[int, Path]] = {}
    (run_file,) = run_dir.glob("run-*.swanlab")
    for raw in leveldb_records(run_file, b":SWL"):
        record = Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "scalar":
            scalars.setdefault(record.scalar.key, {})[record.scalar.step] = record.scalar.value.number
        elif kind == "media":
            (item,) = record.media.value.items
            files = list(run_dir.glob(f"media/**/{item.filename}"))
            assert len(files) == 1, (item.filename, files)
            images.setdefault(record.media.key, {})[record.media.step] = files[0]
    return scalars, images


@pytest.fixture()
def offline_loggers(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("swanlab")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("SWANLAB_MODE", "offline")
    for probe in ("HARDWARE", "REQUIREMENTS", "RUNTIME", "GIT"):  # seconds of environment probing we do not test
        monkeypatch.setenv(f"SWANLAB_PROBE_{probe}", "false")
    for var in ("WANDB_PROJECT", "SWANLAB_PROJECT", "SWANLAB_LOG_DIR"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.slow
def test_wandb_and_swanlab_offline_hold_the_losses_and_the_samples(tmp_path, shapes_dataset, tiny_env,
                                                                    offline_loggers):
    from diffsynth.training.loop import run_training
    config = tiny_config(tmp_path, shapes_dataset, train__num_epochs=1, train__max_steps=2,
                         tracking__enable_csv_log=True, tracking__enable_wandb_log=True,
                         tracking__enable_swanlab_log=True, tracking__wandb_project="wb-test",
                         tracking__swanlab_project="sl-test", validation__num_samples=1,
                         sample__prompts=["a red circle"], sample__seeds=[0])
    result = run_training(config)
    assert result.steps == 2 and result.run_id
    expected = csv_metrics(tmp_path / "out/loss.csv")
    assert set(expected["loss"]) == {1, 2} and "val_loss" in expected and "lr" in expected
    samples = sorted((tmp_path / "samples").glob("*.png"))
    assert samples, "the run rendered no sample"
    sample_steps = {int(p.name[len("step"):len("step") + 6]) for p in samples}

    (wandb_run,) = (tmp_path / "wandb/wandb").glob("offline-run-*")
    assert wandb_run.name.endswith(result.run_id)  # the MLflow run id names the wandb run
    (swanlab_run,) = (tmp_path / "out/swanlab_log").glob("run-*")  # DiffSynth's <output_path>/swanlab_log
    for name, (scalars, images) in (("wandb", wandb_history(wandb_run)), ("swanlab", swanlab_history(swanlab_run))):
        # every metric the CSV has (loss, lr, grad_norm, val_loss per sigma, ...), at the same steps
        logged = {(key, step): value for key in expected for step, value in scalars.get(key, {}).items()}
        assert logged == pytest.approx({(key, step): value for key, steps in expected.items()
                                        for step, value in steps.items()}), name
        assert set(images) == {"sample/p0_s0"}, (name, images)
        assert set(images["sample/p0_s0"]) == sample_steps, name
        for step, path in images["sample/p0_s0"].items():
            with Image.open(path) as logged, Image.open(tmp_path / f"samples/step{step:06d}_p0_s0.png") as saved:
                assert logged.size == saved.size, name
                assert list(logged.convert("RGB").getdata()) == list(saved.convert("RGB").getdata()), name


def test_extra_loggers_follow_the_flags_and_diffsynth_layout(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("swanlab")
    for var in ("WANDB_PROJECT", "WANDB_DIR", "SWANLAB_PROJECT", "SWANLAB_LOG_DIR"):
        monkeypatch.delenv(var, raising=False)
    config = tiny_config(tmp_path, tmp_path / "metadata.csv")
    assert extra_loggers(config.tracking, tmp_path / "out") == []
    config.tracking.enable_wandb_log = config.tracking.enable_swanlab_log = True
    wandb_logger, swanlab_logger = extra_loggers(config.tracking, tmp_path / "out")
    assert (wandb_logger.project, wandb_logger.log_dir) == ("DiffSynth-Studio", tmp_path / "out/wandb_log")
    assert (swanlab_logger.project, swanlab_logger.log_dir) == ("DiffSynth-Studio", tmp_path / "out/swanlab_log")
    monkeypatch.setenv("WANDB_PROJECT", "from-env")  # DiffSynth lets the environment name the project
    assert extra_loggers(config.tracking, tmp_path / "out")[0].project == "from-env"
    # only the main process logs
    assert Tracker.for_training(config.tracking, tmp_path / "out", enabled=False).extra == []


@pytest.mark.parametrize("package", ["wandb", "swanlab"])
def test_a_missing_package_is_one_line_naming_the_extra(tmp_path, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import <package>` raises ImportError
    config = tiny_config(tmp_path, tmp_path / "metadata.csv", **{f"tracking__enable_{package}_log": True})
    with pytest.raises(MissingExtraError) as caught:
        extra_loggers(config.tracking, tmp_path / "out")
    line = one_line(caught.value)
    assert "\n" not in line
    assert f"--enable_{package}_log" in line and f"pip install 'diffsynth-pipeline[{package}]'" in line


class Broken:
    """An extra logger whose every call fails."""
    name = "Broken"

    def __init__(self):
        self.calls = 0

    def start(self, *args, **kwargs):
        self.calls += 1
        raise RuntimeError("no network")


def test_a_failing_extra_logger_is_dropped_with_one_message(tmp_path, capsys):
    broken = Broken()
    tracker = Tracker("x", f"sqlite:///{tmp_path / 'mlflow.db'}", extra=[broken])
    assert tracker.start(params={"a": 1})  # MLflow still runs
    tracker.log_metrics({"loss": 1.0}, 1)
    tracker.finish()
    assert broken.calls == 1 and tracker.extra == []
    err = capsys.readouterr().err
    assert err.count("[tracking] Broken start failed") == 1 and "training goes on without Broken" in err


def test_diffsynth_logger_flags_are_tracking_keys():
    from diffsynth.command_line import config_from_args
    config = config_from_args(["--lora_base_model", "dit", "--enable_wandb_log", "--wandb_project", "w",
                               "--enable_swanlab_log", "--swanlab_project", "s"])
    t = config.tracking
    assert (t.enable_wandb_log, t.wandb_project, t.enable_swanlab_log, t.swanlab_project) == (True, "w", True, "s")
    t = config_from_args(["--lora_base_model", "dit"]).tracking  # DiffSynth's defaults
    assert (t.enable_wandb_log, t.wandb_project, t.enable_swanlab_log, t.swanlab_project) == \
        (False, "DiffSynth-Studio", False, "DiffSynth-Studio")


@pytest.mark.slow
def test_diffsynth_train_without_wandb_stops_at_once_with_one_line(tmp_path):
    import os
    import subprocess

    from helpers import REPO
    shadow = tmp_path / "shadow" / "wandb"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'wandb'\")\n")  # as if not installed
    env = {k: v for k, v in os.environ.items() if k != "DIFFSYNTH_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "shadow"), str(REPO)])
    proc = subprocess.run([sys.executable, "-m", "diffsynth.cli", "train", "--dataset_base_path", str(tmp_path),
                           "--dataset_metadata_path", str(tmp_path / "metadata.csv"), "--lora_base_model", "dit",
                           "--output_path", str(tmp_path / "out"), "--enable_wandb_log"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error")]
    assert errors == [errors[0]] and "pip install 'diffsynth-pipeline[wandb]'" in errors[0], out
    assert not (tmp_path / "out").exists()  # before any model was loaded or file written
