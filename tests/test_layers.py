"""The package's layers import downward only: no cycle, no import from a lower layer into a higher one."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
from pathlib import Path

from lightning.pytorch.strategies import StrategyRegistry

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_fair"
LAYERS = [  # lowest first; a part may import its own layer's parts' names only through the layers below
    {"__init__", "utils", "models"},
    {"backbones"},
    {"diffusion"},
    {"data"},
    {"classifiers"},
    {"metrics"},
    {"methods", "pretraining"},
    {"checks"},
    {"callbacks"},
    {"cli", "method_settings"},
    {"report"},
    {"main", "__main__"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str:
    """The top-level part (sub-package or module) of ``lightning_fair.<part>...``."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def imports(package: Path) -> list[tuple[str, str, Path]]:
    """``(importing part, imported part, file)`` for every import of the package's own modules."""
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).with_suffix("")
        part = relative.parts[0] if len(relative.parts) > 1 else relative.name
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            found += [(part, part_of(name), path) for name in names if name.split(".")[0] == package.name]
    return found


def upward_imports(package: Path) -> list[str]:
    """Every import from a part into a part of a higher layer (or a part the layers do not list)."""
    problems = []
    for importer, imported, path in imports(package):
        if importer == imported:
            continue
        if importer not in RANK or imported not in RANK:
            problems.append(f"{path.relative_to(package.parent)}: {importer} or {imported} is in no layer")
        elif RANK[imported] > RANK[importer]:
            problems.append(f"{path.relative_to(package.parent)}: {importer} imports the higher {imported}")
    return problems


def cycles(package: Path) -> list[list[str]]:
    """Cycles between parts (a same-layer pair importing each other included)."""
    graph: dict[str, set[str]] = {}
    for importer, imported, _ in imports(package):
        if importer != imported:
            graph.setdefault(importer, set()).add(imported)
    found, done = [], set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            found.append([*stack[stack.index(node) :], node])
            return
        if node in done:
            return
        for successor in sorted(graph.get(node, ())):
            visit(successor, [*stack, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return found


def test_layers_import_downward_only() -> None:
    assert upward_imports(PACKAGE) == []
    assert cycles(PACKAGE) == []


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    """A copy of the package with one deliberate upward import (backbones -> methods) fails both checks' walk."""
    copy = tmp_path / "lightning_fair"
    subprocess.run(["cp", "-r", str(PACKAGE), str(copy)], check=True)
    target = copy / "backbones" / "record.py"
    target.write_text("from lightning_fair.methods import DebiasingMethod  # noqa: F401\n" + target.read_text())
    assert upward_imports(copy) == ["lightning_fair/backbones/record.py: backbones imports the higher methods"]
    assert any({"backbones", "methods"} <= set(cycle) for cycle in cycles(copy))


def test_importing_the_library_changes_no_lightning_strategy() -> None:
    """After importing every module of the package, Lightning's strategy registry holds only Lightning's strategies."""
    for module in pkgutil.walk_packages([str(PACKAGE)], prefix="lightning_fair."):
        if module.name != "lightning_fair.__main__":  # the command line itself
            importlib.import_module(module.name)
    assert "ddp" in StrategyRegistry
    ours = [
        name for name, entry in StrategyRegistry.items() if not entry["strategy"].__module__.startswith("lightning.")
    ]
    assert not ours, f"the library registered {ours}"


def test_no_test_doubles_in_the_library() -> None:
    """``unittest.mock`` belongs to the tests: the library patches nothing."""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [node.module] if isinstance(node, ast.ImportFrom) else []
            modules += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            assert not any(str(name).startswith("unittest") for name in modules), path
