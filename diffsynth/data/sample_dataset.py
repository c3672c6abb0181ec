"""The built-in sample dataset: coloured shapes a model can learn to tell apart, in DiffSynth's layout."""
from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image, ImageFilter

from ..files import staged_dir
from .shapes import BACKGROUNDS, COLOURS, SHAPES, draw_shape


def _shapes(size: int):
    """(file stem, image, prompt) of every colour x shape x background, in one fixed order."""
    for bg_name, bg in BACKGROUNDS.items():
        for colour_name, colour in COLOURS.items():
            for shape in SHAPES:
                yield (f"{colour_name}_{shape}_on_{bg_name}", draw_shape(shape, colour, bg, size),
                       f"a {colour_name} {shape} on a {bg_name} background")


def build_shapes_dataset(out_dir: str | Path, size: int = 128) -> Path:
    """Write 32 images (4 colours × 4 shapes × 2 backgrounds) and ``metadata.csv`` (image,prompt).

    The folder is rebuilt from scratch in a temporary sibling and swapped in, so a crash never leaves
    half a dataset behind.
    """
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as tmp:
        rows = []
        for name, image, prompt in _shapes(size):
            image.save(tmp / f"{name}.png")
            rows.append((f"{name}.png", prompt))
        with open(tmp / "metadata.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "prompt"])
            writer.writerows(rows)
    return out_dir / "metadata.csv"


def build_shapes_edit_dataset(out_dir: str | Path, size: int = 128, key: str = "edit_image") -> Path:
    """An edit dataset in DiffSynth's Qwen-Image-Edit layout: ``metadata.json`` rows with ``edit_image`` (a
    shape), ``image`` (the same shape recoloured) and ``prompt`` ("make the circle blue"). 16 rows: every shape
    in every colour, each recoloured to the next colour, on white. Written in a temporary sibling, then swapped in.
    ``key`` names the reference column (:func:`build_builtin` takes it from ``dataset.data_file_keys``)."""
    import json

    out_dir = Path(out_dir)
    names = list(COLOURS)
    with staged_dir(out_dir) as tmp:
        for colour_name, colour in COLOURS.items():
            for shape in SHAPES:
                draw_shape(shape, colour, BACKGROUNDS["white"], size).save(tmp / f"{colour_name}_{shape}.png")
        rows = [{"image": f"{names[(i + 1) % len(names)]}_{shape}.png", key: f"{source}_{shape}.png",
                 "prompt": f"make the {shape} {names[(i + 1) % len(names)]}"}
                for i, source in enumerate(names) for shape in SHAPES]
        (tmp / "metadata.json").write_text(json.dumps(rows, indent=1))
    return out_dir / "metadata.json"


def control_image(image: Image.Image) -> Image.Image:
    """An edge map of a shape image (white outlines on black, a canny-like control image) at the same size."""
    return image.convert("L").filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 32 else 0).convert("RGB")


def build_shapes_control_dataset(out_dir: str | Path, size: int = 128, key: str = "controlnet_image") -> Path:
    """The shapes dataset with a control image per row, in DiffSynth's Fun-ControlNet layout: ``metadata.csv``
    (image, ``key``, prompt), ``key`` the edge map of the row's image (same size, so it conditions the target token
    for token). :func:`build_builtin` takes ``key`` from ``dataset.data_file_keys``."""
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as tmp:
        rows = []
        for name, image, prompt in _shapes(size):
            image.save(tmp / f"{name}.png")
            control_image(image).save(tmp / f"{name}_edges.png")
            rows.append((f"{name}.png", f"{name}_edges.png", prompt))
        with open(tmp / "metadata.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", key, "prompt"])
            writer.writerows(rows)
    return out_dir / "metadata.csv"


def _moving_shapes(out_dir):
    from .sample_video import build_moving_shapes_dataset  # needs PyAV; image users never import it

    return build_moving_shapes_dataset(out_dir)


def with_distill_columns(metadata: Path, num_inference_steps: int = 4, cfg_scale: float = 4.0) -> Path:
    """Add the columns DiffSynth's direct_distill recipes read through ``--extra_inputs`` to a metadata.csv: each
    row's ``seed`` (its index), ``rand_device`` (cpu), the student's ``num_inference_steps`` and the teacher's
    ``cfg_scale``. DiffSynth's distill data holds teacher samples made from those seeds; here the images stand in."""
    with open(metadata, newline="") as f:
        rows = list(csv.reader(f))
    rows[0] += ["seed", "rand_device", "num_inference_steps", "cfg_scale"]
    for i, row in enumerate(rows[1:]):
        row += [str(i), "cpu", str(num_inference_steps), str(cfg_scale)]
    with open(metadata, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return metadata


def _moving_shapes_conditioned(out_dir):
    from .sample_video import build_moving_shapes_conditioned_dataset

    return build_moving_shapes_conditioned_dataset(out_dir)


def _moving_shapes_control(out_dir, keys=("control_video",)):
    from .sample_video import build_moving_shapes_control_dataset

    return build_moving_shapes_control_dataset(out_dir, keys)


# name -> builder(out_dir) returning the written metadata file
BUILTIN_DATASETS = {"shapes": build_shapes_dataset, "moving_shapes": _moving_shapes,
                    "shapes_edit": build_shapes_edit_dataset, "shapes_control": build_shapes_control_dataset,
                    "shapes_distill": lambda out_dir: with_distill_columns(build_shapes_dataset(out_dir)),
                    "moving_shapes_distill": lambda out_dir: with_distill_columns(_moving_shapes(out_dir)),
                    "moving_shapes_conditioned": _moving_shapes_conditioned,
                    "moving_shapes_control": _moving_shapes_control}


def build_builtin(name: str, out_dir: str | Path, data_file_keys: str = "") -> Path:
    """Write the built-in dataset ``name``. The edit dataset's reference column is the file column of
    ``data_file_keys`` beside image/video (``image,edit_image`` -> edit_image), so every family's recipe
    finds its own column name."""
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"Unknown built-in dataset {name!r}; available: {sorted(BUILTIN_DATASETS)}")
    if name == "shapes_edit":
        keys = [k.strip() for k in str(data_file_keys or "").split(",") if k.strip() not in ("", "image", "video")]
        return build_shapes_edit_dataset(out_dir, key=keys[0] if keys else "edit_image")
    if name == "shapes_control":
        keys = [k.strip() for k in str(data_file_keys or "").split(",") if k.strip() not in ("", "image", "video")]
        return build_shapes_control_dataset(out_dir, key=keys[0] if keys else "controlnet_image")
    if name == "moving_shapes_control":  # its conditioning columns are the file keys beside video
        keys = [k.strip() for k in str(data_file_keys or "").split(",") if k.strip() not in ("", "image", "video")]
        return _moving_shapes_control(out_dir, tuple(keys) or ("control_video",))
    return BUILTIN_DATASETS[name](out_dir)
