"""Coverage of DiffSynth-Studio's example recipes: per DiffSynth family, the recipes a preset reproduces, those
``diffsynth params --from-args`` accepts as written, and those refused with the reason (``diffsynth families``).

It runs the command-line layer over the recipe table (``families/upstream_recipes.yaml``), so it sits above both."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .command_line import build_arg_parser, config_from_args
from .errors import ConfigError
from .families.upstream import (PRESET_RECIPE, diffsynth_family, our_families, recognise_argv, refused_by_name,
                                 table)
from .presets import PRESETS_DIR


@dataclass
class FamilyCoverage:
    family: str                                                    # DiffSynth family (examples/<family>/)
    ours: list[str] = field(default_factory=list)                  # our families that train it
    preset: dict[str, list[str]] = field(default_factory=dict)     # recipe path -> preset names
    flags: list[str] = field(default_factory=list)                 # recipes whose flags run as written
    refused: dict[str, str] = field(default_factory=dict)          # recipe path -> why (one line)

    @property
    def total(self) -> int:
        return len(self.preset) + len(self.flags) + len(self.refused)


def preset_recipes(presets_dir: str | Path | None = None) -> dict[str, list[str]]:
    """{upstream recipe path: [preset names]} from each preset's header comment (the recipe it reproduces);
    a preset without one matches by name: ``<recipe name>-<kind>.yaml`` (``qwen-image-lora`` <- lora/Qwen-Image.sh)."""
    folder = Path(presets_dir) if presets_dir else _presets_dir()
    by_name = {f"{r['name']}-{r['kind']}".lower(): r["path"] for r in table()["recipes"]}
    out: dict[str, list[str]] = {}
    if not folder or not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.yaml")):  # real presets only; tiny/ twins reproduce the same recipes
        header = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            header.append(line)
        found = PRESET_RECIPE.search(" ".join(header))
        recipe = found.group(0) if found else by_name.get(path.stem.lower())
        if recipe:
            out.setdefault(recipe, []).append(path.stem)
    return out


def _flag(args: list[str], name: str) -> str | None:
    return next((args[i + 1] for i, a in enumerate(args[:-1]) if a == f"--{name}"), None)


def is_split(recipe: dict) -> bool:
    """DiffSynth's split training: ``<task>:data_process`` (encoders) then ``<task>:train`` on its cache."""
    tasks = [c.get("task") or "" for c in recipe["commands"]]
    return len(tasks) == 2 and tasks[0].endswith(":data_process") and tasks[1].endswith(":train")


def recipe_argv(recipe: dict, command: int = 0) -> list[str]:
    """The flags a preset reproduces: command ``command`` as written, or for a split recipe the one run our cache
    and train stages make of its two commands: the second's flags with the first's data, the model entries of
    both (encoders, then the DiT) and the plain task (``sft``)."""
    if not is_split(recipe):
        return list(recipe["commands"][command]["args"])
    first, second = (list(c["args"]) for c in recipe["commands"])
    entries = f"{_flag(first, 'model_id_with_origin_paths') or ''},{_flag(second, 'model_id_with_origin_paths') or ''}"
    models = ",".join(dict.fromkeys(e for e in entries.split(",") if e))  # each entry once, in order
    out, skip = [], False
    for i, a in enumerate(second):
        if skip:
            skip = False
            continue
        if a in ("--task", "--dataset_base_path", "--dataset_repeat", "--model_id_with_origin_paths"):
            skip = True
            continue
        out.append(a)
    task = recipe["commands"][1]["task"].split(":")[0]
    return ["--dataset_base_path", _flag(first, "dataset_base_path"), "--dataset_metadata_path",
            _flag(first, "dataset_metadata_path"), "--dataset_repeat", _flag(second, "dataset_repeat") or "1",
            "--model_id_with_origin_paths", models, *out, "--task", task]


def _presets_dir() -> Path | None:
    # presets/ is relative to the project root; the package's checkout is the fallback
    for folder in (PRESETS_DIR, Path(__file__).resolve().parents[1] / "presets"):
        if folder.is_dir():
            return folder
    return None


def run_by_flags(args: list[str]) -> tuple[str | None, str | None]:
    """(our family, None) when ``diffsynth params --from-args ARGS`` accepts a command line, else (None, why)."""
    try:
        recognise_argv(args)
        _, unknown = build_arg_parser().parse_known_args(args)
        if unknown:
            flags = sorted({a.split("=", 1)[0] for a in unknown if a.startswith("--")})
            return None, f"flags we do not have: {', '.join(flags) or ' '.join(unknown)}"
        return config_from_args(list(args)).model.family, None
    except ConfigError as e:
        return None, str(e).splitlines()[0]


def coverage(presets_dir: str | Path | None = None) -> list[FamilyCoverage]:
    """Per DiffSynth family: recipes with a preset, recipes that run by flags, recipes refused and why."""
    presets = preset_recipes(presets_dir)
    rows = {name: FamilyCoverage(name, sorted(o for o in our_families() if diffsynth_family(o) == name))
            for name in table()["families"]}
    for recipe in table()["recipes"]:
        row = rows.setdefault(recipe["family"], FamilyCoverage(recipe["family"]))
        if recipe["path"] in presets:
            row.preset[recipe["path"]] = presets[recipe["path"]]
            continue
        by_name = refused_by_name(recipe)
        if by_name:
            row.refused[recipe["path"]] = by_name
            continue
        if not recipe["commands"]:
            row.refused[recipe["path"]] = "no training command: " + (recipe.get("note") or "inference only")[:120]
            continue
        why = None
        for command in recipe["commands"]:
            _, why = run_by_flags(command["args"])
            if why:
                break
        if why:
            row.refused[recipe["path"]] = why
        else:
            row.flags.append(recipe["path"])
    return list(rows.values())


def format_coverage(rows: list[FamilyCoverage], details: bool = True) -> str:
    t = table()
    lines = [(f"DiffSynth-Studio recipes at {t['commit'][:12]} ({t['commit_date'][:10]}): "
              f"{len(t['recipes'])} recipes in {len(t['families'])} families"), "",
             f"{'DiffSynth family':<22}{'ours':<34}{'recipes':>8}{'preset':>8}{'flags':>7}{'refused':>9}"]
    for r in rows:
        lines.append(f"{r.family:<22}{', '.join(r.ours) or '-':<34}{r.total:>8}{len(r.preset):>8}{len(r.flags):>7}"
                     f"{len(r.refused):>9}")
    lines.append(f"{'total':<56}{sum(r.total for r in rows):>8}{sum(len(r.preset) for r in rows):>8}"
                 f"{sum(len(r.flags) for r in rows):>7}{sum(len(r.refused) for r in rows):>9}")
    lines += ["", ("preset: a presets/ file reproduces it; flags: `diffsynth params --from-args` accepts its commands as "
                   "written (no preset yet); refused: one line says why.")]
    if details:
        for r in rows:
            lines += ["", f"{r.family}:"]
            if not r.ours:  # every recipe refused for the same reason: the family is not ours
                lines.append(f"  refused: all {r.total} (a family we do not train yet; model ids "
                             f"{', '.join(table()['families'].get(r.family, {}).get('model_ids', [])[:4])}...)")
                continue
            lines += [f"  preset  {_short(p)}  <- {', '.join(n)}" for p, n in r.preset.items()]
            lines += [f"  flags   {_short(p)}" for p in r.flags]
            lines += [f"  refused {_short(p)}: {why.split('; we train:')[0]}" for p, why in r.refused.items()]
    return "\n".join(lines)


def _short(recipe_path: str) -> str:
    return recipe_path.split("/model_training/", 1)[-1]
