"""The `stages` package's modules import each other without a circle, and its layers point one way.

The graph is read from the source (``ast``), not by importing. Every import counts, also one inside a function: a
deferred import only hides a circle, the modules still depend on each other. Importing ``stages.x`` runs
``stages/__init__.py`` first, so it counts as importing the package too: an ``__init__`` that imports a submodule
eagerly closes a circle as soon as that submodule imports anything of the package. Dynamic imports
(``importlib.import_module``) are not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def module_files(package: Path) -> dict[str, Path]:
    """Dotted name -> file of each module of ``package``, subpackages included (a package is its ``__init__.py``)."""
    files = {}
    for path in sorted(package.rglob("*.py")):
        parts = (package.name, *path.relative_to(package).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imported_modules(name: str, path: Path, modules: set[str]) -> set[str]:
    """The ``modules`` that module ``name`` (file ``path``) imports anywhere in its source, with the packages above
    them (importing ``p.q.r`` runs ``p`` and ``p.q`` first): ``import p.q``, ``from p import q``, ``from p.q import
    x`` and the relative forms."""
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules
    return found - {name}


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports."""
    files = module_files(package)
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for other in sorted(graph.get(node, ())):
            if state.get(other) == "open":
                return path[path.index(other) :] + [other]
            if other not in state and (cycle := visit(other)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_stages_package_has_no_import_circle():
    graph = import_graph(ROOT / "stages")
    assert "stages.core.cli" in graph["stages.prepare"]  # the graph is read at all
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


LAYERS = ["stages.core", "stages.ml", "stages", "stages.pipeline"]
"""Bottom to top (`stages/__init__.py`): a module may import its own layer and those below, and the package root."""


def layer_of(module: str) -> int:
    for number, prefix in reversed(list(enumerate(LAYERS))):
        if prefix != "stages" and (module == prefix or module.startswith(prefix + ".")):
            return number
    return LAYERS.index("stages")  # a stage module


def test_layers_import_only_downwards():
    graph = import_graph(ROOT / "stages")
    assert {layer_of(m) for m in graph} == set(range(len(LAYERS)))  # every layer has modules
    upward = sorted(
        f"{module} -> {other}"
        for module, others in graph.items()
        for other in others - {"stages"}
        if module != "stages" and layer_of(other) > layer_of(module)
    )
    assert not upward, "imports from a lower layer to a higher one: " + "; ".join(upward)
    assert not [m for m in graph if layer_of(m) == LAYERS.index("stages") and m.count(".") > 1]  # no stray subpackage


@pytest.mark.parametrize(
    "sources, cycle",
    [
        ({"a": "import p.b", "b": "from p import a"}, ["p.a", "p.b", "p.a"]),
        ({"a": "def f():\n    from p.b import g", "b": "from p.a import f"}, ["p.a", "p.b", "p.a"]),
        ({"a": "from . import b", "b": "from .a import f"}, ["p.a", "p.b", "p.a"]),
        ({"q/a": "from ..b import f", "b": "from p.q import a"}, ["p.b", "p.q.a", "p.b"]),
        # an __init__ that imports a submodule eagerly: a circle as soon as that one imports from the package
        ({"__init__": "from p import a", "a": "from p.errors import E", "errors": ""}, ["p", "p.a", "p"]),
        ({"__init__": "from p import a", "a": "import os", "b": "import p.a"}, None),
    ],
)
def test_circles_are_found(tmp_path, sources, cycle):
    package = tmp_path / "p"
    for name, source in sources.items():
        (package / f"{name}.py").parent.mkdir(parents=True, exist_ok=True)
        (package / f"{name}.py").write_text(source + "\n")
    assert find_cycle(import_graph(package)) == cycle
