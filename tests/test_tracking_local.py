"""Tracking never costs a run: an unreachable MLflow server is reported once, training completes, and every metric
lands in the local CSV (DiffSynth's `step,key,value`); tensorboard gets event files when asked."""
import socket
import time

import pytest

from diffsynth.tracking import MetricsLog, Tracker, check_reachable, resolve_tracking_uri
from diffsynth.training.loop import run_training
from helpers import tiny_config


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_uri_precedence(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:1")
    assert resolve_tracking_uri("sqlite:////x/mlflow.db") == "sqlite:////x/mlflow.db"
    assert resolve_tracking_uri("") == "http://example:1"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri("").startswith("sqlite:///") and resolve_tracking_uri("").endswith("/mlflow.db")


def test_unreachable_server_is_detected_at_once():
    started = time.perf_counter()
    with pytest.raises(ConnectionError, match="no MLflow server answers"):
        check_reachable(f"http://127.0.0.1:{closed_port()}")
    assert time.perf_counter() - started < 5


class Flaky:
    """Stands in for mlflow: works for ``ok_calls`` metric calls, then fails."""

    def __init__(self, ok_calls):
        self.ok_calls, self.logged = ok_calls, []

    def log_metrics(self, metrics, step):
        if self.ok_calls == 0:
            raise ConnectionError("store went away")
        self.ok_calls -= 1
        self.logged.append((step, metrics))


def test_csv_switches_on_with_the_history_when_mlflow_fails_midway(tmp_path, capsys):
    tracker = Tracker("x", "sqlite:///unused.db")
    tracker._mlflow = Flaky(ok_calls=2)
    log = MetricsLog(tracker, tmp_path / "loss.csv", csv_enabled=False)
    for step in range(1, 6):
        log.log({"loss": step / 10, "lr": 0.1}, step)
    log.close()
    rows = (tmp_path / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,key,value"
    assert [r.split(",")[0] for r in rows[1:]] == [str(s) for s in range(1, 6) for _ in (0, 1)]
    err = capsys.readouterr().err
    assert err.count("[tracking] MLflow") == 1 and str(tmp_path / "loss.csv") in err


@pytest.mark.slow
def test_training_with_the_tracking_server_down(tmp_path, shapes_dataset, tiny_env, monkeypatch, capfd):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    config = tiny_config(tmp_path, shapes_dataset, tracking__uri="", tracking__enable_csv_log=False,
                         tracking__enable_tensorboard_log=True, train__num_epochs=1, train__max_steps=6,
                         validation__num_samples=1, sample__prompts=["a red circle"])
    started = time.perf_counter()
    result = run_training(config)
    assert result.steps == 6 and result.run_id is None and result.checkpoints
    assert time.perf_counter() - started < 120
    rows = [line.split(",") for line in (tmp_path / "out/loss.csv").read_text().splitlines()[1:]]
    assert [int(s) for s, k, _ in rows if k == "loss"] == list(range(1, 7))
    for key in ("lr", "grad_norm", "step_time", "samples_per_s", "peak_memory_mb"):
        assert sum(k == key for _, k, _ in rows) == 6, key
    assert {int(s) for s, k, _ in rows if k == "val_loss"} == {0, 6}
    err = capfd.readouterr().err
    assert err.count("[tracking] MLflow") == 1, err
    assert "training goes on without MLflow" in err
    events = list((tmp_path / "out/tensorboard_log").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
