"""Read DiffSynth-Studio's example training recipes into ``diffsynth/families/upstream_recipes.yaml``.

Usage: python tests/upstream/read_recipes.py DIFFSYNTH_GIT_DIR [--commit REV] [--out PATH]

DIFFSYNTH_GIT_DIR is a clone (or bare mirror) of https://github.com/modelscope/DiffSynth-Studio. The script reads
``examples/<family>/model_training/**/*.sh`` and each family's ``train.py`` at REV (default HEAD) with ``git show``,
so no work tree is needed, and writes the table the family recognition and the coverage report use. Only the
recipes' commands as upstream writes them are recorded (commented-out commands are skipped); nothing is run.
"""
from __future__ import annotations

import argparse
import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "diffsynth" / "families" / "upstream_recipes.yaml"
RECIPE = re.compile(r"^examples/([^/]+)/model_training/(.+)\.sh$")
TRAIN_PY = re.compile(r"^examples/([^/]+)/model_training/(?:.+/)?train\.py$")
PARSERS_PY = "diffsynth/diffusion/parsers.py"


def git(git_dir: Path, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True,
                          text=True).stdout


def logical_lines(text: str) -> list[str]:
    """Shell lines with backslash-newline continuations joined, as bash reads them."""
    return re.sub(r"\\\r?\n", " ", text).splitlines()


def parse_command(line: str) -> dict | None:
    """One ``accelerate launch [opts] script.py args`` (or ``python script.py args``) line, else None."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    tokens = shlex.split(stripped, comments=True)
    if tokens[:2] == ["accelerate", "launch"]:
        rest = tokens[2:]
    elif tokens[:1] in (["python"], ["python3"]):
        rest = tokens[1:]
    else:
        return None
    launcher: list[str] = []
    while rest and not rest[0].endswith(".py"):
        launcher.append(rest.pop(0))
    if not rest:
        return None
    script, args = rest[0], rest[1:]
    return {"script": script, "launcher": launcher, "args": args}


def flag_values(args: list[str]) -> dict[str, str | bool]:
    """``--flag value`` / ``--flag=value`` / bare ``--flag`` -> {flag: value or True}."""
    out: dict[str, str | bool] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            if eq:
                out[name] = value
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                out[name] = args[i + 1]
                i += 1
            else:
                out[name] = True
        i += 1
    return out


def model_ids(entries: str) -> list[str]:
    """The hub ids of a ``--model_id_with_origin_paths`` value (``id:origin_pattern,...``)."""
    ids = []
    for entry in str(entries or "").split(","):
        model_id = entry.strip().split(":", 1)[0].strip()
        if model_id and model_id not in ids:
            ids.append(model_id)
    return ids


def recipe_record(path: str, text: str) -> dict:
    family, rel = RECIPE.match(path).groups()
    commands, notes = [], []
    for line in logical_lines(text):
        command = parse_command(line)
        if command is None:
            continue
        flags = flag_values(command["args"])
        launcher = flag_values(command["launcher"])
        record = {"script": command["script"]}
        if launcher.get("config_file"):
            record["accelerate_config"] = launcher["config_file"]
        record["task"] = flags.get("task", "sft")
        record["args"] = command["args"]  # as upstream writes them (its model ids and extra inputs among them)
        commands.append((record, flags))
    if not commands:
        notes = [ln.lstrip("# ").strip() for ln in text.splitlines() if ln.strip().startswith("#")]
    ids: list[str] = []
    extra: list[str] = []
    for _, flags in commands:
        ids += [i for i in model_ids(flags.get("model_id_with_origin_paths")) if i not in ids]
        extra += [k.strip() for k in str(flags.get("extra_inputs") or "").split(",")
                  if k.strip() and k.strip() not in extra]
    out = {"path": path, "family": family, "name": Path(rel).name, "kind": str(Path(rel).parent),
           "model_ids": ids, "tasks": sorted({c["task"] for c, _ in commands}), "extra_inputs": extra,
           "commands": [c for c, _ in commands]}
    if notes:
        out["note"] = " ".join(notes)
    return out


def parser_helpers(source: str) -> dict[str, list[str]]:
    """{helper name: every flag it adds, through the helpers it calls} for a parsers module."""
    direct = {node.name: calls_in(node) for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)}

    def resolve(name: str, seen: tuple = ()) -> list[str]:
        flags, helpers = direct.get(name, ([], []))
        for helper in helpers:
            if helper not in seen and helper != name:
                flags = flags + resolve(helper, seen + (name,))
        return list(dict.fromkeys(flags))

    return {name: resolve(name) for name in direct}


def calls_in(node: ast.AST) -> tuple[list[str], list[str]]:
    """Flags of ``add_argument("--x", ...)`` calls and names of ``add_*_config`` helpers called in ``node``."""
    flags, helpers = [], []
    for call in ast.walk(node):
        if not isinstance(call, ast.Call):
            continue
        name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
        if name == "add_argument":
            for arg in call.args:
                if isinstance(arg, ast.Constant) and str(arg.value).startswith("--"):
                    flags.append(str(arg.value)[2:])
        elif name.startswith("add_") and name.endswith("_config"):
            helpers.append(name)
    return flags, helpers


def train_py_record(source: str, shared: dict[str, list[str]]) -> dict:
    """What a train.py adds to DiffSynth's general flags (its size flags, its own flags) and its tasks."""
    flags, helpers = calls_in(ast.parse(source))
    tasks: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict) and node.keys and all(isinstance(k, ast.Constant) for k in node.keys):
            keys = [str(k.value) for k in node.keys]
            if "sft" in keys:
                tasks = keys
    size = [h for h in helpers if h.endswith("_size_config")]
    others = [h for h in helpers if h != "add_general_config" and h not in size]
    own = list(dict.fromkeys(flags + [f for h in others for f in shared.get(h, [])]))
    return {"size_config": size[0] if size else None, "size_flags": [f for h in size for f in shared.get(h, [])],
            "own_flags": own, "tasks": tasks}


