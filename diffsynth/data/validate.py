"""Dataset validation: check every row before training and report all problems at once.

DiffSynth loads files lazily and a single bad file kills a multi-GPU run mid-training. Here every row is
parsed, decoded and sized up front; the report lists each failing row with its reason. Problems with no row
(``row: null``: unreadable metadata file, a data_file_keys column no row has, a fixed size that does not fit
the family) are fatal whatever ``dataset.on_invalid`` says: skipping rows cannot fix them.
"""
from __future__ import annotations

import collections
import csv
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..files import atomic_path, write_json
from ..progress import progress
from .buckets import bucket_stats, format_key
from .dataset import DEFAULT_VIDEO_KEYS, ImageRules, split_keys
from .file_checks import check_image_cell, check_video_cell
from .folder import folder_records
from .masks import check_mask
from .metadata import MetadataError, MetadataRecord, is_missing, read_metadata_records
from .recipe import CAPTION_MISSING_KEY, DATASET_KEY, MASK_KEY, DatasetEntry, apply_trigger, dataset_entries, is_multi

PROMPT_KEY = "prompt"
DIFFSYNTH_DEFAULT_FILE_KEYS = {"image", "video"}  # DiffSynth's --data_file_keys default: absent ones are normal


@dataclass
class ValidationReport:
    metadata_path: str
    total_rows: int = 0
    valid_rows: int = 0
    problems: list = field(default_factory=list)   # {"row", "line", "column", "reason"}; row None = whole dataset
    warnings: list = field(default_factory=list)   # same shape; do not invalidate a row
    resolutions: collections.Counter = field(default_factory=collections.Counter)   # "WxH" / "WxHxN" -> files
    frame_counts: collections.Counter = field(default_factory=collections.Counter)  # frames kept -> videos
    cleaned_metadata_path: str | None = None
    valid_records: list = field(default_factory=list, repr=False)
    row_keys: list = field(default_factory=list, repr=False)  # shape-bucket key of each valid row
    buckets: dict | None = None   # training's shape buckets (data/buckets.py bucket_stats), set by check_dataset

    @property
    def invalid_rows(self) -> int:
        return self.total_rows - self.valid_rows

    @property
    def fatal(self) -> bool:
        """True when no training can start from this dataset, whatever on_invalid says."""
        return any(p["row"] is None for p in self.problems) or self.valid_rows == 0

    def failed(self, on_invalid: str) -> bool:
        return self.fatal or (self.invalid_rows > 0 and on_invalid == "error")

    def add(self, record: MetadataRecord | None, column, reason: str, warning: bool = False) -> None:
        entry = {"row": record.index if record else None, "line": record.line if record else None,
                 "column": column, "reason": reason}
        (self.warnings if warning else self.problems).append(entry)

    def to_dict(self) -> dict:
        return {
            "metadata_path": self.metadata_path,
            "total_rows": self.total_rows,
            "valid_rows": self.valid_rows,
            "invalid_rows": self.invalid_rows,
            "fatal": self.fatal,
            "problems": self.problems,
            "warnings": self.warnings,
            "resolutions": dict(sorted(self.resolutions.items())),
            "frame_counts": {str(k): v for k, v in sorted(self.frame_counts.items())},
            "cleaned_metadata_path": self.cleaned_metadata_path,
            "buckets": self.buckets,
        }

    def summary(self, on_invalid: str | None = None, limit: int = 50) -> str:
        lines = [f"{self.metadata_path}: {self.valid_rows}/{self.total_rows} rows valid"]
        for p in self.problems[:limit]:
            where = "dataset" if p["row"] is None else f"row {p['row']}" + (f" (line {p['line']})" if p["line"] else "")
            lines.append(f"  {where} [{p['column']}]: {p['reason']}")
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more (see the report file)")
        for w in self.warnings[:10]:
            where = "dataset" if w["row"] is None else f"row {w['row']}"
            lines.append(f"  warning: {where} [{w['column']}]: {w['reason']}")
        if self.buckets and self.buckets["batch_size"] > 1:
            b = self.buckets
            lines.append(f"  batch_size {b['batch_size']}: {b['num_buckets']} shape bucket(s), {b['batches']} batches "
                         f"per epoch ({sum(x['remainder'] > 0 for x in b['buckets'])} smaller last batch(es))")
        if on_invalid == "skip" and self.invalid_rows and not self.fatal:
            lines.append(f"  dataset.on_invalid is skip: dropped {self.invalid_rows} row(s); training uses "
                         f"{self.valid_rows} (cleaned metadata: {self.cleaned_metadata_path})")
        return "\n".join(lines)


