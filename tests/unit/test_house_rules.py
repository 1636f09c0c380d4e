"""The house rules of ``optimizer/`` that a reader can check by counting (README, "For contributors"):
no module over 400 lines, no function over 80, no two modules with the same file name.

A module that grows past 400 lines holds more than one concept: split it by concept (as
``reporting/data.py`` into the trial table, the headline and the per-trial series). A function past
80 lines does more than one step: give each step a name (as ``loadtest._body``). Two modules of one
file name (three ``probe.py`` once meant three different things) make every traceback, search and
review ask "which one?": name each after what it holds.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "optimizer"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
SHARED_NAMES = {"__init__.py", "__main__.py"}  # a package's own files: every package may have them

# Nothing may be added here: split the module or the function (an entry that no longer exceeds fails too).
ALLOWED_LONG_MODULES: set[str] = set()
ALLOWED_LONG_FUNCTIONS: set[tuple[str, str]] = set()

MODULES = sorted(PACKAGE.rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def _functions(path: Path) -> list[tuple[str, int, int]]:
    """(qualified name, first line, lines) of every function and method, nested ones included; a
    function's lines run from its ``def`` to its last statement (decorators not counted)."""
    out: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                out.append((name, child.lineno, (child.end_lineno or child.lineno) - child.lineno + 1))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text()), "")
    return out


def test_the_walk_sees_the_package():
    # an empty or moved package would pass every rule below
    assert len(MODULES) > 50 and (PACKAGE / "run.py").is_file(), PACKAGE


def test_no_module_is_over_400_lines():
    long = {_rel(p): _lines(p) for p in MODULES if _lines(p) > MAX_MODULE_LINES}
    over = {m: n for m, n in long.items() if m not in ALLOWED_LONG_MODULES}
    assert not over, (f"modules over {MAX_MODULE_LINES} lines: {over}; split each by concept into modules of "
                      f"100-{MAX_MODULE_LINES} lines, each with a file name no other module of optimizer/ has")
    stale = ALLOWED_LONG_MODULES - set(long)
    assert not stale, f"{sorted(stale)} no longer exceed {MAX_MODULE_LINES} lines: remove them from " \
                      f"ALLOWED_LONG_MODULES"


def test_no_function_is_over_80_lines():
    long = {(_rel(p), name): (line, n) for p in MODULES for name, line, n in _functions(p) if n > MAX_FUNCTION_LINES}
    over = {f"{m}:{line} {name}": n for (m, name), (line, n) in long.items() if (m, name) not in ALLOWED_LONG_FUNCTIONS}
    assert not over, (f"functions over {MAX_FUNCTION_LINES} lines: {over}; give each of their steps a function "
                      f"with a name that says what it does")
    stale = ALLOWED_LONG_FUNCTIONS - set(long)
    assert not stale, f"{sorted(stale)} are no longer over {MAX_FUNCTION_LINES} lines: remove them from " \
                      f"ALLOWED_LONG_FUNCTIONS"


def test_no_two_modules_share_a_file_name():
    by_name: dict[str, list[str]] = defaultdict(list)
    for p in MODULES:
        if p.name not in SHARED_NAMES:
            by_name[p.name].append(_rel(p))
    dup = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert not dup, f"modules sharing a file name: {dup}; rename each after what it holds (e.g. capacity_section.py)"


def test_the_rules_count_what_they_say(tmp_path: Path):
    # the walk finds a long method inside a class and a nested function, and counts from def to end
    src = tmp_path / "m.py"
    body = "\n".join(f"        x{i} = {i}" for i in range(80))
    src.write_text(f"class C:\n    @staticmethod\n    def long():\n{body}\n\n        def inner():\n"
                   f"            return 1\n        return inner\n")
    got = {name: n for name, _, n in _functions(src)}
    assert got == {"C.long": 85, "C.long.inner": 2}, got  # def + 80 + blank + inner (2) + return
