"""No import runs from a lower layer up.

The package is layered; a module may import its own layer and the layers below it, never one
above. Imports under ``if TYPE_CHECKING:`` are annotations only and do not count. A new module
or package must be placed in LAYERS (the test says so), which is the architecture drawn as a list.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "optimizer"

# lowest first; an entry names a top-level module or package of ``optimizer``
LAYERS: list[set[str]] = [
    {"errors", "stats", "entry"},  # leaves: the exception tree, order statistics, logging/signals/exit codes
    {"config", "choices"},  # the typed config and its closed sets of choices
    {"server", "space", "loadgen", "quality"},  # the vLLM process, the search space, the load generator, the quality probe
    {"model", "metrics"},  # model folders (space's ModelTarget); request records -> summary
    {"objective"},  # summary -> value and constraints
    {"capacity"},  # the highest load that meets the SLO (probes through loadgen, judged by objective)
    {"record"},  # what a trial recorded
    {"probe"},  # a live server, seen from outside (the load test's HTTP beside the load)
    {"study"},  # storage, the trial, the loop
    {"reporting"},  # the report (reads studies)
    {"cli", "hardware_auto", "input_checks", "loadtest", "loadtest_output", "loadtest_capacity", "run",
     "report", "confirm"},  # entry points and edges
    {"testing"},  # fakes for the tests and the benchmarks: nothing of the optimizer imports them
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _unit(module: str) -> str:
    """``optimizer.study.loop`` -> ``study``; a package's ``__main__`` is an entry point (``cli``'s layer)."""
    if module.endswith(".__main__"):
        return "cli"
    return module.split(".")[1] if module.count(".") >= 1 else ""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and node.lineno in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
    return [(n, m) for n, m in out if m == "optimizer" or m.startswith("optimizer.")]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    units = {_unit(_module_name(p)) for p in MODULES} - {""}
    missing = units - set(RANK)
    assert not missing, f"place {sorted(missing)} in LAYERS of {__file__}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_from_a_lower_layer_up(path: Path):
    here = _unit(_module_name(path))
    if not here:
        return
    upward = [f"line {n}: {m} ({_unit(m)}, layer {RANK.get(_unit(m))})" for n, m in _imports(path)
              if _unit(m) and RANK.get(_unit(m), -1) > RANK[here]]
    assert not upward, f"{path.relative_to(PACKAGE)} ({here}, layer {RANK[here]}) imports upward: {upward}"


def test_nothing_of_the_optimizer_imports_its_test_doubles():
    users = [f"{p.relative_to(PACKAGE)} line {n}" for p in MODULES if _unit(_module_name(p)) != "testing"
             for n, m in _imports(p) if _unit(m) == "testing"]
    assert not users
