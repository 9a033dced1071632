"""The package has no import cycle, counting imports under ``if TYPE_CHECKING:`` and inside functions.

The graph is built from the source with ``ast`` (nothing is imported): an edge A -> B for every
``import dreamer_dynamics.B`` / ``from dreamer_dynamics.B import x`` / relative import in module A. A package
``__init__`` counts as a module; ``from pkg import name`` points at ``pkg.name`` when that is a module, else
at ``pkg`` itself.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = "dreamer_dynamics"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> modules of the package it imports (anywhere in its source)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}

    def resolve(target: str) -> str | None:
        while target and target not in files:  # an attribute of a module -> the module
            target = target.rpartition(".")[0]
        return target or None

    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from . / .. import
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                if target == PACKAGE or target.startswith(PACKAGE + "."):
                    resolved = resolve(target)
                    if resolved and resolved != name:
                        graph[name].add(resolved)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative DFS with colours)."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                path = [n for n, _ in stack]
                return path[path.index(child) :] + [child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_the_graph_sees_type_checking_and_relative_imports():
    graph = import_graph()
    assert (
        "dreamer_dynamics.model.config" in graph["dreamer_dynamics.model.transformer"]
    )  # from .config import
    assert "dreamer_dynamics.objective.flow" in graph["dreamer_dynamics.objective"]  # package __init__
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_type_checking_imports_count(tmp_path):
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from dreamer_dynamics.b import f\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    graph = import_graph(pkg)
    assert find_cycle(graph) == ["dreamer_dynamics.a", "dreamer_dynamics.b", "dreamer_dynamics.a"]


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


READING, BUILDING = f"{PACKAGE}.data.reading", f"{PACKAGE}.data.building"


def reachable(graph: dict[str, set[str]], starts: list[str]) -> dict[str, str]:
    """Module -> the module that first imports it, for every module reachable from ``starts``."""
    seen = {start: start for start in starts}
    todo = list(starts)
    while todo:
        node = todo.pop()
        for child in sorted(graph[node]):
            if child not in seen:
                seen[child] = node
                todo.append(child)
    return seen


def building_imports_of_reading(graph: dict[str, set[str]]) -> list[str]:
    """ "A <- B" for each building module (or the ``data`` package, whose names include building's) that a
    reading module reaches, directly or through other modules of the package."""
    starts = sorted(name for name in graph if name == READING or name.startswith(READING + "."))
    found = reachable(graph, starts)
    banned = [m for m in found if m == BUILDING or m.startswith(BUILDING + ".") or m == f"{PACKAGE}.data"]
    return [f"{m} <- {found[m]}" for m in sorted(banned)]


def test_reading_never_imports_building():
    """Training reads datasets without the dataset builders: no import from data/reading/ reaches
    data/building/, counting imports inside functions and under ``if TYPE_CHECKING:``."""
    graph = import_graph()
    assert any(name.startswith(READING + ".") for name in graph) and BUILDING in graph
    assert building_imports_of_reading(graph) == []


def test_the_reading_check_sees_imports_in_functions_and_type_checking(tmp_path):
    data = tmp_path / PACKAGE / "data"
    for folder in (data.parent, data, data / "reading", data / "building"):
        folder.mkdir(exist_ok=True)
        (folder / "__init__.py").write_text("")
    (data / "building" / "worlds.py").write_text("")
    (data / "reading" / "ok.py").write_text("import os\n")
    graph = import_graph(tmp_path / PACKAGE)
    assert building_imports_of_reading(graph) == []
    for source in (
        "def f():\n    from ..building import worlds\n",
        "import typing\nif typing.TYPE_CHECKING:\n    import dreamer_dynamics.data.building\n",
        "from dreamer_dynamics.data import LatentDatasetWriter\n",
    ):
        (data / "reading" / "bad.py").write_text(source)
        assert building_imports_of_reading(import_graph(tmp_path / PACKAGE)), source


def test_training_path_loads_no_builder(tmp_path):
    """Importing the CLI, then building and using a DataModule over a dataset on disk (statistics, decoder,
    batches), imports no building module."""
    from dreamer_dynamics.data.building.worlds import ToyDatasetConfig, generate_toy_dataset

    root = generate_toy_dataset(tmp_path / "data", ToyDatasetConfig(episodes=4, length=12), progress=False)
    (root / ".lock").unlink(missing_ok=True)
    script = f"""
import sys
import dreamer_dynamics.cli
from dreamer_dynamics.data import DynamicsDataModule

dm = DynamicsDataModule(root={str(root)!r}, short_length=4, long_length=8, val_fraction=0.25)
dm.setup("fit")
batch = next(iter(dm.train_dataloader()))
assert dm.decoder(dm.destandardize(batch["latents"])).shape[-1] == 3 and dm.token_grid == (4, 4)
next(iter(dm.val_dataloader()))
print(sorted(m for m in sys.modules if m.startswith({BUILDING!r})))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
