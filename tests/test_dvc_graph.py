"""The DVC graph is derived from the code: every stage's code deps in dvc.yaml are exactly its script's import
closure (stages/graph.py), stage scripts import only their own step, and the encoder cache's fingerprint covers the
source of the code that encodes. The DVC tests record a workspace's state with `dvc commit` (no stage runs), edit one
file, and read `dvc status`."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from diffsynth import cache, code_closure
from diffsynth.families import all_specs
from helpers import DEFAULT_PARAMS_TEXT

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "stages"))
import graph  # noqa: E402  (stages/graph.py)


def stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def closure_of(stage: str) -> set[str]:
    roots = graph.stage_roots(stages()[stage]["cmd"])
    return {p.relative_to(REPO).as_posix() for p in code_closure.closure(roots, REPO, extra=REPO / "stages")}


# ------------------------------------------------------------------------------------------ dvc.yaml vs the code

def test_every_stage_s_code_deps_are_its_import_closure():
    _, diffs = graph.regenerate((REPO / "dvc.yaml").read_text())
    problems = [f"{stage}: missing {missing}, superfluous {superfluous}"
                for stage, (missing, superfluous) in diffs.items()]
    assert not problems, ("dvc.yaml's code deps differ from the stages' imports (fix: python stages/graph.py "
                          "--write):\n" + "\n".join(problems))


def test_every_stage_script_is_a_dep_and_every_listed_file_exists():
    for name, stage in stages().items():
        deps = [d for d in stage["deps"] if graph.is_code_dep(d)]
        assert any(d.startswith("stages/") for d in deps), name
        missing = [d for d in deps if "${" not in d and not (REPO / d).is_file()]
        assert not missing, f"{name} lists code deps that are not files: {missing}"


# each stage script imports only its own step: training never sees export code or the CLI, export never the loop
NOT_IMPORTED = {
    "fetch_data": ("diffsynth/training/", "diffsynth/export/", "diffsynth/encoding.py", "diffsynth/cli.py"),
    "data": ("diffsynth/training/", "diffsynth/export/", "diffsynth/encoding.py", "diffsynth/cli.py"),
    "models": ("diffsynth/training/", "diffsynth/export/", "diffsynth/encoding.py", "diffsynth/cli.py"),
    "cache": ("diffsynth/training/", "diffsynth/export/", "diffsynth/cli.py", "diffsynth/command_line.py"),
    "cache_prompts": ("diffsynth/training/", "diffsynth/export/", "diffsynth/cli.py", "diffsynth/command_line.py"),
    "train": ("diffsynth/export/", "diffsynth/cli.py", "diffsynth/command_line.py", "stages/export.py"),
    "export": ("diffsynth/training/", "diffsynth/encoding.py", "diffsynth/cache.py", "diffsynth/cli.py",
               "diffsynth/command_line.py"),
}


@pytest.mark.parametrize("stage", sorted(NOT_IMPORTED))
def test_a_stage_imports_only_its_own_step(stage):
    found = sorted(f for f in closure_of(stage) if f.startswith(NOT_IMPORTED[stage]))
    assert not found, f"stage {stage} imports {found}"
    deps = stages()[stage]["deps"]
    assert not [d for d in deps if d.startswith(NOT_IMPORTED[stage]) or d == "diffsynth"]


def test_the_closure_holds_what_the_export_stage_runs():
    deps = set(stages()["export"]["deps"])
    assert {"diffsynth/models/lora_names.py", "diffsynth/families/${model.family}",
            "diffsynth/export/lora_formats.py"} <= deps


# ------------------------------------------------------------------------------------------ the closure itself

def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


BASE = {
    "diffsynth/__init__.py": "",
    "diffsynth/config.py": "def check():\n    from .families import get\n",  # function-local: counts
    "diffsynth/shared.py": "import os\n",
    "diffsynth/unused.py": "",
    "diffsynth/typing_only.py": "",
    "diffsynth/loop.py": """\
        from typing import TYPE_CHECKING
        from . import config
        if TYPE_CHECKING:
            from .typing_only import X
        """,
    "stages/train.py": "from _layout import X\nfrom diffsynth.loop import run\n",
    "stages/_layout.py": "import pathlib\n",
}
# the registry is the families package itself (code_closure.REGISTRY)
FLAT = {**BASE,
        "diffsynth/families/__init__.py": "def get():\n    from . import alpha, beta\n",
        "diffsynth/families/alpha.py": "from ..shared import x\n",
        "diffsynth/families/beta.py": "from . import alpha\n"}
FOLDERS = {**BASE,
           "diffsynth/families/__init__.py": "import importlib\ndef get(name):\n    importlib.import_module(name)\n",
           "diffsynth/families/alpha/__init__.py": "from .pipe import P\n",
           "diffsynth/families/alpha/pipe.py": "from ...shared import x\n",
           "diffsynth/families/beta/__init__.py": "import torch\n"}
DVC_YAML = """\
# a comment the generator keeps
stages:
  train:
    cmd: python stages/train.py
    deps:
      - stages/train.py
      - diffsynth/unused.py
      - data/in   # a data dep, kept with its comment
    outs:
      - out
