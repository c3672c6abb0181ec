"""The resumable state of a run: written between optimizer steps, read back by ``train.resume: auto``.

Where it lives is a :class:`StateStore`: by default ``<output_path>/state``. A caller that cannot keep it there (the
DVC stage, whose outputs `dvc exp run` checks out before it runs) passes a store that keeps it elsewhere and
carries a copy of the output folders with each state, so a resume puts them back and a run that finished before its
caller wrote its outputs is published instead of trained again. The library knows only this interface.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file

from ..config import Config, flatten
from ..errors import ConfigError
from ..files import write_json
from . import distributed
from . import state as train_state


# Params that may change between an interrupted run and its resume; any other change makes the state invalid.
RESUMABLE_CHANGES = ("train.num_epochs", "train.max_steps", "train.resume", "output.save_steps",
                     "dataset.dataset_num_workers", "tracking.", "sample.", "validation.", "export.")


def fingerprint(config: Config, rows: list[dict], world_size: int) -> dict:
    flat = {k: v for k, v in flatten(config.to_dict()).items() if not k.startswith(RESUMABLE_CHANGES)}
    flat["_dataset_rows_sha256"] = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
    flat["_world_size"] = world_size
    return {k: (v if isinstance(v, (str, int, float, bool)) or v is None else str(v)) for k, v in flat.items()}


class StateStore:
    """Keeps the state in ``parent/state`` (the output folder). Subclasses may keep it elsewhere (see module doc)."""

    carries_outputs = False  # states hold a copy of the output folders (restored on resume, republished when done)

    def __init__(self, parent: Path | str):
        self.parent = Path(parent)

    def bind(self, config, rows: list[dict], world_size: int) -> "StateStore":
        """The store for this run (a keyed store picks the run's own folder); called once rows are known."""
        return self

    def acquire(self) -> None:
        """Main process, before training: claim the state (e.g. a lock against a concurrent identical run)."""

    def release(self) -> None:
        """Main process, when training ends either way."""

    def snapshot(self, folders: dict[str, Path], dest: Path) -> None:
        """Copy the output folders into a state being written (only where ``carries_outputs``)."""

    def restore(self, src: Path, folders: dict[str, Path]) -> None:
        """Put the output folders of the state ``src`` back (only where ``carries_outputs``)."""

    def announce_others(self) -> None:
        """Main process, at a fresh start: say which other runs' states the store keeps."""


@dataclass
class TrainResult:
    steps: int = 0
    checkpoints: list = field(default_factory=list)
    loss_history: list = field(default_factory=list)       # (step, loss)
    val_history: list = field(default_factory=list)        # (step, {metric: value})
    run_id: str | None = None
    tracking_uri: str | None = None
    world_size: int = 1
    resumed_from_step: int | None = None
    state_dir: str | None = None       # the store's folder to release once the caller's outputs are written
    republished: bool = False          # finished before, stopped before its outputs were written: not retrained
    samples_seen: int = 0


@dataclass
class Position:
    step: int = 0
    epoch: int = 0
    offset: int = 0                    # batches of ``epoch`` already trained
    run_id: str | None = None          # the MLflow run to reopen


class RunState:
    """Saves and restores everything an exact resume needs: trainable weights, optimizer, scheduler, every rank's
    RNG, the data position, the histories and the MLflow run id."""

    def __init__(self, trainer, store: StateStore, fingerprint: dict, writes_state: bool):
        self.t, self.store, self.fingerprint, self.writes_state = trainer, store, fingerprint, writes_state
        self.folder = store.parent / train_state.STATE_DIR

    def output_folders(self) -> dict[str, Path]:
        folders = {"output": self.t.output}
        if self.t.config.sample.out_dir:
            folders["samples"] = Path(self.t.config.sample.out_dir)
        return folders

    # ------------------------------------------------------------------ save
    def save(self, at: int, epoch: int, position: int, finished: bool = False) -> None:
        """The main process (and, on machines that do not share its folder, each machine's first process)
        writes the whole state, every rank's RNG included, to a staging folder and swaps it in."""
        t, parent = self.t, self.store.parent
        folder = train_state.staging_dir(parent)
        # collectives first, on every rank: RNG states of all ranks, whole weights and optimizer state (FSDP)
        rng = gather_object([t.generator.get_state()])
        weights = distributed.full_trainable_weights(t.accelerator.unwrap_model(t.model), keep=self.writes_state)
        optimizer = distributed.optimizer_state(t.model, t.optimizer, t.sharded)
        if self.writes_state:
            train_state.begin(parent)
            for rank, generator in enumerate(rng):
                save_file({"generator": generator}, str(folder / f"rng-rank{rank}.safetensors"))
            save_file(weights, str(folder / "trainable.safetensors"))
            if getattr(t, "ema", None) is not None:
                save_file(t.ema.state_dict(), str(folder / "ema.safetensors"))
            train_state.save_structure(optimizer, folder, "optimizer")
            train_state.save_structure(t.lr_schedule.state_dict(), folder, "scheduler")
            write_json(folder / "meta.json", {"step": at, "epoch": epoch, "offset": position, "finished": finished,
                                              "samples_seen": t.result.samples_seen,
                                              "mlflow_run_id": t.result.run_id, "fingerprint": self.fingerprint})
            r = t.result
            train_state.save_history(folder, {"loss": r.loss_history, "val": r.val_history,
                                              "checkpoints": r.checkpoints, "tracking_uri": r.tracking_uri})
            if self.store.carries_outputs:
                self.store.snapshot(self.output_folders(), folder)
            train_state.commit(parent)
        t.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ restore
    def restore_or_reset(self) -> Position:
        """Continue an interrupted run (train.resume: auto) or clear the persisted folder for a fresh one."""
        t = self.t
        if t.main:
            self.store.acquire()
        meta = train_state.read_meta(self.store.parent) if t.config.train.resume == "auto" else None
        # every rank must take the same decision (machines with their own disks read their own copies)
        seen = gather_object([None if meta is None else (meta["step"], meta.get("finished"))])
        if any(s != seen[0] for s in seen):
            raise ConfigError(f"The processes found different resumable states in {self.folder} (step, finished "
                              f"per rank: {seen}): copy the main machine's folder to the others, or set "
                              "train.resume: never to start over.")
        if meta is not None and meta.get("finished") and self.store.carries_outputs:
            self._republish(meta)
            return Position(meta["step"], 0, 0, meta.get("mlflow_run_id"))
        if meta is None or meta.get("finished"):
            self._reset()
            return Position()
        self._check_fingerprint(meta)
        self._load(meta)
        return Position(meta["step"], meta["epoch"], meta["offset"], meta.get("mlflow_run_id"))

    def _reset(self) -> None:
        t = self.t
        if self.writes_state and t.output.exists():
            # a fresh run: old files in the (possibly persisted) folder would mix with the new ones
            for old in [*t.output.glob("epoch-*.safetensors"), *t.output.glob("step-*.safetensors"),
                        t.output / "loss.csv"]:
                old.unlink(missing_ok=True)
            shutil.rmtree(t.output / train_state.STATE_DIR, ignore_errors=True)
            if t.config.sample.out_dir:
                shutil.rmtree(t.config.sample.out_dir, ignore_errors=True)
        if t.main and self.store.carries_outputs:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.store.announce_others()
        t.accelerator.wait_for_everyone()

    def _check_fingerprint(self, meta: dict) -> None:
        changed = sorted(k for k in set(meta["fingerprint"]) | set(self.fingerprint)
                         if meta["fingerprint"].get(k) != self.fingerprint.get(k))
        if changed:
            raise ConfigError(
                f"Cannot resume the interrupted run in {self.folder}: these params changed since it started: "
                f"{changed[:10]}. Restore them, or set train.resume: never to start over (this discards the "
                "interrupted run's progress).")

    def _load(self, meta: dict) -> None:
        t, folder = self.t, self.folder
        distributed.load_trainable_weights(t.accelerator.unwrap_model(t.model),
                                           load_file(str(folder / "trainable.safetensors")))
        distributed.load_optimizer_state(t.model, t.optimizer, train_state.load_structure(folder, "optimizer"),
                                         t.sharded)
        t.lr_schedule.load_state_dict(train_state.load_structure(folder, "scheduler"))
        if getattr(t, "ema", None) is not None:
            t.ema.load_state_dict(load_file(str(folder / "ema.safetensors")))
        t.generator.set_state(load_file(str(folder / f"rng-rank{t.rank}.safetensors"))["generator"])
        t.result.resumed_from_step = meta["step"]
        t.result.samples_seen = meta.get("samples_seen", meta["step"] * t.world)
        if t.main:
            if self.store.carries_outputs:  # the caller's outputs may be another run's: put back this run's
                self.store.restore(folder, self.output_folders())
            self._load_history()
            print(f"[train] resuming at step {meta['step']} (epoch {meta['epoch']}, batch {meta['offset']}) "
                  f"from {folder}", flush=True)

    def _load_history(self) -> None:
        history, r = train_state.load_history(self.folder) or {}, self.t.result
        r.loss_history = [tuple(x) for x in history.get("loss", [])]
        r.val_history = [tuple(x) for x in history.get("val", [])]
        r.checkpoints = list(history.get("checkpoints", []))
        r.tracking_uri = history.get("tracking_uri")

    def _republish(self, meta: dict) -> None:
        """The run finished, but its caller was stopped before writing its outputs: give them back untrained."""
        t = self.t
        t.result.republished = True
        if t.main:
            self.store.restore(self.folder, self.output_folders())
            self._load_history()
            t.result.steps, t.result.run_id = meta["step"], meta.get("mlflow_run_id")
            print(f"[train] this run already finished (step {meta['step']}, MLflow run {t.result.run_id}) but "
                  f"its outputs were not written: publishing them from {self.folder} instead of training again",
                  flush=True)