def _check_columns(report, records, data_file_keys, rules) -> None:
    """Dataset-level checks: data_file_keys name real columns; fixed sizes fit the family's multiple."""
    columns = set().union(*(r.row.keys() for r in records if r.row))
    missing = [k for k in data_file_keys if k not in columns]
    for key in missing:
        if key in DIFFSYNTH_DEFAULT_FILE_KEYS and len(missing) < len(data_file_keys):
            report.add(None, key, f"data_file_keys column {key!r} is in no row (normal with DiffSynth's "
                                  "default 'image,video')", warning=True)
            continue
        hint = difflib.get_close_matches(key, sorted(columns), n=1)
        report.add(None, key, f"data_file_keys names column {key!r}, which no row has (columns: "
                              f"{sorted(columns)})" + (f"; did you mean {hint[0]!r}?" if hint else "")
                              + "; fix dataset.data_file_keys")
    for name, value, factor in (("height", rules.height, rules.height_factor), ("width", rules.width, rules.width_factor)):
        if rules.height is not None and rules.width is not None and value % factor:
            report.add(None, f"resolution.{name}", f"fixed {name} {value} is not a multiple of {factor}, which "
                                                   "this model family needs; pick a multiple or leave it empty")


def _value_problem(key: str, value, kind) -> str | None:
    """Why a plain-value extra input cannot be used (a number, or one of a few words), or None."""
    if kind == "number":
        try:
            number = float(value)
        except (TypeError, ValueError):
            return f"{key} must be a number, got {value!r}"
        return None if number == number and abs(number) != float("inf") else f"{key} must be finite, got {value!r}"
    if value not in kind:
        return f"{key} must be one of {', '.join(map(str, kind))}, got {value!r}"
    return None


def _check_row(report, record, base_path, data_file_keys, video_keys, rules, extra_inputs, derived,
               entry: DatasetEntry | None = None, value_inputs=(), frame_matched: Iterable[str] = (),
               shorter: tuple = (), size_matched: Iterable[str] = ()) -> bool:
    """Add this row's problems to the report; True when the row is usable."""
    before = len(report.problems)
    if record.error:
        report.add(record, None, record.error)
        return False
    row = record.row
    prompt = row.get(PROMPT_KEY)
    folder = entry is not None and entry.source == "folder"
    if row.get(CAPTION_MISSING_KEY):
        report.add(record, PROMPT_KEY, f"no caption file beside {row.get(data_file_keys[0]) if data_file_keys else ''}"
                                       ": trained with the empty caption (missing_caption: empty)", warning=True)
    if entry is not None and entry.trigger_word and isinstance(prompt, str):
        prompt = row[PROMPT_KEY] = apply_trigger(prompt, entry.trigger_word)
    if PROMPT_KEY not in row:
        report.add(record, PROMPT_KEY, "the row has no prompt; every row needs a non-empty prompt string")
    elif folder and isinstance(prompt, str):
        pass  # a folder's caption may be empty (kohya trains on it)
    elif not isinstance(prompt, str) or not prompt.strip():
        got = "an empty cell (NaN/null)" if is_missing(prompt) else repr(prompt)
        report.add(record, PROMPT_KEY, f"prompt must be a non-empty string, got {got}")
    for key in extra_inputs:
        if key not in derived and (key not in row or is_missing(row[key])):
            report.add(record, key, f"extra_inputs column {key!r} is " + ("missing" if key not in row else "empty"))
    for key, kind in value_inputs:
        if key in extra_inputs and key in row and not is_missing(row[key]):
            problem = _value_problem(key, row[key], kind)
            if problem:
                report.add(record, key, problem)
    shapes, frames, parts = [], [], []
    for key in data_file_keys:
        if key not in row:
            continue  # DiffSynth skips keys a row lacks
        if key in video_keys:
            problems, cell_shapes = check_video_cell(base_path, row[key], rules.for_key(key))
        else:
            problems, cell_shapes = check_image_cell(base_path, row[key], rules.for_key(key), key, video_keys)
        for problem in problems:
            report.add(record, key, problem)
        shapes += cell_shapes
        parts.append((key, cell_shapes))
        frames += [int(s.split("x")[2]) for s in cell_shapes if key in video_keys]
    counts = {key: int(s.split("x")[2]) for key, cell in parts if key in video_keys for s in cell}
    for key in frame_matched:  # DiffSynth cuts such a clip to the video's length: fewer frames only warn
        if key in counts and "video" in counts and counts[key] < counts["video"]:
            report.add(record, key, f"keeps {counts[key]} frames, video {counts['video']}: only the first frames are "
                                    "conditioned (DiffSynth cuts this clip to the video's length and leaves the rest "
                                    "unconditioned); give it at least as many frames", warning=True)
    for key, fewer in shorter:  # the pipeline cuts such a clip to the video's frames minus `fewer`
        if key in counts and "video" in counts:
            need = counts["video"] - fewer
            if need < 1:
                report.add(record, "video", f"keeps {counts['video']} frames: {key} is cut to the video's frames minus "
                                            f"{fewer}, so the video needs at least {fewer + 1} (raise "
                                            "resolution.num_frames or use a longer clip)")
            elif counts[key] < need:
                report.add(record, key, f"keeps {counts[key]} frames, but the video's {counts['video']} need "
                                        f"{need} (the video's frames minus {fewer}): give this clip at least {need} "
                                        "frames, or drop the row")
    frame_matched = (*frame_matched, *(key for key, _ in shorter))
    counts = {k: n for k, n in counts.items() if k not in frame_matched}
    sizes = {key: cell[0] for key, cell in parts if len(cell) == 1}
    for key in size_matched:  # a control image conditions the target token for token: same trained size
        if key in sizes and "image" in sizes and sizes[key] != sizes["image"]:
            report.add(record, key, f"{key} is trained at {sizes[key]} but image at {sizes['image']}: it conditions "
                                    "the target token for token, so both must come out the same size; give it "
                                    "the image's size (or at least its aspect ratio)")
    if len(set(counts.values())) > 1:  # a control clip conditions the video frame by frame
        report.add(record, ",".join(counts), "the row's videos give different frame counts (" + ", ".join(
            f"{k}: {n}" for k, n in counts.items()) + f") at num_frames {rules.num_frames}: they must be equal; "
            "trim the clips to one length")
    if entry is not None and entry.masked_loss and not len(report.problems) > before:
        problem, mask = check_mask(row, base_path, data_file_keys, set(video_keys), entry.mask_column)
        if problem:
            report.add(record, entry.mask_column, problem)
        else:
            row[MASK_KEY] = mask
            if mask is None:
                report.add(record, entry.mask_column, "no mask (column empty, no <name>_mask.png beside the file): "
                                                      "the whole image is trained", warning=True)
    used = {PROMPT_KEY, *data_file_keys, *extra_inputs, CAPTION_MISSING_KEY, MASK_KEY, DATASET_KEY}
    if entry is not None and entry.masked_loss:
        used.add(entry.mask_column)
    for key, value in row.items():
        if key not in used and is_missing(value):
            report.add(record, key, "empty cell (NaN/null) in a column training does not use", warning=True)
    if len(report.problems) > before:
        return False
    report.resolutions.update(shapes)
    report.frame_counts.update(frames)
    report.row_keys.append(format_key(parts))
    return True


