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

# the modules a user runs (``python -m optimizer.<name>``; ``optimizer.quality`` is the quality package's
# ``__main__``): the top level of ``optimizer/`` holds these and nothing else
ENTRY_POINTS = {"run", "report", "confirm", "revalidate", "loadtest"}

# lowest first; an entry names a top-level module or package of ``optimizer``
LAYERS: list[set[str]] = [
    {"core"},  # what all stands on: the exception tree, logging/signals/exit codes, order statistics, the API key
    {"settings"},  # the typed config: the knob table, the search and load sections, the closed sets of choices
    {"server", "space", "loadgen", "quality"},  # the vLLM process, the search space, the load generator, the quality probe
    {"model", "measures"},  # model folders (space's ModelTarget); request records -> summary -> value and constraints
    {"capacity"},  # the highest load that meets the SLO (probes through loadgen, judged by measures.objective)
    {"record"},  # what a trial recorded
    {"trial"},  # one trial: start the server, load it (fixed or the capacity ladder), the after-load step, the record
    {"study"},  # the study: storage, coordination, the loop, workers, stopping, results
    {"confirmation"},  # the confirmation stage and the revalidation: the plan, the runner, the pure results
    {"reporting"},  # the report (reads studies)
    {"commands"} | ENTRY_POINTS,  # the entry floor: the modules a user runs and what they share (composing the
    # config, input checks, a live server seen from outside)
    {"testing"},  # fakes for the tests and the benchmarks: nothing of the optimizer imports them
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _unit(module: str) -> str:
    """``optimizer.study.loop`` -> ``study``."""
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


def test_the_top_level_holds_only_the_entry_points():
    # the folder tree is the architecture: a module that is no entry point goes into the package of its
    # concept (what the entry points share: commands/), so the top level cannot fill up with loose modules again
    loose = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert loose == ENTRY_POINTS, f"top-level modules that are no entry point: {sorted(loose - ENTRY_POINTS)}; " \
                                  f"entry points missing: {sorted(ENTRY_POINTS - loose)}"
    not_runnable = [n for n in sorted(ENTRY_POINTS)
                    if '__name__ == "__main__"' not in (PACKAGE / f"{n}.py").read_text()]
    assert not not_runnable, f"{not_runnable} cannot run as python -m optimizer.<name>"


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


def _module_imports(path: Path) -> set[str]:
    """The optimizer modules ``path`` imports anywhere (functions and ``TYPE_CHECKING`` included):
    ``from optimizer.a import b`` names module ``optimizer.a.b`` where that is one, else ``optimizer.a``."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" for a in node.names]
            found = [t for t in targets if t in GRAPH_MODULES]
            out.update(found if found else [node.module])
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in GRAPH_MODULES}


GRAPH_MODULES = {_module_name(p) for p in MODULES}


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _module_imports(p) - {_module_name(p)} for p in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_between_modules():
    # a package's __init__ that re-exports its submodules is not a circle with them unless a submodule
    # imports the package back; every import counts, also those in functions and under TYPE_CHECKING
    circles = _cycles(_graph())
    assert not circles, f"modules that import each other in a loop: {circles}; move what they share into a " \
                        f"module both import, or return values instead of reaching back"


def _reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module ``start`` imports, directly or not, with the module that first imports it."""
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        v = todo.pop()
        for w in graph.get(v, ()):
            if w not in seen:
                seen[w] = v
                todo.append(w)
    return seen


STUDY_RUNNERS = {"optimizer.study.loop", "optimizer.trial.trial", "optimizer.study.workers",
                 "optimizer.confirmation.stage", "optimizer.confirmation.revalidation"}


def test_the_runners_the_report_must_not_reach_are_modules_of_the_package():
    # a runner moved or renamed without this list would make the rule below pass by finding nothing
    missing = STUDY_RUNNERS - GRAPH_MODULES
    assert not missing, f"STUDY_RUNNERS names {sorted(missing)}, which are no modules of optimizer/: name them " \
                        f"where they are now"


@pytest.mark.parametrize("path", [p for p in MODULES if _unit(_module_name(p)) == "reporting"],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_reporting_never_reaches_the_loop_the_trial_the_workers_or_the_confirmation_runner(path: Path):
    # the report reads stored studies; it must run where no server, GPU or worker machinery can
    graph = _graph()
    seen = _reachable(graph, _module_name(path))
    bad = {m: seen[m] for m in STUDY_RUNNERS if m in seen}
    assert not bad, f"{path.relative_to(PACKAGE)} reaches {sorted(bad)} (imported by {bad}); move the pure part it " \
                    f"needs into a module of its own (as optimizer/confirmation/confirm_result.py)"