def build(git_dir: Path, rev: str = "HEAD") -> dict:
    commit = git(git_dir, "rev-parse", rev).strip()
    files = git(git_dir, "ls-tree", "-r", "--name-only", commit).splitlines()
    shared = parser_helpers(git(git_dir, "show", f"{commit}:{PARSERS_PY}")) if PARSERS_PY in files else {}
    recipes = [recipe_record(p, git(git_dir, "show", f"{commit}:{p}")) for p in sorted(files) if RECIPE.match(p)]
    families: dict[str, dict] = {}
    for path in sorted(files, key=lambda p: (p.count("/"), p)):  # each family's own train.py first
        m = TRAIN_PY.match(path)
        if not m:
            continue
        record = train_py_record(git(git_dir, "show", f"{commit}:{path}"), shared)
        if path == f"examples/{m.group(1)}/model_training/train.py":
            families[m.group(1)] = {"train_py": path, **record}
        elif m.group(1) in families:  # a special recipe's own script (FLUX.2's DMD2)
            families[m.group(1)].setdefault("other_scripts", {})[path] = {"own_flags": record["own_flags"],
                                                                          "tasks": record["tasks"]}
    for family, record in families.items():
        mine = [r for r in recipes if r["family"] == family]
        record["recipes"] = len(mine)
        ids: list[str] = []
        for r in mine:
            ids += [i for i in r["model_ids"] if i not in ids]
        record["model_ids"] = sorted(ids, key=str.lower)
    id_table: dict[str, list[str]] = {}
    for r in recipes:
        for model_id in r["model_ids"]:
            fams = id_table.setdefault(model_id, [])
            if r["family"] not in fams:
                fams.append(r["family"])
    return {
        "source": "https://github.com/modelscope/DiffSynth-Studio",
        "commit": commit,
        "commit_date": git(git_dir, "show", "-s", "--format=%cI", commit).strip(),
        "generated_by": "tests/upstream/read_recipes.py",
        "general_flags": shared.get("add_general_config", []),
        "families": families,
        "model_ids": {k: sorted(v) for k, v in sorted(id_table.items(), key=lambda kv: kv[0].lower())},
        "recipes": recipes,
    }


class _Dumper(yaml.SafeDumper):
    pass


def _list(dumper, data):
    # flag lists and short lists on one line each: the table stays readable and diffable per recipe
    flow = all(isinstance(x, (str, int, float, bool)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _list)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("git_dir", type=Path, help="DiffSynth-Studio git directory (a clone's .git or a bare mirror)")
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    git_dir = args.git_dir / ".git" if (args.git_dir / ".git").exists() else args.git_dir
    table = build(git_dir, args.commit)
    header = (f"# DiffSynth-Studio's example training recipes, read from {table['source']} at {table['commit']}\n"
              f"# by {table['generated_by']} (refresh: python {table['generated_by']} <DiffSynth-Studio git dir>).\n"
              "# Data, not code: diffsynth/families/upstream.py reads it. Do not edit by hand.\n")
    args.out.write_text(header + yaml.dump(table, Dumper=_Dumper, sort_keys=False, width=100000,
                                           allow_unicode=True))
    print(f"wrote {args.out}: {len(table['recipes'])} recipes, {len(table['families'])} families, "
          f"{len(table['model_ids'])} model ids (commit {table['commit'][:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
