"""The packages' layering, read from the source: ``harness`` imports neither ``runners`` nor
``reports`` (the CLI aside, which knows all three), ``reports`` never imports ``runners`` (a
report is a function of the store), and no module uses another module's ``_private`` names."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, and every ``module.name`` it imports from one."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def top(name: str) -> str:
    return name.split(".", 1)[0]


@pytest.mark.parametrize("package, forbidden", [("harness", {"runners", "reports"}),
                                                ("reports", {"runners"})])
def test_lower_layers_never_import_higher_ones(package, forbidden):
    found = [(str(p.relative_to(ROOT)), name) for p in modules(package)
             if p.name != "cli.py" or package != "harness"
             for name in imported(p) if top(name) in forbidden]
    assert found == []


def test_no_module_imports_another_modules_private_names():
    found = set()
    for package in ("harness", "runners", "reports"):
        for path in modules(package):
            for name in imported(path):
                last = name.rsplit(".", 1)[-1]
                if top(name) in ("harness", "runners", "reports") and last.startswith("_") \
                        and not last.startswith("__"):
                    found.add((str(path.relative_to(ROOT)), name))
    assert found == set()


def test_tuning_reaches_into_no_private_attribute():
    """Optuna's ``Study._storage``, ``Trial._trial_id`` or our ``Study._spec``: public seams
    (the storage the tuner opened, the storage's trial-id lookup, ``Study.run_spec``) instead."""
    found = []
    for path in modules("runners/tune") + [ROOT / "reports" / "figures" / "tuning.py",
                                           ROOT / "reports" / "page" / "sections.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__") \
                    and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_no_production_code_is_left_unused():
    """vulture (configured in pyproject.toml, with the names it cannot see used) finds no
    function, class, method or variable that nothing calls."""
    pytest.importorskip("vulture", reason="the dev extra is not installed")
    result = subprocess.run([sys.executable, "-m", "vulture"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_layouts_use_no_private_attribute():
    """``harness.runtime.parallel`` holds no ``obj._name`` of another object (e.g. DDP's private
    ``_set_params_and_buffers_to_ignore_for_model``): public PyTorch API only."""
    found = []
    for path in modules("harness/parallel"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__") \
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []
