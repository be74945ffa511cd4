"""No function of the package is longer than `LIMIT` lines (docstring included), but for a short allow-list with a
reason each: a long function is a module that has not been split yet."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 60
ALLOWED: dict[str, str] = {}
"""``module:function`` -> why it may stay longer (at most 5 entries)."""


def long_functions(package: Path, limit: int) -> dict[str, int]:
    """``module:qualified.name`` -> lines of each function (methods and nested functions too) over ``limit``."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(package.parent).with_suffix("").parts)

        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                        if child.end_lineno - start + 1 > limit:
                            found[f"{module}:{name}"] = child.end_lineno - start + 1
                    visit(child, f"{name}.")

        visit(ast.parse(path.read_text(), filename=str(path)), "")
    return found


def test_no_function_is_longer_than_the_limit():
    assert len(ALLOWED) <= 5
    too_long = {name: lines for name, lines in long_functions(ROOT / "stages", LIMIT).items() if name not in ALLOWED}
    assert not too_long, f"functions over {LIMIT} lines (split them): {too_long}"


def test_the_allow_list_holds_only_long_functions():
    assert set(ALLOWED) <= set(long_functions(ROOT / "stages", LIMIT)), "an allowed function got short: drop it"


def test_long_functions_are_found(tmp_path):
    package = tmp_path / "p"
    package.mkdir()
    body = "\n".join(f"        x{i} = {i}" for i in range(5))
    (package / "m.py").write_text(f"class C:\n    @staticmethod\n    def f():\n{body}\n\n\ndef g():\n    pass\n")
    assert long_functions(package, 4) == {"p.m:C.f": 7}