def validate_dataset(base_path: str | Path, metadata_path: str | Path, data_file_keys: list[str] | str,
                     rules: ImageRules, extra_inputs: Iterable[str] | None = None, *,
                     video_keys: Iterable[str] = DEFAULT_VIDEO_KEYS,
                     derived_inputs: Iterable[str] = (), entry: DatasetEntry | None = None,
                     value_inputs=(), frame_matched_keys: Iterable[str] = (),
                     shorter_clip_keys: tuple = (), size_matched_keys: Iterable[str] = ()) -> ValidationReport:
    """Check every row: files exist and decode, sizes fit the family, videos have a valid frame count,
    prompt is a non-empty string, extra inputs are present. ``derived_inputs`` are extra inputs the family
    computes from other columns (Wan's ``input_image`` = first video frame), so no column is required.
    ``entry``: the dataset's caption, mask and source options (``source: folder`` scans ``base_path``)."""
    data_file_keys, extra_inputs = split_keys(data_file_keys), split_keys(extra_inputs)
    folder = entry is not None and entry.source == "folder"
    report = ValidationReport(metadata_path=str(base_path if folder else metadata_path))
    try:
        if folder:
            if not data_file_keys:
                raise MetadataError("dataset.data_file_keys is empty: a folder's files go into its first column")
            records = folder_records(base_path, data_file_keys[0], entry.caption_extension, entry.missing_caption)
        else:
            records = read_metadata_records(metadata_path)
    except MetadataError as e:
        report.add(None, None, str(e))
        return report
    report.total_rows = len(records)
    if not records:
        report.add(None, None, f"{metadata_path} holds no rows")
    _check_columns(report, records, data_file_keys, rules)
    for record in progress(records, desc="data check", unit="row"):  # decoding every file takes a while
        if _check_row(report, record, str(base_path), data_file_keys, set(video_keys), rules, extra_inputs,
                      set(derived_inputs), entry, value_inputs, tuple(frame_matched_keys), tuple(shorter_clip_keys),
                      tuple(size_matched_keys)):
            report.valid_records.append(record)
    report.valid_rows = len(report.valid_records)
    return report


