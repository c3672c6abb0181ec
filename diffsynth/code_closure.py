"""Which source files a piece of code runs: the static import closure, read with ``ast`` (nothing is imported).

Two users: ``stages/graph.py`` derives every DVC stage's code ``deps`` from it, and the encoder cache's fingerprint
hashes the files that shape an encoding (``source_digest``), so a change in, say, the resize code makes both DVC and
training see a stale cache.

Families are loaded by name through the registry, so a closure does not follow the registry into the families (it
never wanders from one family into all of them): the families are the packages ``diffsynth/families/<name>/`` plus, in
the flat layout, the family modules the registry module imports. Function-local imports count; imports under
``if TYPE_CHECKING:`` do not (they never run). Standard library only: importing this pulls in no other code.
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "diffsynth"
FAMILIES = "diffsynth.families"       # the package holding one module or folder per family
REGISTRY = "diffsynth.families"  # loads the family folders by name (importlib), so no static import reaches them
ROOT = Path(__file__).resolve().parents[1]  # the folder holding the package (the project root in a checkout)


def module_file(name: str, root: Path = ROOT, extra: Path | None = None) -> Path | None:
    """The file of module ``name`` under ``root`` (``extra``: a folder of top-level scripts' siblings, as
    ``stages/`` is on ``sys.path`` for a stage script); None for anything else (stdlib, third party)."""
    parts = name.split(".")
    bases = [root] if parts[0] == PACKAGE else ([extra] if extra is not None and len(parts) == 1 else [])
    for base in bases:
        for candidate in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
            if candidate.is_file():
                return candidate
    return None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    return skip


def imported_names(path: Path, module: str) -> set[str]:
    """Every module name ``path`` (module ``module``) may import: ``import a.b`` gives a, a.b; ``from a import b``
    gives a and a.b (b may be a module; callers keep the names that resolve to files)."""
    stat = path.stat()
    return set(_imported_names(path, module, stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=1024)  # keyed on the file's mtime and size: an edited file is read again
def _imported_names(path: Path, module: str, mtime_ns: int, size: int) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = _type_checking_nodes(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        elif isinstance(node, ast.ImportFrom):
            if node.module == "__future__":
                continue
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            parts = target.split(".")
            names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
            names.update(f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
    return frozenset(names)


def family_modules(root: Path = ROOT) -> set[str]:
    """The modules the registry loads by name: every family folder, and what the registry imports from FAMILIES."""
    folder = root.joinpath(*FAMILIES.split("."))
    found = {f"{FAMILIES}.{p.parent.name}" for p in folder.glob("*/__init__.py")}
    registry = module_file(REGISTRY, root)
    if registry is not None:
        found |= {n for n in imported_names(registry, REGISTRY)
                  if n.startswith(FAMILIES + ".") and n.count(".") == FAMILIES.count(".") + 1
                  and module_file(n, root) is not None and n != REGISTRY}
    return found


def _is_within(name: str, modules: set[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def closure(roots: list[Path | str], root: Path = ROOT, extra: Path | None = None) -> set[Path]:
    """The files ``roots`` (script paths, or module names) import, transitively, themselves included. The registry's
    imports of the families are not followed (it loads them by name); any other import is, a family's own included."""
    families = family_modules(root)
    todo: list[tuple[str, Path | None]] = []
    for r in roots:
        if isinstance(r, Path):
            todo.append((r.stem, r))
        else:
            if module_file(r, root, extra) is None:
                raise ValueError(f"module {r} has no source file under {root}")
            parts = r.split(".")  # a module's packages run first
            todo += [(".".join(parts[:i]), module_file(".".join(parts[:i]), root, extra)) for i in range(1, len(parts) + 1)]
    seen: dict[Path, str] = {}
    while todo:
        name, path = todo.pop()
        if path is None or path in seen:
            continue
        seen[path] = name
        for imported in imported_names(path, name):
            if name == REGISTRY and _is_within(imported, families):
                continue
            target = module_file(imported, root, extra)
            if target is not None and target not in seen:
                todo.append((imported, target))
    return set(seen)


def family_of(module: str, root: Path = ROOT) -> str | None:
    """The family module (or folder package) that ``module`` belongs to, or None."""
    return next((f for f in family_modules(root) if _is_within(module, {f})), None)


def source_digest(files: set[Path] | list[Path], root: Path = ROOT) -> str:
    """sha256 over (path relative to ``root``, content) of every file, sorted: the same on every machine and checkout
    (line endings normalised, so a CRLF checkout agrees with an LF one)."""
    h = hashlib.sha256()
    for path in sorted(files, key=lambda p: Path(p).resolve().relative_to(root).as_posix()):
        rel = Path(path).resolve().relative_to(root).as_posix()
        text = Path(path).read_bytes().replace(b"\r\n", b"\n")
        h.update(f"{rel}\0{len(text)}\0".encode())
        h.update(text)
    return h.hexdigest()