"""


def test_closure_follows_function_local_and_relative_imports_but_not_the_registry_into_the_families(tmp_path):
    root = write_tree(tmp_path, FLAT)
    assert code_closure.family_modules(root) == {"diffsynth.families.alpha", "diffsynth.families.beta"}
    files = {p.relative_to(root).as_posix()
             for p in code_closure.closure([root / "stages/train.py"], root, extra=root / "stages")}
    assert files == {"stages/train.py", "stages/_layout.py", "diffsynth/__init__.py", "diffsynth/loop.py",
                     "diffsynth/config.py", "diffsynth/families/__init__.py"}
    # a family's own static imports are followed (beta -> alpha -> shared)
    beta = {p.relative_to(root).as_posix() for p in code_closure.closure(["diffsynth.families.beta"], root)}
    assert {"diffsynth/families/alpha.py", "diffsynth/shared.py"} <= beta


def test_generator_flat_layout_lists_every_family_module(tmp_path):
    root = write_tree(tmp_path, FLAT)
    (root / "dvc.yaml").write_text(DVC_YAML)
    assert graph.main(["--check", "--dvc-yaml", str(root / "dvc.yaml")]) == 1
    assert graph.main(["--write", "--dvc-yaml", str(root / "dvc.yaml")]) == 0
    text = (root / "dvc.yaml").read_text()
    deps = yaml.safe_load(text)["stages"]["train"]["deps"]
    assert deps == ["stages/train.py", "diffsynth/__init__.py", "diffsynth/config.py",
                    "diffsynth/families/__init__.py", "diffsynth/families/alpha.py", "diffsynth/families/beta.py",
                    "diffsynth/loop.py", "diffsynth/shared.py", "stages/_layout.py",
                    "data/in"]
    assert "# a comment the generator keeps" in text and "# a data dep, kept with its comment" in text
    assert graph.main(["--check", "--dvc-yaml", str(root / "dvc.yaml")]) == 0


def test_generator_folder_layout_depends_on_the_family_by_name(tmp_path):
    root = write_tree(tmp_path, FOLDERS)
    (root / "dvc.yaml").write_text(DVC_YAML)
    graph.main(["--write", "--dvc-yaml", str(root / "dvc.yaml")])
    deps = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["train"]["deps"]
    assert graph.FAMILY_DEP in deps and "diffsynth/shared.py" in deps  # what a family imports from outside it
    assert not [d for d in deps if d.startswith(("diffsynth/families/alpha", "diffsynth/families/beta"))]
    # a family folder that reaches into another cannot be covered by one family's folder: named
    (root / "diffsynth/families/beta/__init__.py").write_text("from ..alpha import pipe\n")
    with pytest.raises(SystemExit, match="beta imports another family's files"):
        graph.main(["--check", "--dvc-yaml", str(root / "dvc.yaml")])


def test_the_repository_s_family_deps_resolve_for_params_and_every_preset():
    """In the folder layout `diffsynth/families/${model.family}` must exist for every shipped model.family value
    (a missing dep path stops `dvc repro`)."""
    if not any(graph.FAMILY_DEP in s["deps"] for s in stages().values()):
        pytest.skip("flat layout: every family module is listed")
    families = {yaml.safe_load((REPO / "params.yaml").read_text())["model"]["family"]}
    families |= {(yaml.safe_load(p.read_text()) or {}).get("model", {}).get("family")
                 for p in (REPO / "presets").rglob("*.yaml")}
    missing = sorted(f for f in families - {None} if not (REPO / "diffsynth/families" / f).is_dir())
    assert not missing, f"model.family values with no diffsynth/families/<name>/ folder: {missing}"


# ------------------------------------------------------------------------------------------ the cache fingerprint

def test_cache_fingerprint_code_files_are_deps_of_the_cache_stages():
    """Whatever the fingerprint hashes, DVC re-runs the cache stages for: else training would refuse a cache that
    DVC considers current."""
    for stage in ("cache", "cache_prompts"):
        deps = set(stages()[stage]["deps"])
        for spec in all_specs():
            files = {p.relative_to(REPO).as_posix()
                     for p in code_closure.closure(["diffsynth.encoding", spec.load_pipeline.__module__], REPO)}
            family_folder = re.compile(r"^diffsynth/families/[^/]+/")
            uncovered = sorted(f for f in files - deps if not (graph.FAMILY_DEP in deps and family_folder.match(f)))
            assert not uncovered, f"{stage} ({spec.name}): hashed by the fingerprint, not a dep: {uncovered}"
            assert "diffsynth/data/resolution.py" in files and "diffsynth/data/operators.py" in files


def copy_package(dst: Path) -> Path:
    shutil.copytree(REPO / "diffsynth", dst / "diffsynth", ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def digest_in(root: Path, family: str = "qwen_image") -> str:
    """The code digest computed by a fresh interpreter importing the package at ``root``."""
    code = ("import sys; from diffsynth.config import load_params; from diffsynth import cache; "
            "print(cache.code_digest(load_params(sys.argv[1])))")
    params = root / "params.yaml"
    params.write_text(DEFAULT_PARAMS_TEXT)
    out = subprocess.run([sys.executable, "-c", code, str(params)], cwd=root,
                         env={"PYTHONPATH": str(root), "PATH": ""}, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.slow  # two fresh interpreters importing torch
def test_cache_fingerprint_covers_the_encoding_code_and_is_the_same_in_every_checkout(tmp_path):
    from helpers import DEFAULT_PARAMS
    from diffsynth.config import config_from_dict

    config = config_from_dict(DEFAULT_PARAMS)
    here = cache.fingerprint(config, None)["code"]
    assert here == cache.code_digest(config) and re.fullmatch(r"[0-9a-f]{64}", here)
    # another checkout at another path, in another process, with CRLF line endings: the same digest
    other = copy_package(tmp_path / "checkout")
    for path in (other / "diffsynth").rglob("*.py"):
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert digest_in(other) == here
    # the resize code shapes every encoding: editing it changes the digest
    resize = other / "diffsynth/data/resolution.py"
    resize.write_text(resize.read_text() + "\n# a change\n")
    assert digest_in(other) != here
    # a family not in use is not hashed
    files = cache.encoding_code(config)
    assert REPO / "diffsynth/data/resolution.py" in files
    assert not [p for p in files if p.name.startswith("wan")]


def test_training_refuses_a_cache_built_by_other_code(tmp_path):
    folder = tmp_path / "cache"
    fp = {"version": cache.VERSION, "code": "0" * 64, "max_pixels": 4096}
    cache.write_cache(folder, lambda item: {"latents": item["x"]}, [(0, {"x": cache.torch.zeros(2)})], fp, total=1)
    with pytest.raises(cache.CacheError, match="encoding code changed since the cache was built"):
        cache.CachedDataset(folder, expected={**fp, "code": "1" * 64})


# ------------------------------------------------------------------------------------------ what DVC sees

@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """A clone of the repository whose every stage is recorded as up to date (`dvc commit` over placeholder outputs:
    nothing runs; only the code deps matter here)."""
    from test_pipeline_dvc import copy_repo, dvc

    root = copy_repo(tmp_path_factory.mktemp("graph"))
    params = yaml.safe_load((root / "params.yaml").read_text())

    def interpolate(text: str) -> str:
        def value(m):
            v = params
            for key in m.group(1).split("."):
                v = v[key]
            return str(v)
        return re.sub(r"\$\{([\w.]+)\}", value, text)

    for stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path = root / interpolate(entry if isinstance(entry, str) else next(iter(entry)))
                target = path if path.suffix else path / "placeholder"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("placeholder\n")
    dvc(root, "commit", "-f")
    assert json.loads(dvc(root, "status", "--json").strip().splitlines()[-1]) == {}
    return root, dvc


def changed_stages(root: Path, dvc, edit: str) -> set[str]:
    path = root / edit
    original = path.read_text()
    path.write_text(original + "\n# an edit\n")
    try:
        return set(json.loads(dvc(root, "status", "--json").strip().splitlines()[-1]))
    finally:
        path.write_text(original)


@pytest.mark.slow
def test_editing_the_export_code_re_runs_only_export(committed):
    root, dvc = committed
    assert changed_stages(root, dvc, "diffsynth/export/lora_formats.py") == {"export"}
    assert changed_stages(root, dvc, "stages/export.py") == {"export"}


@pytest.mark.slow
def test_editing_the_resize_code_marks_the_cache_stages_changed(committed):
    root, dvc = committed
    changed = changed_stages(root, dvc, "diffsynth/data/resolution.py")
    assert {"cache", "cache_prompts"} <= changed
