"""Where the DVC train stage keeps a run's resumable state, so that it survives DVC.

Before an experiment's stages run, `dvc exp run` checks every output out of DVC's cache (queued experiments run
in a throw-away copy of the repository), so a state kept in the persisted ``output.output_path`` is replaced by
the last finished run's. The stage therefore keeps it in a store outside every DVC output, beside the MLflow
database whose run it continues: ``<project root>/.resume/<key>/`` (``$DIFFSYNTH_RESUME_DIR/<key>`` when set).
``<key>`` hashes every param that shapes the run, the dataset rows and the process count: re-running with the
same params finds the state however it is run (repro, exp run, queue), and experiments with other params,
queued side by side, never share one. A user-level cache would not do: the state names a run in this project's
MLflow database, and two clones would share states.

Each state also holds a copy of the output folders as they were at its step (checkpoints and sample images
hard-linked, so no extra disk), so a resume first puts them back, and a run that finished but was killed before
its stage wrote the outputs is published from the store instead of being trained again. The stage deletes the
slot once its outputs are written.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from diffsynth.config import Config, flatten
from diffsynth.errors import ConfigError
from diffsynth.files import project_root
from diffsynth.training import state as train_state
from diffsynth.training.run_state import StateStore

ENV_DIR = "DIFFSYNTH_RESUME_DIR"
# Params that change neither the trained weights nor what is logged: not part of the key.
NOT_IN_KEY = ("train.resume", "dataset.dataset_num_workers", "export.")
# Written once under a temporary name and renamed (checkpoints) or written once (samples): safe to hard-link.
# Everything else (loss.csv is appended to) is copied.
LINKABLE = (".safetensors", ".png")
FILES = "files"
LOCK = "lock"


def default_store() -> Path:
    return Path(os.environ[ENV_DIR]) if os.environ.get(ENV_DIR) else project_root() / ".resume"


def run_key(config: Config, rows: list[dict], world_size: int) -> str:
    flat = {k: v for k, v in flatten(config.to_dict()).items() if not k.startswith(NOT_IN_KEY)}
    flat["_dataset_rows"] = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
    flat["_world_size"] = world_size
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:20]


class Slot:
    """One run's folder in the store; the main process holds its lock while training."""

    def __init__(self, store: Path, key: str):
        self.store, self.key, self.path = Path(store), key, Path(store) / key
        self._lock = None

    def acquire(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK, "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigError(f"Another training with the same params is running (its state is in {self.path}); "
                              "wait for it to end, or change a param to run a different experiment.") from None
        self._lock = handle

    def release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing drops the flock
            self._lock = None

    def others(self) -> list[tuple[Path, dict]]:
        """Interrupted runs with other params (their state stays until they are run again or deleted)."""
        found = []
        for folder in sorted(self.store.glob("*/")) if self.store.is_dir() else []:
            meta = train_state.read_meta(folder)
            if folder != self.path and meta and not meta.get("finished"):
                found.append((folder, meta))
        return found


def release(slot_dir: str | os.PathLike | None) -> None:
    """The stage's outputs are written: the state is no longer needed."""
    if slot_dir:
        shutil.rmtree(slot_dir, ignore_errors=True)


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix in LINKABLE:
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or no hard links: copy
            pass
    shutil.copy2(src, dst)


def _files(folder: Path):
    skip = {train_state.STATE_DIR, train_state.staging_dir(Path()).name, f".{train_state.STATE_DIR}.old"}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and rel.parts[0] not in skip:
            yield path, rel


def snapshot(folders: dict[str, Path], dest: Path) -> None:
    """Copy each output folder into ``dest/files/<name>`` (a state being staged)."""
    for name, folder in folders.items():
        if folder.is_dir():
            for path, rel in _files(folder):
                _place(path, dest / FILES / name / rel)


def restore(src: Path, folders: dict[str, Path]) -> None:
    """Replace each output folder by its copy in the state ``src`` (whatever DVC checked out there)."""
    for name, folder in folders.items():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        saved = src / FILES / name
        if saved.is_dir():
            for path, rel in _files(saved):
                _place(path, folder / rel)


def size_mb(folder: Path) -> float:
    seen, total = set(), 0
    for path in folder.rglob("*"):
        if path.is_file():
            st = path.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total / 2 ** 20


class SlotStore(StateStore):
    """The train stage's state store: each run's state in its own slot of ``store`` (keyed by its params), with
    a copy of the stage's output folders."""

    carries_outputs = True

    def __init__(self, store: Path | str):
        super().__init__(store)
        self.store, self.slot = Path(store), None

    def bind(self, config: Config, rows: list[dict], world_size: int) -> "SlotStore":
        self.slot = Slot(self.store, run_key(config, rows, world_size))
        self.parent = self.slot.path
        return self

    def acquire(self) -> None:
        self.slot.acquire()

    def release(self) -> None:
        self.slot.release_lock()

    def snapshot(self, folders: dict[str, Path], dest: Path) -> None:
        snapshot(folders, dest)

    def restore(self, src: Path, folders: dict[str, Path]) -> None:
        restore(src, folders)

    def announce_others(self) -> None:
        others = self.slot.others()
        if others:
            size = sum(size_mb(f) for f, _ in others)
            steps = ", ".join(f"{f.name} (step {m['step']})" for f, m in others[:5])
            print(f"[train] {len(others)} interrupted run(s) with other params keep their state in {self.store} "
                  f"({size:.0f} MB): {steps}. Each resumes when run again with its params; delete its folder to "
                  "discard it.", flush=True)


__all__ = ["default_store", "run_key", "Slot", "SlotStore", "release", "snapshot", "restore", "ENV_DIR"]
