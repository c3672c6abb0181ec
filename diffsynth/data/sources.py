"""Where a dataset comes from: the built-in sample, a local folder, or a ModelScope dataset id."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..config import DatasetConfig
from ..files import write_text
from .sample_dataset import build_builtin


class DatasetSourceError(RuntimeError):
    pass


def download_modelscope_dataset(dataset_id: str, local_dir: Path) -> None:
    """The network boundary (tests replace it)."""
    from modelscope import dataset_snapshot_download

    dataset_snapshot_download(dataset_id, local_dir=str(local_dir))


def fetch_dataset(config: DatasetConfig, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    if config.source == "builtin":
        return build_builtin(config.builtin_name, out_dir).parent
    if config.source == "modelscope":
        if not config.modelscope_dataset_id:
            raise DatasetSourceError("dataset.source is modelscope but dataset.modelscope_dataset_id is empty")
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            download_modelscope_dataset(config.modelscope_dataset_id, tmp)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DatasetSourceError(
                f"Could not download ModelScope dataset {config.modelscope_dataset_id!r} ({type(e).__name__}: {e}). "
                "Offline? Download it elsewhere (modelscope download --dataset <id> --local_dir <dir>), copy it "
                "here, and set dataset.source: local with dataset.dataset_base_path pointing at it.") from None
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
        return out_dir
    # local: nothing to fetch; leave a note so the stage output exists and explains itself
    shutil.rmtree(out_dir, ignore_errors=True)
    write_text(out_dir / "README.md", f"dataset.source is local: the data is read from "
                                      f"{config.dataset_base_path}, nothing was fetched.\n")
    return out_dir
