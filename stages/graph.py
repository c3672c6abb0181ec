"""The code `deps` of every dvc.yaml stage, derived from the import closure of the stage's script.

Usage: python stages/graph.py --check   (exit 1 naming each missing or superfluous dep)
       python stages/graph.py --write   (rewrite the code deps in dvc.yaml)

A stage's code deps are the files its script (and a `python -m diffsynth.X` in its cmd) imports, transitively, read
with `ast` (diffsynth/code_closure.py): single .py files, never whole folders, so an edit re-runs only the stages that
import it. A stage whose closure reaches the family registry also depends on the families it loads by name: in the
folder layout, `diffsynth/families/${model.family}` (DVC fills in params.yaml's value) plus whatever the family
folders import from outside them; in the flat layout (one module per family), every family module's closure.

Ownership: in each stage's `deps` list the generator owns the entries under stages/ and diffsynth/ (it writes them
first, in a fixed order); every other entry (data, configs, upstream outputs) is yours and kept as written, with
its comment. The rest of dvc.yaml is not touched. Only a deps list in block style (`- item` lines) is understood.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: stages/ is on sys.path, the project root may not be
    sys.path.insert(0, str(ROOT))

from diffsynth.code_closure import FAMILIES, REGISTRY, closure, family_modules, module_file  # noqa: E402

CODE_PREFIXES = ("stages/", "diffsynth/")
FAMILY_DEP = "diffsynth/families/${model.family}"  # the loaded family's folder (DVC interpolates the param)
STAGE_LINE = re.compile(r"^  (\w[\w-]*):\s*(#.*)?$")
DEPS_LINE = re.compile(r"^    deps:\s*(#.*)?$")
ITEM_LINE = re.compile(r"^      - ([^#]*?)\s*(#.*)?$")


def is_code_dep(path: str) -> bool:
    return path == "diffsynth" or path.startswith(CODE_PREFIXES)


def stage_roots(cmd: str, root: Path = ROOT) -> list[Path | str]:
    """What a stage's cmd runs: its stages/*.py scripts and `-m diffsynth...` modules."""
    roots: list[Path | str] = [root / s for s in re.findall(r"(stages/[\w/]+\.py)", cmd)]
    roots += re.findall(r"-m\s+(diffsynth[\w.]*)", cmd)
    return roots


def _rel(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def family_layout(root: Path = ROOT) -> tuple[set[Path], list[str]]:
    """(files every family-loading stage lists, extra deps): in the folder layout the families' imports from outside
    their folders plus FAMILY_DEP; in the flat layout every family module's closure."""
    families = sorted(family_modules(root))
    folders = {f: module_file(f, root).parent for f in families if module_file(f, root).name == "__init__.py"}
    files = closure(families, root) if families else set()
    if not folders:
        return files, []
    for name, folder in folders.items():  # a family folder must not reach into another: FAMILY_DEP covers one
        others = {_rel(p, root) for p in closure([name], root)
                  for other in folders.values() if other != folder and p.resolve().is_relative_to(other.resolve())}
        if others:
            raise SystemExit(f"{name} imports another family's files ({', '.join(sorted(others))}): move the shared "
                             f"code out of the family folders (below {FAMILIES.replace('.', '/')}) so "
                             f"{FAMILY_DEP} covers one family")
    inside = [f.resolve() for f in folders.values()]
    return {p for p in files if not any(p.resolve().is_relative_to(f) for f in inside)}, [FAMILY_DEP]


def code_deps(cmd: str, root: Path = ROOT) -> list[str]:
    """The generated code deps of a stage: its scripts first, then the library files sorted, then FAMILY_DEP."""
    roots = stage_roots(cmd, root)
    if not roots:
        return []
    files = closure(roots, root, extra=root / "stages")
    extra: list[str] = []
    if module_file(REGISTRY, root) in files:
        family_files, extra = family_layout(root)
        files |= family_files
    scripts = [_rel(r, root) for r in roots if isinstance(r, Path)]
    return scripts + sorted({_rel(p, root) for p in files} - set(scripts)) + extra


def _stage_blocks(lines: list[str]) -> dict[str, tuple[int, int]]:
    """{stage: (first line, end line)} of the entries under the top-level `stages:`."""
    starts, in_stages, stop = [], False, len(lines)
    for i, line in enumerate(lines):
        if re.match(r"^[^\s#]", line):
            if in_stages:
                stop = i
                break
            in_stages = line.startswith("stages:")
        elif in_stages and STAGE_LINE.match(line):
            starts.append((STAGE_LINE.match(line).group(1), i))
    ends = [i for _, i in starts[1:]] + [stop]
    return {name: (start, end) for (name, start), end in zip(starts, ends)}


def regenerate(text: str, root: Path = ROOT) -> tuple[str, dict[str, tuple[list[str], list[str]]]]:
    """(dvc.yaml with every stage's code deps regenerated, {stage: (missing, superfluous)} where they differ)."""
    import yaml  # only here: `--help` needs no third-party package

    stages = yaml.safe_load(text).get("stages", {})
    lines = text.splitlines(keepends=True)
    blocks = _stage_blocks(lines)
    diffs, out, pos = {}, [], 0
    for name, (start, end) in sorted(blocks.items(), key=lambda kv: kv[1][0]):
        wanted = code_deps(stages[name]["cmd"], root)
        deps_at = next((i for i in range(start, end) if DEPS_LINE.match(lines[i])), None)
        if deps_at is None:
            if wanted:
                raise SystemExit(f"dvc.yaml: stage {name} has no block-style `deps:` list to hold its code deps")
            continue
        items_end = deps_at + 1
        kept, present = [], []
        while items_end < end and (ITEM_LINE.match(lines[items_end]) or lines[items_end].startswith("      #")):
            m = ITEM_LINE.match(lines[items_end])
            if m and is_code_dep(m.group(1)):
                present.append(m.group(1))
            else:
                kept.append(lines[items_end])
            items_end += 1
        missing = [d for d in wanted if d not in present]
        superfluous = [d for d in present if d not in wanted]
        if missing or superfluous or present != wanted:
            diffs[name] = (missing, superfluous)
        out += lines[pos:deps_at + 1] + [f"      - {d}\n" for d in wanted] + kept
        pos = items_end
    out += lines[pos:]
    return "".join(out), diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1, naming every missing or superfluous code dep")
    mode.add_argument("--write", action="store_true", help="rewrite the code deps of dvc.yaml")
    parser.add_argument("--dvc-yaml", default=str(ROOT / "dvc.yaml"))
    args = parser.parse_args(argv)
    path = Path(args.dvc_yaml)
    text = path.read_text()
    new, diffs = regenerate(text, path.parent.resolve())
    for name, (missing, superfluous) in diffs.items():
        print(f"{name}: missing {missing or 'nothing'}; superfluous {superfluous or 'nothing'}"
              + ("" if missing or superfluous else " (order only)"))
    if args.write:
        if new != text:
            path.write_text(new)
            print(f"rewrote the code deps of {len(diffs)} stage(s) in {path}")
        return 0
    if diffs:
        print(f"{path}'s code deps differ from the import closure: run `python stages/graph.py --write`",
              file=sys.stderr)
        return 1
    print(f"{path}: every stage's code deps match its import closure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
