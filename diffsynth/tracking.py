"""MLflow, called directly (accelerate's tracker drops images and long params). The only module that
imports mlflow (and wandb / swanlab, DiffSynth's optional loggers, which receive the same metrics and images).

The default store is a SQLite file at the project root with artifacts beside it, both as absolute paths,
so runs started by DVC in ``.dvc/tmp/exps/...`` land in the same store as runs in the workspace. A store
that fails never stops training: the tracker says so once and carries on; metrics also go to local CSV.
"""
from __future__ import annotations

import csv
import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

from .errors import MissingExtraError, TrackingError
from .files import project_root

# log_table re-downloads the table to append to it; its progress bar is noise in stage logs
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow's HTTP client retries 7 times with exponential back-off (minutes per call) before giving up; a server
# that went away must cost a run seconds, once, not minutes. The user's own settings win.
for _var, _value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                     ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
    os.environ.setdefault(_var, _value)


def default_tracking_uri() -> str:
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def resolve_tracking_uri(configured: str = "") -> str:
    """``tracking.uri`` param, else ``$MLFLOW_TRACKING_URI``, else the project's SQLite store."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise TrackingError (a ConnectionError) when an http(s) tracking server does not answer at all (checked once, at start)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered; a server without /health is still a server
    except (urllib.error.URLError, OSError) as e:
        raise TrackingError(f"no MLflow server answers at {uri} ({getattr(e, 'reason', e)}): start it, or set "
                            "tracking.uri / $MLFLOW_TRACKING_URI to a reachable server (\"\" = the local "
                            "SQLite store)") from None


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class MetricsCSV:
    """Append-only ``step,key,value`` rows (DiffSynth's ``--enable_csv_log`` format), flushed per row."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(["step", "key", "value"])
            self._file.flush()

    def log(self, metrics: dict, step: int) -> None:
        for key, value in metrics.items():
            self._writer.writerow([step, key, value])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class ExtraLogger:
    """A logger beside MLflow (DiffSynth's ``--enable_wandb_log`` / ``--enable_swanlab_log``): the same metrics
    and sample images. The package is imported at construction, so a missing one stops the run before training."""

    name = ""      # shown in messages
    package = ""   # the module imported
    extra = ""     # pyproject extra that installs it
    flag = ""      # the DiffSynth flag / params key that asked for it

    def __init__(self, project: str, log_dir: Path):
        try:
            self.lib = importlib.import_module(self.package)
        except ImportError as e:
            raise MissingExtraError(f"tracking.{self.flag} (--{self.flag}) needs the {self.package} package, which "
                                    f"does not import ({e}): pip install 'diffsynth-pipeline[{self.extra}]'") from None
        self.project, self.log_dir = project, Path(log_dir)

    def start(self, params: dict | None, tags: dict | None, run_name: str | None, run_id: str | None,
              resume: bool) -> None:
        """``run_id``: MLflow's (None when MLflow is off); ``resume``: it is a resumed training's."""
        raise NotImplementedError

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.lib.log(dict(metrics), step=step)

    def log_image(self, image, key: str, step: int) -> None:
        self.lib.log({key: self.lib.Image(image)}, step=step)

    def set_tags(self, tags: dict) -> None:
        self.lib.config.update({f"tag.{k}": v for k, v in tags.items()})

    def finish(self, status: str) -> None:
        raise NotImplementedError


class WandbLogger(ExtraLogger):
    """Offline/online as wandb's own settings say (``WANDB_MODE``, ``wandb login``)."""

    name, package, extra, flag = "wandb", "wandb", "wandb", "enable_wandb_log"

    def start(self, params, tags, run_name, run_id, resume) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # the MLflow run id names the wandb run too, so a resumed training continues the same run
        self.lib.init(project=self.project, dir=str(self.log_dir), name=run_name, config=params or None,
                      id=run_id, resume="allow" if resume and run_id else None)
        if tags:
            self.set_tags(tags)

    def set_tags(self, tags: dict) -> None:
        self.lib.config.update({f"tag.{k}": v for k, v in tags.items()}, allow_val_change=True)

    def finish(self, status: str) -> None:
        self.lib.finish(exit_code=0 if status == "FINISHED" else 1)


class SwanLabLogger(ExtraLogger):
    """Cloud, local or offline as SwanLab's own settings say (``SWANLAB_MODE``, ``swanlab login``)."""

    name, package, extra, flag = "SwanLab", "swanlab", "swanlab", "enable_swanlab_log"

    def start(self, params, tags, run_name, run_id, resume) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # reinit: a run left open by a failed earlier training in this process would refuse the new one
        self.lib.init(project=self.project, log_dir=str(self.log_dir), name=run_name,
                      config=params or None, reinit=True)
        if tags:
            self.set_tags(tags)

    def finish(self, status: str) -> None:
        self.lib.finish(state="success" if status == "FINISHED" else "aborted")


def extra_loggers(tracking, output_path: str | Path) -> list[ExtraLogger]:
    """The loggers ``tracking`` (the params section) switches on, as DiffSynth writes them: project from the flag
    unless ``$WANDB_PROJECT`` / ``$SWANLAB_PROJECT`` is set, files in ``<output_path>/wandb_log`` and
    ``<output_path>/swanlab_log`` unless ``$WANDB_DIR`` / ``$SWANLAB_LOG_DIR`` is set."""
    output = Path(output_path)
    loggers: list[ExtraLogger] = []
    if tracking.enable_wandb_log:
        loggers.append(WandbLogger(os.environ.get("WANDB_PROJECT") or tracking.wandb_project,
                                   Path(os.environ.get("WANDB_DIR") or output / "wandb_log")))
    if tracking.enable_swanlab_log:
        loggers.append(SwanLabLogger(os.environ.get("SWANLAB_PROJECT") or tracking.swanlab_project,
                                     Path(os.environ.get("SWANLAB_LOG_DIR") or output / "swanlab_log")))
    return loggers


class Tracker:
    """One MLflow run, and the extra loggers beside it. Every call is a no-op when disabled (non-main ranks);
    after MLflow failed its calls are, and an extra logger that fails is dropped alone."""

    def __init__(self, experiment: str, uri: str = "", enabled: bool = True,
                 extra: list[ExtraLogger] | tuple = ()):
        self.experiment = experiment
        self.uri = resolve_tracking_uri(uri)
        self.enabled = enabled
        self.run_id: str | None = None
        self.failed = False
        self.fallback = "metrics are still written to local CSV"  # set by MetricsLog to name the file
        self._mlflow = None
        self._on_failure = []
        self.extra = list(extra) if enabled else []
        self._extra_started = False

    @classmethod
    def for_training(cls, tracking, output_path: str | Path, enabled: bool = True) -> "Tracker":
        """MLflow as ``tracking`` (the params section) says, with its extra loggers (main process only)."""
        return cls(tracking.experiment, tracking.uri, enabled=enabled,
                   extra=extra_loggers(tracking, output_path) if enabled else ())

    def _each_extra(self, what: str, fn) -> None:
        for logger in list(self.extra):
            try:
                fn(logger)
            except Exception as e:  # as with MLflow: a logger that fails never costs the training run
                print(f"[tracking] {logger.name} {what} failed ({type(e).__name__}: {str(e)[:300]}); training goes "
                      f"on without {logger.name}.", file=sys.stderr, flush=True)
                self.extra.remove(logger)

    def on_failure(self, callback) -> None:
        self._on_failure.append(callback)

    def _fail(self, what: str, error: Exception) -> None:
        # said once: the tracker disables itself, so no later call gets here
        print(f"[tracking] MLflow {what} failed at {self.uri} ({type(error).__name__}: {str(error)[:300]}); training "
              f"goes on without MLflow; {self.fallback}.", file=sys.stderr, flush=True)
        self.enabled = False
        self.failed = True
        for callback in self._on_failure:
            callback()

    def _call(self, what: str, fn, *args, **kwargs):
        if not self.enabled or self._mlflow is None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # a tracking failure must never cost the training run
            self._fail(what, e)
            return None

    def start(self, params: dict | None = None, tags: dict | None = None, run_name: str | None = None,
              run_id: str | None = None) -> str | None:
        """Start a new run (or reopen ``run_id``) and log ``params`` once; then the extra loggers."""
        if not self.enabled:
            return None
        self._start_mlflow(params, tags, run_name, run_id)
        self._extra_started = True
        self._each_extra("start", lambda x: x.start(params, tags, run_name, self.run_id or run_id,
                                                            resume=run_id is not None))
        return self.run_id

    def _start_mlflow(self, params, tags, run_name, run_id) -> None:
        try:
            check_reachable(self.uri)
            import mlflow
            self._mlflow = mlflow
            mlflow.set_tracking_uri(self.uri)
            if run_id is None:
                exp = mlflow.get_experiment_by_name(self.experiment)
                if exp is None:
                    location = None
                    if self.uri.startswith("sqlite:///"):
                        # artifacts beside the database, not under whatever folder we were started in
                        location = (Path(self.uri[len("sqlite:///"):]).parent / "mlruns").as_uri()
                    mlflow.create_experiment(self.experiment, artifact_location=location)
                mlflow.set_experiment(self.experiment)
            run = mlflow.start_run(run_id=run_id, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
            if params:
                mlflow.log_params({k: ("" if v is None else v) for k, v in params.items()})
        except Exception as e:
            self._fail("start", e)

    def log_metrics(self, metrics: dict, step: int) -> None:
        self._call("log_metrics", lambda: self._mlflow.log_metrics(metrics, step=step))
        self._each_extra("log", lambda x: x.log_metrics(metrics, step))

    def log_image(self, image, key: str, step: int) -> None:
        self._call("log_image", lambda: self._mlflow.log_image(image, key=key, step=step))
        self._each_extra("log (image)", lambda x: x.log_image(image, key, step))

    def log_video(self, frames: list, key: str, step: int, fps: int = 8) -> None:
        """A sampled video: an mp4 artifact under ``videos/`` and a strip of frames as a step-keyed image."""
        def _log():
            import tempfile

            from .data.sample_video import write_mp4
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{key.replace('/', '_')}_step{step}.mp4"
                write_mp4(path, frames, fps=fps)
                self._mlflow.log_artifact(str(path), "videos")
            self._mlflow.log_image(frame_strip(frames), key=key, step=step)
        self._call("log_video", _log)
        if self.extra:  # the same frame strip MLflow shows
            strip = frame_strip(frames)
            self._each_extra("log (video)", lambda x: x.log_image(strip, key, step))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file, or a folder with its contents under ``<artifact_path>/<folder name>``."""
        path = Path(path)
        if path.is_dir():
            target = f"{artifact_path}/{path.name}" if artifact_path else path.name
            self._call("log_artifacts", lambda: self._mlflow.log_artifacts(str(path), target))
        else:
            self._call("log_artifact", lambda: self._mlflow.log_artifact(str(path), artifact_path))

    def log_sample(self, sample, key: str, step: int):
        """One sample (an image, or a list of video frames) under a step-keyed image ``key``; returns the image
        shown (a frame strip for videos) for the samples table."""
        if isinstance(sample, list):
            self.log_video(sample, key=key, step=step)
            return frame_strip(sample)
        self.log_image(sample, key=key, step=step)
        return sample

    def log_table(self, data: dict, artifact_file: str) -> None:
        self._call("log_table", lambda: self._mlflow.log_table(data, artifact_file=artifact_file))

    def set_tags(self, tags: dict) -> None:
        self._call("set_tags", lambda: self._mlflow.set_tags(tags))
        if self._extra_started:
            self._each_extra("config", lambda x: x.set_tags(tags))

    def log_dataset(self, rows: list[dict], source: str, name: str, digest: str | None = None) -> None:
        def _log():
            import pandas as pd
            frame = pd.DataFrame(rows).astype(str)
            with warnings.catch_warnings():  # "source can be interpreted in multiple ways": it is a local path
                warnings.simplefilter("ignore", UserWarning)
                dataset = self._mlflow.data.from_pandas(frame, source=source, name=name, digest=digest)
            self._mlflow.log_input(dataset, context="training")
        self._call("log_input", _log)

    def finish(self, status: str = "FINISHED") -> None:
        self._call("end_run", lambda: self._mlflow.end_run(status=status))
        if self._extra_started:
            self._each_extra("finish", lambda x: x.finish(status))
            self._extra_started = False


def frame_strip(frames: list):
    """Up to four frames of a video side by side (MLflow's image view has no video player)."""
    from PIL import Image
    picks = frames[:: max(1, len(frames) // 4)][:4]
    strip = Image.new("RGB", (sum(f.width for f in picks), max(f.height for f in picks)))
    x = 0
    for frame in picks:
        strip.paste(frame, (x, 0))
        x += frame.width
    return strip


class MetricsLog:
    """Every scalar metric goes to MLflow, to ``csv_path`` (``step,key,value``, DiffSynth's --enable_csv_log
    format) when ``csv_enabled``, and to tensorboard when ``tensorboard_dir`` is set. If MLflow fails, the CSV
    is switched on whatever ``csv_enabled`` says and receives every metric logged before the failure too, so no
    step is lost."""

    def __init__(self, tracker: Tracker, csv_path: str | Path, csv_enabled: bool = True,
                 tensorboard_dir: str | Path | None = None):
        self.tracker = tracker
        self.csv_path = Path(csv_path)
        self._csv = MetricsCSV(self.csv_path) if csv_enabled else None
        self._history: list[tuple[dict, int]] = []  # kept only while the CSV is off, for a late switch-on
        self._tb = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package
            self._tb = SummaryWriter(str(tensorboard_dir))
        tracker.fallback = f"every metric goes to {self.csv_path}"
        tracker.on_failure(self._switch_on_csv)
        if tracker.failed:
            self._switch_on_csv()

    def _switch_on_csv(self) -> None:
        if self._csv is None:
            self._csv = MetricsCSV(self.csv_path)
            for metrics, step in self._history:
                self._csv.log(metrics, step)
            self._history = []

    def log(self, metrics: dict, step: int) -> None:
        self.tracker.log_metrics(metrics, step)
        if self._csv is not None:
            self._csv.log(metrics, step)
        elif self.tracker.enabled:
            self._history.append((dict(metrics), step))
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
        if self._tb is not None:
            self._tb.close()


def run_tags(family: str, tiny_preset: str, manifests: dict[str, str]) -> dict:
    """Lineage tags: git commit, DVC experiment, family, preset, manifest hashes."""
    root = project_root()
    tags = {"family": family, "preset": tiny_preset or "real",
            "tiny_preset": "true" if tiny_preset else "false"}
    commit = git_commit(root)
    if commit:
        tags["git_commit"] = commit
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    tags.update({f"{name}_sha256": digest for name, digest in manifests.items()})
    return tags
