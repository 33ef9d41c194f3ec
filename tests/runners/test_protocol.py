"""The runners: one protocol, named in one table, and no module of the package importing another
in a cycle (module-level, function-local and type-only imports alike)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import runners
from harness.errors import HarnessError
from harness.results.store import Store
from runners.base import Runner
from runners.executors import EXECUTORS, RUNNERS, runner_class
from runners.local import DebugRunner, LocalRunner
from runners.slurm import SlurmRunner

ROOT = Path(__file__).parents[2]


def test_one_table_names_every_executor_of_the_schema():
    assert tuple(RUNNERS) == EXECUTORS
    assert RUNNERS == {"local": LocalRunner, "debug": DebugRunner, "slurm": SlurmRunner}
    for name, cls in RUNNERS.items():
        assert issubclass(cls, Runner) and cls.name == name and runner_class(name) is cls
    with pytest.raises(HarnessError, match=r"^--executor 'ssh': allowed: local, debug, slurm$"):
        runner_class("ssh")


def test_what_differs_is_said_by_the_runner():
    assert [c.remote for c in RUNNERS.values()] == [False, False, True]
    assert [c.in_process for c in RUNNERS.values()] == [False, True, False]
    assert DebugRunner.tethered(print) is print and LocalRunner.tethered(print) is not print


def test_no_runner_holds_live_jobs_without_a_scheduler(tmp_path):
    store = Store(tmp_path, "quiet")
    assert runners.live_view(store) == {} and runners.cancel(store) == []


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "runners").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports, wherever the import statement is."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in mods)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                edges.update(t for t in targets if t in mods)
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_of_the_package_imports_another_in_a_cycle():
    graph = import_graph()
    assert {"runners.base", "runners.local", "runners.slurm"} <= set(graph)
    assert cycles(graph) == []
    # the runners know the protocol, not the table that names them, nor each other
    for name in ("runners.base", "runners.local", "runners.slurm"):
        assert graph[name] <= {"runners.base"}, (name, graph[name])


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_module_is_under_500_lines(name):
    assert len(modules()[name].read_text().splitlines()) < 500
