"""Where a dataset comes from: a built-in sample, a local folder, or a ModelScope dataset id.

ModelScope offline costs ~22 s of retries before it fails, so a download first checks in well under a
second that the hub's host resolves and accepts a connection, and otherwise fails at once saying how to
use a local copy instead.
"""
from __future__ import annotations

import os
import shutil
import socket
import threading
from pathlib import Path

from ..config import DatasetConfig
from ..errors import DiffSynthError
from ..files import staged_dir, write_text
from .sample_dataset import build_builtin

REACHABILITY_TIMEOUT = 3.0


class DatasetSourceError(DiffSynthError, RuntimeError):
    pass


def split_keys(value: str) -> list[str]:
    return [k.strip() for k in (value or "").split(",") if k.strip()]


def modelscope_host() -> str:
    """The host modelscope talks to (it honours MODELSCOPE_DOMAIN the same way)."""
    domain = os.environ.get("MODELSCOPE_DOMAIN") or "www.modelscope.cn"
    return domain.split("://", 1)[-1].split("/", 1)[0]


def reachable(host: str, port: int = 443, timeout: float = REACHABILITY_TIMEOUT) -> str | None:
    """None when ``host:port`` accepts a TCP connection within ``timeout``, else why not.

    DNS lookups have no timeout of their own, so the attempt runs in a daemon thread we stop waiting for.
    """
    result: list = []

    def attempt():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(f"{type(e).__name__}: {e}")

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else f"no answer within {timeout:.0f} s"


def download_modelscope_dataset(dataset_id: str, local_dir: Path, allow_patterns: list[str] | None = None) -> None:
    """The network boundary (tests replace it): download ``dataset_id`` into ``local_dir``."""
    host = modelscope_host()
    why = reachable(host)
    if why:
        raise ConnectionError(f"cannot reach {host} ({why})")
    from modelscope import dataset_snapshot_download

    # this call takes no progress callback: a line before and after at least tells a log what is going on
    print(f"[download] dataset {dataset_id}{' (' + ', '.join(allow_patterns) + ')' if allow_patterns else ''} "
          f"-> {local_dir}", flush=True)
    dataset_snapshot_download(dataset_id, local_dir=str(local_dir), allow_file_pattern=allow_patterns or None)
    files = [f for f in Path(local_dir).rglob("*") if f.is_file()]
    print(f"[download] dataset {dataset_id}: {len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB",
          flush=True)


def _offline_help(config: DatasetConfig) -> str:
    include = "".join(f" --include '{p}'" for p in split_keys(config.modelscope_include))
    return (f"Offline? On a machine with internet run `modelscope download --dataset "
            f"{config.modelscope_dataset_id}{include} --local_dir <dir>`, copy <dir> here, then set "
            "dataset.source: local and dataset.dataset_base_path / dataset.dataset_metadata_path to point at it "
            "(e.g. `dvc exp run -S dataset.source=local -S dataset.dataset_base_path=<dir> "
            "-S dataset.dataset_metadata_path=<dir>/metadata.csv`).")


def _fetch_modelscope(config: DatasetConfig, out_dir: Path) -> Path:
    if not config.modelscope_dataset_id:
        raise DatasetSourceError("dataset.source is modelscope but dataset.modelscope_dataset_id is empty; "
                                 "set it, e.g. DiffSynth-Studio/diffsynth_example_dataset")
    with staged_dir(out_dir) as tmp:
        try:
            download_modelscope_dataset(config.modelscope_dataset_id, tmp, split_keys(config.modelscope_include))
        except OSError as e:  # modelscope's NetworkError is an OSError too
            raise DatasetSourceError(f"Could not download ModelScope dataset {config.modelscope_dataset_id!r} "
                                     f"({type(e).__name__}: {e}). {_offline_help(config)}") from None
        if not any(tmp.iterdir()):
            raise DatasetSourceError(f"ModelScope dataset {config.modelscope_dataset_id!r} gave no files"
                                     + (f" matching dataset.modelscope_include {config.modelscope_include!r}"
                                        if config.modelscope_include else "") + "; check the id and patterns")
    return out_dir


def _note_local(config: DatasetConfig, out_dir: Path) -> Path:
    """Nothing to fetch; check the folder exists and leave a note so the stage output explains itself."""
    base = Path(config.dataset_base_path or ".")
    if base.resolve() == out_dir.resolve() or out_dir.resolve() in base.resolve().parents:
        raise DatasetSourceError(f"dataset.source is {config.source} but dataset.dataset_base_path {base} is inside "
                                 f"{out_dir}, which this stage owns and rewrites; move your data elsewhere")
    if not base.is_dir():
        raise DatasetSourceError(f"dataset.source is {config.source} but dataset.dataset_base_path {base} is not a folder; "
                                 "point it at the folder holding your files")
    shutil.rmtree(out_dir, ignore_errors=True)
    write_text(out_dir / "README.md", f"dataset.source is local: the data is read from {base}, nothing was fetched.\n")
    return out_dir


def fetch_dataset(config: DatasetConfig, out_dir: str | Path) -> Path:
    """Make the dataset available; returns the folder the fetch stage produced."""
    out_dir = Path(out_dir)
    if config.source == "builtin":
        return build_builtin(config.builtin_name, out_dir, config.data_file_keys).parent
    if config.source == "modelscope":
        return _fetch_modelscope(config, out_dir)
    return _note_local(config, out_dir)
