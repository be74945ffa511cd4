"""The `stages` package's modules import each other without a circle, its layers point one way, and no stage imports
another stage.

The graph is read from the source (``ast``), not by importing. Every import counts, also one inside a function: a
deferred import only hides a circle, the modules still depend on each other. Importing ``stages.x`` runs
``stages/__init__.py`` first, so it counts as importing the package too: an ``__init__`` that imports a submodule
eagerly closes a circle as soon as that submodule imports anything of the package. Dynamic imports count when their
name is a constant: ``importlib.import_module("stages.x")`` (or ``".x"`` relative to the module's package),
``__import__("stages.x")``, and ``f"{PACKAGE}.x"`` (`stages.PACKAGE`, the package's own name) as ``stages.x``; a name
computed at run time (``f"{PACKAGE}.{stage}"``) is not seen.

A stage is a module ``stages/<stage>.py`` or a package ``stages/<stage>/``; its modules import only `stages.core`,
`stages.ml`, the package root and their own stage.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from stages.core.declarations import STAGES

ROOT = Path(__file__).resolve().parent.parent


def module_files(package: Path) -> dict[str, Path]:
    """Dotted name -> file of each module of ``package``, subpackages included (a package is its ``__init__.py``)."""
    files = {}
    for path in sorted(package.rglob("*.py")):
        parts = (package.name, *path.relative_to(package).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def absolute(name: str, level: int, here: str) -> str:
    """``name`` imported with ``level`` leading dots from a module of package ``here``, as an absolute name."""
    if not level:
        return name
    anchor = here.split(".")[: len(here.split(".")) - level + 1]
    return ".".join(anchor + ([name] if name else []))


def constant_name(node: ast.expr, root: str) -> str | None:
    """A module name written as a constant: ``"p.x"``, or ``f"{PACKAGE}.x"`` read as ``<root>.x``; else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(value.value)
            elif isinstance(value.value, ast.Name) and value.value.id == "PACKAGE" and not value.format_spec:
                parts.append(root)
            else:
                return None
        return "".join(parts)
    return None


def dynamic_import(node: ast.Call, root: str) -> str | None:
    """The constant name of ``importlib.import_module(name[, package])``, ``import_module(...)`` or ``__import__``."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if called not in ("import_module", "__import__") or not node.args:
        return None
    return constant_name(node.args[0], root)


def import_targets(node: ast.AST, here: str, root: str) -> list[str]:
    """The absolute names an import statement or a dynamic import call imports (none for any other node)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = absolute(node.module or "", node.level, here)
        return [base] + [f"{base}.{alias.name}" for alias in node.names]
    if isinstance(node, ast.Call) and (name := dynamic_import(node, root)) is not None:
        stripped = name.lstrip(".")
        return [absolute(stripped, len(name) - len(stripped), here)]
    return []


def imported_modules(name: str, path: Path, modules: set[str]) -> set[str]:
    """The ``modules`` that module ``name`` (file ``path``) imports anywhere in its source, with the packages above
    them (importing ``p.q.r`` runs ``p`` and ``p.q`` first): ``import p.q``, ``from p import q``, ``from p.q import
    x``, the relative forms and the dynamic imports of a constant name (`dynamic_import`)."""
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        for target in import_targets(node, here, name.split(".")[0]):
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


LAYERS = ["core", "ml", "", "pipeline"]
"""Bottom to top, below the package root (`stages/__init__.py`, importable from every layer): a module may import its
own layer and those below. "": the stages, each a module ``<stage>.py`` or a package ``<stage>/``."""
STAGE_LAYER = LAYERS.index("")


def layer_of(module: str) -> int:
    below_root = module.split(".")[1:2]
    return LAYERS.index(below_root[0]) if below_root and below_root[0] in LAYERS else STAGE_LAYER


def stage_of(module: str) -> str | None:
    """The stage a module belongs to: ``<stage>`` of ``p.<stage>`` or of a module of the package ``p/<stage>/``; None
    for the package root and the other layers."""
    below_root = module.split(".")[1:2]
    return below_root[0] if below_root and layer_of(module) == STAGE_LAYER else None


def stage_imports(graph: dict[str, set[str]]) -> list[str]:
    """``module -> other`` for each import of a module of another stage (a package named only when none of its
    modules is)."""
    found = []
    for module, others in sorted(graph.items()):
        foreign = {o for o in others if stage_of(o) and stage_of(module) and stage_of(o) != stage_of(module)}
        found += [f"{module} -> {o}" for o in sorted(foreign) if not any(f.startswith(o + ".") for f in foreign)]
    return found


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


