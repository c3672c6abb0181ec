"""The run's tracking, opened by the main process: the MLflow run (params, dataset, config files, buckets) and the
local logs beside it (loss.csv, also when MLflow fails; TensorBoard when asked)."""
from __future__ import annotations

import os
import resource
from pathlib import Path

import torch

from ..config import Config, flatten
from ..files import write_json
from ..tracking import MetricsLog, Tracker


class RunLog:
    def __init__(self, config: Config, output: Path, enabled: bool, tags: dict | None, log_files: list[str]):
        self.config, self.output, self.tags, self.log_files = config, output, tags, log_files
        self.tracker = Tracker.for_training(config.tracking, output, enabled=enabled)
        self.metrics: MetricsLog | None = None  # opened with the output folder

    def log(self, metrics: dict, at: int) -> None:
        if self.metrics:
            self.metrics.log(metrics, at)

    def start(self, run_id: str | None, resumed_from_step: int | None, run_info: dict, rows: list[dict],
              dataset_source: str, buckets: dict) -> str | None:
        """Open the local logs (first: a tracking failure at start switches the CSV on), then the MLflow run: a new
        one with every param, or ``run_id`` reopened on resume. Returns the run id."""
        config, tracker = self.config, self.tracker
        tracking = config.tracking
        self.metrics = MetricsLog(tracker, self.output / "loss.csv", tracking.enable_csv_log,
                                  self.output / "tensorboard_log" if tracking.enable_tensorboard_log else None)
        self.output.mkdir(parents=True, exist_ok=True)
        write_json(self.output / "training_args.json", {**config.to_dict(), **run_info}, indent=4)
        if run_id:
            run_id = tracker.start(run_id=run_id)
            tracker.set_tags({f"resumed_at_step_{resumed_from_step}": "true"})
            return run_id
        run_id = tracker.start(flatten(config.to_dict()), tags=self.tags,
                               run_name=os.environ.get("DVC_EXP_NAME") or None)
        tracker.log_dataset(rows, source=str(Path(dataset_source).resolve()),
                            name=Path(config.dataset.dataset_base_path).name or "dataset")
        for f in [self.output / "training_args.json", *self.log_files]:
            tracker.log_artifact(f, "config")
        tracker.set_tags({"world_size": str(run_info["world_size"])})
        write_json(self.output / "buckets.json", buckets)
        tracker.log_artifact(self.output / "buckets.json", "data")
        tracker.set_tags({"buckets": str(buckets["num_buckets"]), "batches_per_epoch": str(buckets["batches"])})
        return run_id

    def finish(self, status: str) -> None:
        self.tracker.finish(status)
        if self.metrics:
            self.metrics.close()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    status = Path("/proc/self/status")
    if status.exists():  # VmHWM starts afresh at exec; ru_maxrss carries a parent's peak into its child
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
