"""The layering of docs/architecture.md holds, and breaking it fails (issue 17).

- The import contract in pyproject.toml (import-linter's layers contract, which also sees
  function-local imports) is kept by the code as it is, and broken by one upward import: a copy of the
  packages in which a crypto module imports the CLI inside a function fails ``lint-imports``.
- No import cycle: no module imports itself back through any chain of imports, function-local ones
  included (import-linter's layers contract does not look inside a layer).
- No module of Renkei, tests included, imports another module's private name (``from m import _x``
  or ``m._x`` on an imported module): a private name used across modules is a seam without a name.
- No module is imported under a one-capital-letter alias (``from schemas import types as T`` reads
  like a TypeVar); an alias says what the module holds (``types as msg``).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("infra", "streams", "connectors", "schemas")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the packages under ``tree`` (which come first on its import path)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def copy_of_the_packages(tmp_path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "static",
                                                                                          "avsc", "kafka"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is installed with the test extra")
def test_the_code_keeps_the_layers_contract(copy_of_the_packages):
    done = _lint_imports(copy_of_the_packages)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 1 kept, 0 broken." in done.stdout


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is installed with the test extra")
def test_an_upward_import_breaks_the_contract(copy_of_the_packages):
    merkle = copy_of_the_packages / "infra" / "crypto" / "merkle.py"
    merkle.write_text(merkle.read_text() + "\n\ndef _upward():\n    from infra.cli import main\n\n    return main\n")
    done = _lint_imports(copy_of_the_packages)
    assert done.returncode == 1
    assert "infra.crypto is not allowed to import infra.cli" in done.stdout
    assert "infra.crypto.merkle -> infra.cli" in done.stdout


def _renkei_modules() -> set[str]:
    found = set()
    for package in (*PACKAGES, "tests"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_names_used_across_modules(path: Path, modules: set[str]) -> list[str]:
    """``from m import _x`` and ``alias._x`` where ``alias`` is an imported Renkei module, in one file."""
    tree = ast.parse(path.read_text())
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    aliases: dict[str, str] = {}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] in (
                *PACKAGES, "tests"):
            for alias in node.names:
                if f"{node.module}.{alias.name}" in modules:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                elif _private(alias.name):
                    found.append(f"{shown}:{node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name) \
                and node.value.id in aliases:
            found.append(f"{shown}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_name():
    modules = _renkei_modules()
    found = [hit for package in (*PACKAGES, "tests", "benchmarks") for path in sorted((ROOT / package).rglob("*.py"))
             for hit in private_names_used_across_modules(path, modules)]
    assert found == []


def test_the_private_name_check_can_fail(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from infra.crypto import merkle\nfrom infra.crypto.envelope import _lp\n\nmerkle._node\n")
    found = private_names_used_across_modules(sample, _renkei_modules())
    assert [hit.split(": ", 1)[1] for hit in found] == ["from infra.crypto.envelope import _lp",
                                                         "infra.crypto.merkle._node"]


def _imports_of(path: Path, module: str, modules: set[str]) -> set[str]:
    """The Renkei modules ``module`` imports anywhere in its file (function-local imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_no_import_cycles():
    modules = {m for m in _renkei_modules() if not m.startswith("tests")}
    graph = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            graph[module] = _imports_of(path, module, modules)
    assert import_cycles(graph) == []


def test_the_cycle_check_can_fail():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c"]]


def typevar_like_aliases(source: str) -> list[str]:
    """``import x as T`` / ``from p import m as T``: aliases of one capital letter, which read like a TypeVar."""
    return [f"{alias.name} as {alias.asname}" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Import | ast.ImportFrom) for alias in node.names
            if alias.asname is not None and len(alias.asname) == 1 and alias.asname.isupper()]


def test_no_module_is_imported_as_a_typevar_like_letter():
    found = [f"{path.relative_to(ROOT)}: {hit}" for package in (*PACKAGES, "tests", "benchmarks")
             for path in sorted((ROOT / package).rglob("*.py")) for hit in typevar_like_aliases(path.read_text())]
    assert found == []


def test_the_alias_check_can_fail():
    assert typevar_like_aliases("from schemas import types as T\nimport numpy as np\nimport typing as t\n") == [
        "types as T"]
