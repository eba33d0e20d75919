"""Unit-test hooks for ``make mutation`` (docs/testing.md); outside a mutation run they do nothing.

mutmut sets ``MUTANT_UNDER_TEST`` in every phase of its run (empty for the clean run, the mutant's
name while judging one). Then:

* a mutant is judged by its module's own unit tests: mutmut runs the tests that call the mutated
  function, ``tests/mutation_scope.py`` maps each module to the test files written for it, and the
  others are deselected here;
* Hypothesis keeps no example database (a mutant's verdict must not depend on which mutant ran
  before it) and has no deadline and no health checks (two mutants judged at once on two busy cores
  make every test slow). Its seeds stay random, as in the normal suite: a fixed seed draws minimal
  examples such as the My Number 000000000000, which the leak guard then finds in unrelated text.
  It draws 30 examples instead of 100 and does not shrink a failure (a mutant needs a verdict, not a
  minimal example): fewer examples can only let a mutant survive, never kill one, so the score is
  not flattered by it.
* the tests that judge the repository's source text rather than its behaviour (a long module says why
  at its top) are deselected in every phase: in ``mutants/`` a mutated module starts with mutmut's
  imports, before its docstring, so they would fail the clean run and no mutant could be judged.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, settings

if "MUTANT_UNDER_TEST" in os.environ:
    settings.register_profile("mutation", database=None, deadline=None, max_examples=30,
                              phases=[Phase.explicit, Phase.reuse, Phase.generate],
                              suppress_health_check=list(HealthCheck))
    settings.load_profile("mutation")


SOURCE_TEXT_TESTS = frozenset({"test_every_long_module_says_why_at_its_top"})
"""Tests of the source files' text, not of what the code does: meaningless on mutmut's rewritten copy."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "MUTANT_UNDER_TEST" not in os.environ:
        return
    text_only = [item for item in items if item.name in SOURCE_TEXT_TESTS]
    if text_only:
        config.hook.pytest_deselected(items=text_only)
        items[:] = [item for item in items if item.name not in SOURCE_TEXT_TESTS]
    mutant = os.environ["MUTANT_UNDER_TEST"]
    if "__mutmut_" not in mutant:
        return
    from tests.mutation_scope import tests_for_mutant

    files = tests_for_mutant(mutant)
    if files is None:
        return
    keep = [item for item in items if item.nodeid.split("::", 1)[0] in files]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep
