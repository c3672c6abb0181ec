"""Dataset validation: check every row before training and report all problems at once (spec §2, issue 3).

DiffSynth loads files lazily and a single bad file kills a multi-GPU run mid-training. Here every row is
decoded and sized up front; the report lists each failing row with its reason.
"""
from __future__ import annotations

import collections
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..files import write_json
from .dataset import ImageRules, split_keys
from .loading import absolute, is_url, load_image
from .metadata import is_missing, read_metadata

PROMPT_KEY = "prompt"


@dataclass
class ValidationReport:
    metadata_path: str
    total_rows: int = 0
    valid_rows: int = 0
    problems: list = field(default_factory=list)          # {"row", "column", "reason"}
    resolutions: collections.Counter = field(default_factory=collections.Counter)   # "WxH" -> count
    cleaned_metadata_path: str | None = None

    @property
    def invalid_rows(self) -> int:
        return self.total_rows - self.valid_rows

    def to_dict(self) -> dict:
        return {
            "metadata_path": self.metadata_path,
            "total_rows": self.total_rows,
            "valid_rows": self.valid_rows,
            "invalid_rows": self.invalid_rows,
            "problems": self.problems,
            "resolutions": dict(sorted(self.resolutions.items())),
            "cleaned_metadata_path": self.cleaned_metadata_path,
        }

    def summary(self) -> str:
        lines = [f"{self.metadata_path}: {self.valid_rows}/{self.total_rows} rows valid"]
        for p in self.problems[:50]:
            lines.append(f"  row {p['row']} [{p['column']}]: {p['reason']}")
        if len(self.problems) > 50:
            lines.append(f"  ... and {len(self.problems) - 50} more (see the report file)")
        return "\n".join(lines)


def _check_file(base_path: str, value, rules: ImageRules) -> tuple[list[str], list[str]]:
    """Return (problems, sizes) for one file cell (a path or a list of paths)."""
    values = value if isinstance(value, list) else [value]
    problems, sizes = [], []
    for v in values:
        if is_missing(v) or (isinstance(v, str) and not v.strip()):
            problems.append("empty file cell")
            continue
        if not isinstance(v, str):
            problems.append(f"expected a file path, got {v!r}")
            continue
        path = absolute(base_path, v)
        if not is_url(path) and not Path(path).exists():
            problems.append(f"file not found: {path}")
            continue
        try:
            image = load_image(path)
        except Exception as e:  # any decode failure is a row problem, not a crash
            problems.append(f"cannot decode {path}: {type(e).__name__}: {e}")
            continue
        w, h = image.size
        if rules.height is None or rules.width is None:
            if w < rules.width_factor or h < rules.height_factor:
                problems.append(f"{path} is {w}x{h}, smaller than one {rules.width_factor}x{rules.height_factor} block")
                continue
        tw, th = (rules.apply(image).size)
        sizes.append(f"{tw}x{th}")
    return problems, sizes


def validate_dataset(base_path: str | Path, metadata_path: str | Path, data_file_keys: list[str] | str,
                     rules: ImageRules, extra_inputs: list[str] | None = None) -> ValidationReport:
    """Check every row: files exist and decode, sizes fit the family, prompt is a non-empty string."""
    if isinstance(data_file_keys, str):
        data_file_keys = split_keys(data_file_keys)
    rows = read_metadata(metadata_path)
    report = ValidationReport(metadata_path=str(metadata_path), total_rows=len(rows))
    columns = set().union(*(r.keys() for r in rows)) if rows else set()
    if not any(k in columns for k in data_file_keys):
        report.problems.append({"row": None, "column": ",".join(data_file_keys),
                                "reason": f"none of data_file_keys {data_file_keys} is a column of the metadata "
                                          f"(columns: {sorted(columns)}); fix dataset.data_file_keys"})
    for i, row in enumerate(rows):
        row_problems = []
        prompt = row.get(PROMPT_KEY)
        if not isinstance(prompt, str) or not prompt.strip():
            row_problems.append((PROMPT_KEY, f"prompt must be a non-empty string, got {prompt!r}"))
        for key in extra_inputs or []:
            if key not in row or is_missing(row[key]):
                row_problems.append((key, f"extra input column {key!r} is missing"))
        row_sizes = []
        for key in data_file_keys:
            if key not in row:
                continue
            problems, sizes = _check_file(str(base_path), row[key], rules)
            row_problems += [(key, p) for p in problems]
            row_sizes += sizes
        if row_problems:
            report.problems += [{"row": i, "column": c, "reason": r} for c, r in row_problems]
        else:
            report.valid_rows += 1
            report.resolutions.update(row_sizes)
    if any(p["row"] is None for p in report.problems):
        report.valid_rows = 0
    return report


def write_cleaned_metadata(metadata_path: str | Path, report: ValidationReport, out_path: str | Path) -> Path:
    """Write the valid rows only, as JSONL (which holds list-valued cells that CSV cannot)."""
    bad = {p["row"] for p in report.problems}
    rows = [r for i, r in enumerate(read_metadata(metadata_path)) if i not in bad]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w") as f:
        for r in rows:
            f.write(json.dumps({k: (None if is_missing(v) else v) for k, v in r.items()}) + "\n")
    report.cleaned_metadata_path = str(out_path)
    return out_path


def write_resolution_plot(report: ValidationReport, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["resolution", "count"])
        for res, count in sorted(report.resolutions.items()):
            writer.writerow([res, count])


def check_dataset(config, size_factor: int, metadata_out: str | Path, report_out: str | Path,
                  plot_out: str | Path) -> ValidationReport:
    """The validation stage's work: validate, write the metadata training uses, the report and the plot.

    ``size_factor`` is the family's size multiple (16 for Qwen-Image); data code knows no model.
    """
    rules = ImageRules(config.resolution.max_pixels, config.resolution.height, config.resolution.width,
                       size_factor, size_factor)
    if not config.dataset.dataset_metadata_path:
        raise ValueError("dataset.dataset_metadata_path is empty: point it at metadata.csv/.json/.jsonl")
    report = validate_dataset(config.dataset.dataset_base_path, config.dataset.dataset_metadata_path,
                              config.dataset.data_file_keys, rules, split_keys(config.model.extra_inputs))
    write_cleaned_metadata(config.dataset.dataset_metadata_path, report, metadata_out)
    write_json(report_out, report.to_dict())
    write_resolution_plot(report, plot_out)
    return report
