"""The family spec is the only place that knows a family: no module outside ``diffsynth/families/`` (and the
model tables that describe checkpoint layouts) names one in code."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from diffsynth.config import config_from_dict
from diffsynth.errors import ConfigError
from diffsynth.families import all_specs, get_spec

PACKAGE = Path(__file__).resolve().parents[1] / "diffsynth"
# model tables: which keys/shapes/configs each family's checkpoints have, and their tiny twins
MODEL_TABLES = {"models/components.py", "models/real_configs.py", "models/tiny.py", "models/convert_flux.py",
                "models/block_shapes.py",  # what each DiT class's blocks are called with (plan, benchmarks)
                "models/convert_wan.py", "models/tokenizers.py"}
FAMILY_WORD = re.compile(r"qwen|flux|kontext|\bwan(?![a-z])|wanvideo", re.IGNORECASE)
# DiffSynth's default family (its seed train.py is Qwen-Image's) is the schema's default value
ALLOWED = {("config.py", "qwen_image")}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def family_names_in_code(path: Path) -> list[str]:
    """String constants used as values (not docstrings or prose such as help texts and error messages),
    identifiers and attribute names that name a family."""
    tree = ast.parse(path.read_text())
    docs, found = _docstrings(tree), []
    for node in ast.walk(tree):
        text = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs \
                and " " not in node.value.strip():
            text = node.value
        elif isinstance(node, ast.Name):
            text = node.id
        elif isinstance(node, ast.Attribute):
            text = node.attr
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            text = node.name
        elif isinstance(node, ast.alias):
            text = node.name
        if text and FAMILY_WORD.search(text) and (path.name, text) not in ALLOWED:
            found.append(f"{path.relative_to(PACKAGE)}:{getattr(node, 'lineno', '?')}: {text[:60]!r}")
    return found


def test_no_module_outside_the_families_names_a_family():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("families/") or rel in MODEL_TABLES:
            continue
        offenders += family_names_in_code(path)
    assert offenders == []


def test_the_checker_sees_family_names():
    assert family_names_in_code(PACKAGE / "families" / "wan.py")  # it would catch one


def test_one_name_table():
    """Every alias and tiny-preset name resolves to one registered spec, in any -/_/. spelling."""
    for spec in all_specs():
        for name in (spec.name, *spec.aliases, *spec.tiny_presets):
            for spelling in (name, name.replace("_", "-"), name.upper()):
                assert get_spec(spelling) is spec


@pytest.mark.parametrize("spec", all_specs(), ids=lambda s: s.name)
def test_every_family_rejects_an_unknown_extra_input(spec):
    required = ",".join(spec.required_extra_inputs)
    extra = ",".join(filter(None, [required, "made_up_input"]))
    with pytest.raises(ConfigError) as error:
        config_from_dict({"model": {"family": spec.name, "extra_inputs": extra}, "lora": {"lora_base_model": "dit"}})
    message = str(error.value)
    assert "made_up_input" in message and spec.name in message
    assert f"supported: {', '.join(spec.extra_inputs) or 'none'}" in message
