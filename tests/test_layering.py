"""The architecture, read from the source.

- The torch-free layer (``harness/spec``, ``harness/cost``, ``harness/results``,
  ``harness/views``, ``harness/errors.py`` and ``reports/``) imports without torch, and
  imports neither torch nor the torch rooms (``harness/nn``, ``harness/runtime``,
  ``harness/data``, ``harness/bench``), not even inside a function.
- Nothing imports the CLI (``harness/cli``); the applications (the CLI and the benchmarks) are
  the only parts of ``harness`` that import ``runners`` or ``reports``.
- ``reports`` never imports ``runners`` (a report is a function of the store).
- No import cycle among the project's modules, counting imports inside functions.
- No module uses another module's ``_private`` names.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ("harness", "runners", "reports")
TORCH_FREE = ("harness/spec", "harness/cost", "harness/results", "harness/views",
              "harness/errors.py", "reports")
TORCH_ROOMS = ("harness.nn", "harness.runtime", "harness.data", "harness.bench")
APPLICATIONS = ("harness/cli", "harness/bench")
MAX_LINES = 500


def modules(*places: str) -> list[Path]:
    found = []
    for place in places:
        path = ROOT / place
        if path.with_suffix(".py").is_file():
            path = path.with_suffix(".py")
        found += [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


ALL = {module_name(p): p for p in modules(*PACKAGES)}


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, and every ``module.name`` it imports from one, at any
    depth (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def project_imports(path: Path) -> set[str]:
    """The project's modules that ``path`` imports (``from pkg import mod`` counts as ``mod``)."""
    return {name for name in imported(path) if name in ALL}


def under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_torch_free_layer_imports_no_torch_room():
    found = sorted((rel(p), name) for p in modules(*TORCH_FREE) for name in imported(p)
                   if under(name, "torch", *TORCH_ROOMS))
    assert found == []


def test_the_torch_free_layer_imports_with_torch_blocked():
    names = sorted(module_name(p) for p in modules(*TORCH_FREE))
    program = (  # None in sys.modules: `import torch` fails, find_spec says it is absent
        "import importlib, sys\n"
        "sys.modules['torch'] = None\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_nothing_imports_the_cli():
    found = sorted((rel(p), name) for p in modules(*PACKAGES)
                   if not under(module_name(p), "harness.cli")
                   for name in imported(p) if under(name, "harness.cli"))
    assert found == []


@pytest.mark.parametrize("package, forbidden", [("harness", ("runners", "reports")),
                                                ("reports", ("runners",)),
                                                ("runners", ("reports",))])
def test_lower_layers_never_import_higher_ones(package, forbidden):
    applications = modules(*APPLICATIONS)
    found = sorted((rel(p), name) for p in modules(package) if p not in applications
                   for name in imported(p) if under(name, *forbidden))
    assert found == []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = {name: project_imports(path) - {name} for name, path in ALL.items()}
    assert cycles(graph) == []


def test_a_runner_knows_the_protocol_not_the_table_nor_the_other_runners():
    for name in ("runners.base", "runners.local", "runners.slurm"):
        assert {m for m in project_imports(ALL[name]) if under(m, "runners")} <= {"runners.base"}


def test_no_module_is_over_500_lines():
    found = {rel(p): n for p in modules(*PACKAGES)
             if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert found == {}


def test_no_module_imports_another_modules_private_names():
    found = set()
    for path in modules(*PACKAGES):
        for name in imported(path):
            last = name.rsplit(".", 1)[-1]
            if name.split(".")[0] in PACKAGES and last.startswith("_") \
                    and not last.startswith("__"):
                found.add((rel(path), name))
    assert found == set()


def test_tuning_reaches_into_no_private_attribute():
    """Optuna's ``Study._storage``, ``Trial._trial_id`` or our ``Study._spec``: public seams
    (the storage the tuner opened, the storage's trial-id lookup, ``Study.run_spec``) instead."""
    found = []
    for path in modules("runners/tune", "reports/figures/tuning.py", "reports/page/sections.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__") \
                    and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                found.append(f"{rel(path)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_no_production_code_is_left_unused():
    """vulture (configured in pyproject.toml, with the names it cannot see used) finds no
    function, class, method or variable that nothing calls."""
    pytest.importorskip("vulture", reason="the dev extra is not installed")
    result = subprocess.run([sys.executable, "-m", "vulture"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_layouts_use_no_private_attribute():
    """``harness.runtime.parallel`` holds no ``obj._name`` of another object (e.g. DDP's
    private ``_set_params_and_buffers_to_ignore_for_model``): public PyTorch API only."""
    found = []
    for path in modules("harness/runtime/parallel"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__") \
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{rel(path)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []
