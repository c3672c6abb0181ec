"""A manifest of model files (path, size, sha256): the DVC output of the models stage.

Base weights stay out of the DVC cache (tens of GB); the manifest pins exactly which bytes a run used.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..files import sha256_file


def build_manifest(entries: dict[str, list[str]], root: Path) -> dict:
    """``entries``: model entry (as the user wrote it) -> its files. Paths are made relative to ``root``."""
    root = Path(root).resolve()
    out = {"models": {}, "total_size": 0}
    for name, files in entries.items():
        listed = []
        for f in sorted(files):
            p = Path(f).resolve()
            rel = os.path.relpath(p, root) if p.is_relative_to(root) else str(p)
            size = p.stat().st_size if p.is_file() else 0
            listed.append({"path": rel, "size": size, "sha256": sha256_file(p) if p.is_file() else None})
            out["total_size"] += size
        out["models"][name] = listed
    return out