def test_a_package_in_the_stage_layer_is_a_declared_stage_with_a_main():
    graph = import_graph(ROOT / "stages")
    packages = {".".join(m.split(".")[:2]) for m in graph if layer_of(m) == STAGE_LAYER and m.count(".") > 1}
    assert packages >= {"stages.report", "stages.export"}
    stray = sorted(p for p in packages if p.split(".")[1] not in STAGES or f"{p}.__main__" not in graph)
    assert not stray, f"subpackages of the stage layer that are no declared stage run by python -m: {stray}"


def test_no_stage_imports_another_stage():
    found = stage_imports(import_graph(ROOT / "stages"))
    assert not found, "a stage imports another stage (move what they share to core/ or ml/): " + "; ".join(found)


def write_package(root: Path, sources: dict[str, str]) -> Path:
    """Package ``root/p`` of modules ``{"name" or "sub/name": source}``."""
    package = root / "p"
    for name, source in sources.items():
        (package / f"{name}.py").parent.mkdir(parents=True, exist_ok=True)
        (package / f"{name}.py").write_text(source + "\n")
    return package


PACKAGE_STAGE = {
    "core/__init__": "", "core/errors": "", "ml/__init__": "", "ml/stats": "from ..core.errors import E",
    "s/__init__": "VERSION = 1", "s/__main__": "from .stage import main", "s/helpers": "from ..ml.stats import f",
    "s/stage": "from .helpers import h\nfrom ..core.errors import E\nfrom .. import PACKAGE",
}  # fmt: skip
"""A stage that is a package: its modules import core, ml, the root and each other; nothing imports its package."""


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
        # dynamic imports of a constant name: absolute, relative to the package, __import__, f"{PACKAGE}..."
        ({"a": "import importlib\nimportlib.import_module('p.b')", "b": "from p.a import f"}, ["p.a", "p.b", "p.a"]),
        ({"a": "from importlib import import_module\nimport_module('.b', __package__)", "b": "import p.a"},
         ["p.a", "p.b", "p.a"]),
        ({"a": "def f():\n    return __import__('p.q.b')", "q/b": "from ..a import f"}, ["p.a", "p.q.b", "p.a"]),
        ({"a": "from importlib import import_module\nimport_module(f'{PACKAGE}.b.c')", "b/c": "from p import a"},
         ["p.a", "p.b.c", "p.a"]),
        ({"a": "import importlib\nimportlib.import_module(f'{PACKAGE}.{name}')", "b": "from p.a import f"}, None),
        # a package stage: fine as it is; its __init__ importing its own modules would close a circle
        (PACKAGE_STAGE, None),
        ({**PACKAGE_STAGE, "s/__init__": "from .stage import main"}, ["p.s", "p.s.stage", "p.s"]),
    ],
)  # fmt: skip
def test_circles_are_found(tmp_path, sources, cycle):
    assert find_cycle(import_graph(write_package(tmp_path, sources))) == cycle


@pytest.mark.parametrize(
    "sources, found",
    [
        (PACKAGE_STAGE, []),
        ({"a": "from p.b import f", "b": "from . import PACKAGE"}, ["p.a -> p.b"]),
        ({"a": "from . import b", "b": ""}, ["p.a -> p.b"]),
        ({**PACKAGE_STAGE, "t": "from .s.helpers import h"}, ["p.t -> p.s.helpers"]),
        ({**PACKAGE_STAGE, "s/stage": "from ..t import f", "t": ""}, ["p.s.stage -> p.t"]),
        ({**PACKAGE_STAGE, "t/__init__": "", "t/x": "from ..s import VERSION"}, ["p.t.x -> p.s"]),
        ({"a": "import importlib\nimportlib.import_module(f'{PACKAGE}.b')", "b": ""}, ["p.a -> p.b"]),
        ({"a": "__import__('p.s.stage')", **PACKAGE_STAGE}, ["p.a -> p.s.stage"]),
        # the pipeline knows every stage; core and ml import none (test_layers_import_only_downwards)
        ({"pipeline/__init__": "", "pipeline/run": "from ..a import f\nfrom ..b import g", "a": "", "b": ""}, []),
    ],
)  # fmt: skip
def test_stage_imports_are_found(tmp_path, sources, found):
    assert stage_imports(import_graph(write_package(tmp_path, sources))) == found