def write_cleaned_metadata(metadata_path: str | Path, report: ValidationReport, out_path: str | Path) -> Path:
    """Write the valid rows only, as JSONL (which holds list-valued cells that CSV cannot); NaN -> null."""
    with atomic_path(out_path) as tmp, open(tmp, "w") as f:
        for record in report.valid_records:
            f.write(json.dumps({k: (None if is_missing(v) else v) for k, v in record.row.items()}) + "\n")
    report.cleaned_metadata_path = str(out_path)
    return Path(out_path)


def write_resolution_plot(report: ValidationReport, path: str | Path) -> None:
    """DVC plot CSV: ``resolution,count``; a video's resolution reads WxHxN (N = frames kept)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["resolution", "count"])
        for res, count in sorted(report.resolutions.items()):
            writer.writerow([res, count])


def check_dataset(config, size_factor: int, metadata_out: str | Path, report_out: str | Path,
                  plot_out: str | Path, *, width_factor: int | None = None, time_division_factor: int = 4,
                  time_division_remainder: int = 1, video_keys: Iterable[str] = DEFAULT_VIDEO_KEYS,
                  derived_inputs: Iterable[str] = (), value_inputs=(),
                  frame_matched_keys: Iterable[str] = (), shorter_clip_keys: tuple = (),
                  fixed_size_keys: tuple = (), size_matched_keys: Iterable[str] = ()) -> ValidationReport:
    """The validation stage's work: validate, write the metadata training uses, the report and the plot.

    ``size_factor`` (and ``width_factor``, default the same) and the time division come from the model
    family; data code knows no model. The cleaned metadata is written only when training can start.
    Several datasets (``dataset.datasets``) are validated each with its own size and options, and written as one
    metadata file whose rows name their dataset (``_dataset``).
    """
    r = config.resolution
    entries, multi = dataset_entries(config), is_multi(config)
    reports = []
    for k, entry in enumerate(entries):
        rules = ImageRules(entry.max_pixels, entry.height, entry.width, size_factor, width_factor or size_factor,
                           r.num_frames, time_division_factor, time_division_remainder,
                           frame_sampling=r.frame_sampling, frame_seed=r.frame_seed, fixed_sizes=tuple(fixed_size_keys))
        if entry.source != "folder" and not entry.dataset_metadata_path:
            raise MetadataError(f"{entry.label(k if multi else None)}.dataset_metadata_path is empty: point it at "
                                "metadata.csv/.json/.jsonl (or set source: folder)")
        report = validate_dataset(entry.dataset_base_path, entry.dataset_metadata_path,
                                  config.dataset.data_file_keys, rules, config.model.extra_inputs,
                                  video_keys=video_keys, derived_inputs=derived_inputs, entry=entry,
                                  value_inputs=value_inputs, frame_matched_keys=frame_matched_keys,
                                  shorter_clip_keys=shorter_clip_keys, size_matched_keys=size_matched_keys)
        if multi:
            for record in report.valid_records:
                record.row[DATASET_KEY] = k
        reports.append(report)
    report = reports[0] if len(reports) == 1 else _merge(reports)
    processes = int((config.extra.get("accelerate") or {}).get("num_processes", 1) or 1)
    keys = [key for rep, e in zip(reports, entries) for key in rep.row_keys for _ in range(e.dataset_repeat)]
    report.buckets = bucket_stats(keys * config.dataset.dataset_repeat, config.train.batch_size, processes)
    if not report.fatal:
        write_cleaned_metadata(config.dataset.dataset_metadata_path, report, metadata_out)
    else:
        Path(metadata_out).unlink(missing_ok=True)  # a stale copy from an earlier run must not be trained on
    write_json(report_out, report.to_dict())
    write_resolution_plot(report, plot_out)
    return report


def _merge(reports: list[ValidationReport]) -> ValidationReport:
    """One report over several datasets: rows numbered across them, each problem naming its dataset."""
    merged = ValidationReport(metadata_path=", ".join(r.metadata_path for r in reports))
    for k, rep in enumerate(reports):
        for entry in rep.problems + rep.warnings:
            entry["dataset"] = k
            if entry["row"] is not None:
                entry["row"] += merged.total_rows
        merged.problems += rep.problems
        merged.warnings += rep.warnings
        merged.total_rows += rep.total_rows
        merged.valid_rows += rep.valid_rows
        merged.resolutions.update(rep.resolutions)
        merged.frame_counts.update(rep.frame_counts)
        merged.valid_records += rep.valid_records
        merged.row_keys += rep.row_keys
    return merged
