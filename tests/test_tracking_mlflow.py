"""Two DVC experiments (one run in the workspace with `dvc exp run --set-param`, one queued and run by
`dvc queue start` in DVC's temporary folder) land as two MLflow runs in the project's store; a real `mlflow server`
serves their params, loss histories, sample images, samples table and downloadable LoRA files over REST, and
`dvc exp show --json` lists both with their final and validation losses."""
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load

from test_pipeline_dvc import copy_workspace, dvc, pipeline_env

RATES = {"lr-high": "0.002", "lr-low": "0.0005"}
STEPS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(base: str, endpoint: str, **query) -> bytes:
    url = f"{base}{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def post(base: str, endpoint: str, body: dict) -> dict:
    req = urllib.request.Request(f"{base}{endpoint}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def wait_for_queue(root: Path, name: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = dvc(root, "queue", "status")
        line = next((l for l in status.splitlines() if name in l), "")
        if "Success" in line:
            return
        assert "Failed" not in line, dvc(root, "queue", "logs", name)
        time.sleep(3)
    raise AssertionError(f"queued experiment {name} did not finish:\n{status}")


@pytest.fixture(scope="module")
def experiments(reproduced, tmp_path_factory):
    root = copy_workspace(reproduced[0], tmp_path_factory.mktemp("repo") / "repo")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(num_epochs=1, max_steps=STEPS)
    params["validation"]["num_samples"] = 2
    params["sample"]["num_inference_steps"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "commit", "-qam", "small"], cwd=root, check=True, env=pipeline_env(root))
    dvc(root, "exp", "run", "-n", "lr-high", "--set-param", f"train.learning_rate={RATES['lr-high']}")
    dvc(root, "exp", "run", "--queue", "-n", "lr-low", "-S", f"train.learning_rate={RATES['lr-low']}")
    dvc(root, "queue", "start")
    try:
        wait_for_queue(root, "lr-low")
    finally:
        dvc(root, "queue", "stop", "--kill")
    return root


@pytest.fixture(scope="module")
def server(experiments):
    port = free_port()
    mlflow = str(Path(sys.executable).parent / "mlflow")
    proc = subprocess.Popen([mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{experiments / 'mlflow.db'}"],
                            cwd=experiments, env=pipeline_env(experiments), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240  # a loaded machine starts it slowly
        while True:
            try:
                if get(base, "/health") == b"OK":
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, "mlflow server did not come up"
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()  # SIGTERM stops uvicorn and the job runner too
        proc.wait(timeout=30)


def runs_by_name(base: str) -> dict:
    exp = json.loads(get(base, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="diffsynth"))["experiment"]
    runs = post(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    return {r["info"]["run_name"]: r for r in runs}


def artifacts(base: str, run_id: str, path: str = "") -> list[str]:
    listing = json.loads(get(base, "/api/2.0/mlflow/artifacts/list", run_id=run_id, path=path))
    return [f["path"] for f in listing.get("files", [])]


@pytest.mark.slow
def test_each_experiment_is_one_mlflow_run_with_its_learning_rate(experiments, server):
    runs = runs_by_name(server)
    assert set(RATES) <= set(runs), list(runs)
    for name, rate in RATES.items():
        run = runs[name]
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert run["info"]["status"] == "FINISHED"
        assert params["train.learning_rate"] == rate and params["model.family"] == "qwen_image"
        assert tags["dvc_exp_name"] == name and tags["preset"] == "qwen-image"
        assert {"git_commit", "dvc_baseline_rev", "data_report_sha256", "model_manifest_sha256"} <= set(tags)
        # the queued run executed in .dvc/tmp/exps/..., yet its artifacts sit in the project's store
        assert run["info"]["artifact_uri"].startswith((experiments / "mlruns").as_uri())


@pytest.mark.slow
def test_loss_histories_images_table_and_lora_over_rest(experiments, server):
    runs = runs_by_name(server)
    finals = {}
    for name in RATES:
        run_id = runs[name]["info"]["run_id"]
        history = json.loads(get(server, "/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key="loss"))
        assert [m["step"] for m in history["metrics"]] == list(range(1, STEPS + 1))
        finals[name] = history["metrics"][-1]["value"]
        for key in ("lr", "grad_norm", "samples_per_s", "step_time", "peak_memory_mb"):
            assert len(json.loads(get(server, "/api/2.0/mlflow/metrics/get-history", run_id=run_id,
                                      metric_key=key))["metrics"]) == STEPS, key
        val = json.loads(get(server, "/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key="val_loss"))
        assert [m["step"] for m in val["metrics"]] == [0, STEPS]
        images = artifacts(server, run_id, "images")
        assert any("sample/p0_s0" in p or "sample#p0_s0" in p or "p0_s0" in p for p in images), images
        assert "samples.json" in artifacts(server, run_id)
        table = json.loads(get(server, "/get-artifact", path="samples.json", run_uuid=run_id))
        columns = table["columns"]
        assert {"prompt", "seed", "step", "image"} <= set(columns) and len(table["data"]) == 4  # 2 prompts x 2 points
        assert {"params.yaml", "single.yaml", "training_args.json", "data.json", "manifest.json"} <= \
            {p.split("/")[-1] for p in artifacts(server, run_id, "config")}
        assert artifacts(server, run_id, "checkpoints") == ["checkpoints/epoch-0.safetensors"]
        exported = artifacts(server, run_id, "export")
        assert {"export/pytorch_lora_weights.safetensors", "export/lora_comfyui.safetensors",
                "export/lora_compat.json"} <= set(exported), exported
        lora = load(get(server, "/get-artifact", path="export/pytorch_lora_weights.safetensors", run_uuid=run_id))
        assert len(lora) == 34 and all(k.startswith("transformer.") for k in lora)
    assert finals["lr-high"] != finals["lr-low"]


@pytest.mark.slow
def test_dvc_exp_show_lists_both_with_losses(experiments):
    shown = json.loads(subprocess.run([str(Path(sys.executable).parent / "dvc"), "exp", "show", "--json"],
                                      cwd=experiments, env=pipeline_env(experiments), capture_output=True, text=True,
                                      check=True).stdout)
    found = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs", []):
                data = rev.get("data", {})
                if rev.get("name") in RATES:
                    found[rev["name"]] = data
    assert set(found) == set(RATES), json.dumps(shown)[:2000]
    for name, data in found.items():
        params = data["params"]["params.yaml"]["data"]
        assert str(params["train"]["learning_rate"]) == RATES[name]
        assert "data" in data["metrics"].get("outputs/train/metrics.json", {}), (name, data["metrics"])
        metrics = data["metrics"]["outputs/train/metrics.json"]["data"]
        assert {"final_loss", "val_loss"} <= set(metrics)
        assert data["metrics"]["reports/lora_compat.json"]["data"]["unmatched_keys"] == 0
