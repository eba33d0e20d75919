"""Every package of Renkei says what it may import and what it offers; every long module says why; every unit
test sits in the folder of the package it tests (issue 17).

Each package's ``__init__`` has a docstring stating its rule (``Rule:``) and an ``__all__`` that names
every public module in it (and, for the two packages with code of their own, ``infra.ops`` and
``infra.cli``, the names defined there) — and nothing that is not there, so the list stays true when a
module is added, renamed or removed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = sorted(p.parent for top in ("infra", "streams", "connectors", "schemas")
                  for p in (ROOT / top).rglob("__init__.py") if "__pycache__" not in p.parts)


def public_modules(package: Path) -> set[str]:
    return {p.stem if p.suffix == ".py" else p.name for p in package.iterdir()
            if not p.name.startswith("_") and (p.suffix == ".py" or (p / "__init__.py").exists())}


def declared(init: Path) -> tuple[str | None, list[str] | None, set[str]]:
    """The docstring, ``__all__`` and the names the ``__init__`` defines or imports itself."""
    tree = ast.parse(init.read_text(encoding="utf-8"))
    exported, defined = None, set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.ImportFrom):  # a name it re-exports (infra.ops from the platform's scans)
            defined.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Tuple):  # TAKE, SKIP, STOP = ...
                    defined.update(e.id for e in target.elts if isinstance(e, ast.Name))
                elif isinstance(target, ast.Name):
                    defined.add(target.id)
                    if target.id == "__all__":
                        exported = ast.literal_eval(node.value)
    return ast.get_docstring(tree), exported, defined


def problems(package: Path) -> list[str]:
    doc, exported, defined = declared(package / "__init__.py")
    found = []
    if not doc or "Rule:" not in doc:
        found.append("its docstring states no rule")
    if exported is None:
        return [*found, "no __all__"]
    modules = public_modules(package)
    found += [f"{m} is missing from __all__" for m in sorted(modules - set(exported))]
    found += [f"{n} in __all__ is neither a module nor defined here" for n in exported
              if n not in modules and n not in defined]
    if len(set(exported)) != len(exported):
        found.append("__all__ names something twice")
    return found


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_package_states_its_rule_and_exports_its_public_names(package):
    assert problems(package) == []


def test_the_package_check_can_fail(tmp_path):
    (tmp_path / "__init__.py").write_text('"""A package."""\n\n__all__ = ["gone", "kept"]\n')
    (tmp_path / "kept.py").write_text("")
    (tmp_path / "new.py").write_text("")
    (tmp_path / "_private.py").write_text("")
    assert problems(tmp_path) == ["its docstring states no rule", "new is missing from __all__",
                                  "gone in __all__ is neither a module nor defined here"]


LONG_FILE = 450  # lines; past this a module holds two concerns or says at its top why it does not


def unexplained_long_files(paths: list[Path], root: Path = ROOT) -> list[str]:
    found = []
    for path in paths:
        source = path.read_text(encoding="utf-8")
        if source.count("\n") > LONG_FILE and "Why this file is long:" not in (ast.get_docstring(ast.parse(source)) or ""):
            found.append(str(path.relative_to(root)))
    return found


def test_every_long_module_says_why_at_its_top():
    assert unexplained_long_files(sorted(p for top in ("infra", "streams", "connectors", "schemas")
                                         for p in (ROOT / top).rglob("*.py"))) == []


def test_the_long_file_check_can_fail(tmp_path):
    (tmp_path / "long.py").write_text('"""Two concerns."""\n' + "x = 1\n" * LONG_FILE)
    (tmp_path / "explained.py").write_text('"""One thing.\n\nWhy this file is long: one table."""\n' + "x = 1\n" * LONG_FILE)
    assert unexplained_long_files([tmp_path / "long.py", tmp_path / "explained.py"], tmp_path) == ["long.py"]


# The unit tests mirror the packages (issue 17): a test file sits in the folder of the package it mainly tests.
# tests/integration stays flat: its tests follow flows across packages (docs/testing.md).
UNIT = ROOT / "tests" / "unit"
UNIT_FOLDERS = {"core": "infra/core", "schemas": "schemas", "domain": "infra/domain", "crypto": "infra/crypto",
                "platform": "infra/platform", "records": "infra/records", "streams": "streams", "ops": "infra/ops",
                "connectors": "connectors", "tools": "infra/tools", "cli": "infra/cli"}
LAYOUT_CHECKS = {"test_layers.py", "test_packages.py", "test_tools.py"}
"""The test files that stay at the top of tests/unit: the layout checks (every package at once) and the test of
the suite's own helper (tests/tools.py). Helpers shared by several folders (``conftest.py``, ``leakguard.py``,
``*_world.py``: no ``test_`` prefix) stay at the top too."""


def misplaced_unit_tests(unit: Path = UNIT) -> list[str]:
    found = []
    where = "tests/unit/<" + "|".join(UNIT_FOLDERS) + ">/"
    for path in sorted(unit.iterdir()):
        if path.is_file() and path.name.startswith("test_") and path.name not in LAYOUT_CHECKS:
            found.append(f"tests/unit/{path.name}: move it to the folder of the package it mainly tests, {where} "
                         "(docs/testing.md, 'Where a test goes')")
        elif path.is_dir() and path.name != "__pycache__":
            if path.name not in UNIT_FOLDERS:
                found.append(f"tests/unit/{path.name}/ mirrors no package: use one of {where}")
            elif not (path / "__init__.py").exists():
                found.append(f"tests/unit/{path.name}/ has no __init__.py (two folders' same-named files would clash)")
    return found


def test_unit_tests_sit_in_the_folder_of_their_package():
    assert misplaced_unit_tests() == []
    assert [folder for folder, package in UNIT_FOLDERS.items() if not (ROOT / package / "__init__.py").exists()] == []


def test_the_unit_layout_check_can_fail(tmp_path):
    (tmp_path / "conftest.py").write_text("")
    (tmp_path / "some_world.py").write_text("")
    (tmp_path / "test_layers.py").write_text("")
    (tmp_path / "test_newcomer.py").write_text("")
    (tmp_path / "crypto").mkdir()
    (tmp_path / "crypto" / "__init__.py").write_text("")
    (tmp_path / "ops").mkdir()
    (tmp_path / "misc").mkdir()
    found = misplaced_unit_tests(tmp_path)
    assert len(found) == 3
    assert found[0].startswith("tests/unit/misc/ mirrors no package")
    assert found[1] == "tests/unit/ops/ has no __init__.py (two folders' same-named files would clash)"
    assert found[2].startswith("tests/unit/test_newcomer.py: move it to the folder of the package it mainly tests, "
                               "tests/unit/<core|schemas|domain|crypto|platform|records|streams|ops|connectors|tools|cli>/")


def test_every_test_file_a_mutation_scope_names_is_found_once():
    from tests.mutation_scope import SCOPES, unit_test_path

    assert all(unit_test_path(name).startswith("tests/unit/") for scope in SCOPES for name in scope.tests)
    with pytest.raises(LookupError, match="names test_nowhere.py: 0 files"):
        unit_test_path("test_nowhere.py")


def test_mutmut_mutates_exactly_the_modules_the_mutation_scopes_score():
    """A module moved or split (envelope.py into verify/open/forward…) must move in both lists: mutmut only
    mutates ``[tool.mutmut] only_mutate``, and a scope whose file is not there would score nothing."""
    import tomllib

    from tests.mutation_scope import SCOPES

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    assert sorted(config["only_mutate"]) == sorted(scope.path for scope in SCOPES)
    assert all((ROOT / scope.path).is_file() for scope in SCOPES)


def test_a_mutants_copy_of_a_module_gone_from_the_source_is_removed_before_a_run(tmp_path):
    """mutmut never deletes its copy of a moved module; a stale ``connectors/client.py`` failed the clean run."""
    from tests.mutation_scope import prune_removed

    (tmp_path / "pyproject.toml").write_text('[tool.mutmut]\nsource_paths = ["pkg"]\n')
    for path in ("pkg/kept.py", "tests/unit/crypto/test_kept.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    for path in ("pkg/kept.py", "pkg/moved.py", "pkg/moved.py.meta", "tests/unit/test_old.py",
                 "tests/unit/crypto/test_kept.py"):
        (tmp_path / "mutants" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "mutants" / path).write_text("")
    assert prune_removed(tmp_path) == ["pkg/moved.py", "tests/unit/test_old.py"]
    left = sorted(str(p.relative_to(tmp_path / "mutants")) for p in (tmp_path / "mutants").rglob("*") if p.is_file())
    assert left == ["pkg/kept.py", "tests/unit/crypto/test_kept.py"]
