"""The package's rooms: imports point one way (no module imports one that imports it back, at import time),
and the flat layout's module names still import (omnitrigger/_moved.py)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: package -> its folder in the checkout (pyproject.toml's package-dir)
FOLDERS = {"omnitrigger": "omnitrigger", "omnitrigger.flows": "flows", "omnitrigger.operators": "operators",
           "omnitrigger.state": "state", "omnitrigger.schemas": "schemas"}


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package, folder in FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _imported_at_import_time(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules `name` imports at its top level (not inside functions or TYPE_CHECKING)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for statement in (node.body if isinstance(node, (ast.If, ast.Try)) else [node]):
            if isinstance(statement, ast.Import):
                found.update(alias.name for alias in statement.names)
            elif isinstance(statement, ast.ImportFrom):
                base = statement.module or ""
                if statement.level:
                    parent = package.split(".")[:len(package.split(".")) - statement.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                             for alias in statement.names)
    inside: set[str] = set()
    for module in found:
        while module and module not in modules:
            module = module.rpartition(".")[0]
        if module and module != name:
            inside.add(module)
    return inside


def test_no_module_of_the_package_imports_itself_back() -> None:
    modules = _modules()
    graph = {name: _imported_at_import_time(name, path, modules) for name, path in modules.items()}
    cycles = []
    for start in graph:  # a path back to `start` through its imports
        stack, seen = [(start, [start])], set()
        while stack:
            name, trail = stack.pop()
            for imported in graph[name]:
                if imported == start:
                    cycles.append(trail)
                elif imported not in seen:
                    seen.add(imported)
                    stack.append((imported, trail + [imported]))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle + [cycle[0]]) for cycle in cycles[:5])


def test_io_imports_neither_the_flow_nor_the_runner_nor_the_cli() -> None:
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("omnitrigger.io."):
            outward = {imported for imported in _imported_at_import_time(name, path, modules)
                       if imported.startswith(("omnitrigger.flows", "omnitrigger.runner", "omnitrigger.cli",
                                               "omnitrigger.operators"))}
            assert not outward, f"{name} imports {sorted(outward)}"


@pytest.mark.parametrize("old, new", [
    ("omnitrigger.recording", "omnitrigger.io.recording"),
    ("omnitrigger.kafka_mock", "omnitrigger.io.kafka_mock"),
    ("omnitrigger.outputs", "omnitrigger.io.outputs"),
    ("omnitrigger.stores", "omnitrigger.io.stores"),
])
def test_the_flat_layouts_names_are_the_new_modules(old: str, new: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(new)


def test_an_old_name_imports_first_in_a_fresh_interpreter() -> None:
    """`from omnitrigger.kafka_mock import MockCluster` as the first import of a script (nothing loaded yet)."""
    script = ("from omnitrigger.kafka_mock import MockCluster\nimport omnitrigger.io.kafka_mock as new\n"
              "from omnitrigger import recording\n"
              "print(MockCluster is new.MockCluster, recording.__name__)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.split() == ["True", "omnitrigger.io.recording"]
