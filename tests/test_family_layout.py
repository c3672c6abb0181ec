"""A family is one folder: no module outside ``diffsynth/families/<name>/`` names that family in code, and the
package has no import cycles."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from diffsynth.config import config_from_dict
from diffsynth.errors import ConfigError
from diffsynth.families import FAMILY_PACKAGES, all_specs, get_spec

PACKAGE = Path(__file__).resolve().parents[1] / "diffsynth"
FAMILIES = PACKAGE / "families"


def family_words(names) -> re.Pattern:
    """A pattern for a family's names and aliases in code (``qwen``, ``flux``, ``kontext``, ``wan``...): each name's
    first word (before ``_``/``-``/digits), matched as a word start so ``swan`` or ``wanted`` stay unflagged.

    A version number right after the word that none of the family's names has is another model (``Qwen3``, a
    text encoder, is not Qwen-Image; ``FLUX.2`` is not FLUX.1), while ``Wan2.1`` or ``flux1`` stay flagged. A
    one-letter first word (``z_image``) is no name on its own: it takes the next word along (``Z-Image``)."""
    versions: dict[str, set[str]] = {}
    for n in names:
        n = n.lower()
        words = [w for w in re.split(r"[_\-.\d]", n) if w]
        if not words:
            continue
        stem = re.escape(words[0]) if len(words[0]) > 1 or len(words) == 1 \
            else re.escape(words[0]) + r"[_\-]?" + re.escape(words[1])
        digit = re.match(rf"{stem}\.?(\d)", n)
        versions.setdefault(stem, set()).update({digit.group(1)} if digit else set())
    parts = []
    for stem in sorted(versions, key=len, reverse=True):
        other = "".join(d for d in "0123456789" if d not in versions[stem])
        parts.append(stem + (rf"(?!\.?[{other}])" if other else ""))
    return re.compile(r"(?<![a-z])(" + "|".join(parts) + r")(?![a-z])", re.IGNORECASE)


def whole_names(names) -> re.Pattern:
    """A family's names and aliases whole, digits significant (``flux2`` is not ``flux``, ``flux.1`` not ``flux.2``):
    a hit of another family's stem that is one of these names belongs to this family."""
    alts = sorted({n.lower() for n in names if n}, key=len, reverse=True)
    return re.compile(r"(?<![a-z0-9])(" + "|".join(map(re.escape, alts)) + r")(?![0-9])", re.IGNORECASE)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def family_names_in_code(path: Path, words: re.Pattern) -> list[str]:
    """String constants used as values (not docstrings or prose such as help texts and error messages),
    identifiers and attribute names that match ``words``."""
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
        if text and words.search(text):
            found.append(f"{path.relative_to(PACKAGE)}:{getattr(node, 'lineno', '?')}: {text[:60]!r}")
    return found


def _folder_of(spec) -> str:
    return spec.__module__.split(".")[2]  # diffsynth.families.<folder>.<module>


def test_every_family_is_one_registered_folder():
    folders = {p.name for p in FAMILIES.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(FAMILY_PACKAGES)
    assert {_folder_of(spec) for spec in all_specs()} == set(FAMILY_PACKAGES)


@pytest.mark.parametrize("folder", FAMILY_PACKAGES)
def test_no_module_outside_a_family_folder_names_that_family(folder):
    """No whitelist: the engines, training, export, data, CLI and the other families' folders never name it."""
    specs = [s for s in all_specs() if _folder_of(s) == folder]
    words = family_words([n for s in specs for n in (s.name, *vars(s).get("aliases", ()))])
    # two families may share a stem (FLUX.1 `flux`, FLUX.2 `flux2`): a hit that is another family's own name is
    # that family's, and its own run checks it
    theirs = whole_names([n for s in all_specs() if _folder_of(s) != folder
                          for n in (s.name, *vars(s).get("aliases", ()))])
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(FAMILIES / folder):
            continue
        offenders += [hit for hit in family_names_in_code(path, words) if not theirs.search(hit.split(": ", 1)[1])]
    assert offenders == []


def test_the_checker_sees_family_names():
    words = family_words(["wan", *get_spec("wan").aliases])  # wan21, wan22: versions of its own
    assert family_names_in_code(FAMILIES / "wan" / "pipeline.py", words)  # it would catch one
    assert not words.search("swan") and not words.search("wanted") and words.search("Wan2.1_VAE")
    words = family_words(["z_image"])
    assert words.search("Z-Image") and words.search("z_image_dit") and not words.search("z_dim")
    words = family_words(["qwen_image", "qwen"])
    assert words.search("Qwen-Image") and not words.search("Qwen3Model") and not words.search("qwen3")
    words = family_words(["flux", "flux1", "flux_1"])
    assert words.search("FLUX.1-dev") and words.search("flux1") and not words.search("FLUX.2-klein")
    theirs = whole_names(["flux2", "flux.2"])  # FLUX.2's names do not hide FLUX.1's
    assert theirs.search("Flux2Transformer2DModel") and theirs.search("FLUX.2-klein-4B")
    assert not theirs.search("flux1_dev") and not theirs.search("FluxTransformer2DModel")


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports (function-local imports too), as dotted names."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    if path.name == "__init__.py":
        module = package
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("diffsynth")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if not base.startswith("diffsynth"):
                continue
            for alias in node.names:  # `from . import x` imports the module x when x is one
                candidate = f"{base}.{alias.name}"
                found.add(candidate if _module_path(candidate) else base)
    return {m for m in found if _module_path(m) and m != module}


def _module_path(name: str) -> Path | None:
    rel = Path(*name.split("."))
    for path in (PACKAGE.parent / rel.with_suffix(".py"), PACKAGE.parent / rel / "__init__.py"):
        if path.exists():
            return path
    return None


def import_cycles() -> list[list[str]]:
    """Every import cycle among the package's modules (Tarjan's strongly connected components)."""
    graph = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): _imports(p)
             for p in PACKAGE.rglob("*.py")}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycles():
    assert import_cycles() == []


def test_one_name_table():
    """Every alias and tiny-preset name resolves to one registered spec, in any -/_/. spelling."""
    for spec in all_specs():
        for name in (spec.name, *vars(spec).get("aliases", ()), *vars(spec).get("tiny_twins", {})):
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
