"""Mutation testing of the security core: what ``make mutation`` mutates, which unit tests judge it, the score.

mutmut (configured in ``pyproject.toml``, ``[tool.mutmut]``) makes the mutants; this module says
which of them count and prints the table (docs/testing.md, "Mutation testing").

* :data:`SCOPES` — one entry per module: the functions whose mutants count (mutmut mutant-name
  globs; a module's I/O code, which no unit test can reach, is left out and named in the docs),
  the unit test files that judge its mutants, and why the module is in the list;
* ``tests/unit/conftest.py`` reads :func:`tests_for_mutant` in each mutant's test run and keeps
  only those files' tests: mutmut already runs only the tests that call the mutated function
  (its coverage-based selection), and this narrows them to the module's own tests, so a full run
  stays bounded on two cores;
* :func:`tally` turns mutmut's per-file results (``mutants/<path>.meta``) into :class:`Score` rows.

Run it through make: ``make mutation`` (every module) or ``make mutation MODULE=infra/crypto/tokens.py``;
``make mutation RERUN=1 MODULE=...`` judges again only the mutants the last run did not detect (after
adding tests, or to finish an interrupted run; after a change to the module itself, run it whole);
``python tests/mutation_scope.py table`` prints the table of the last run again.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

GOAL = 0.90
"""Share of a module's mutants the unit tests must kill (issue 14)."""


@dataclass(frozen=True)
class Scope:
    """One module of the security core under mutation."""

    path: str  # e.g. "infra/crypto/tokens.py"
    tests: tuple[str, ...]  # unit test file names (found in tests/unit/<package>/) that judge its mutants
    why: str
    functions: tuple[str, ...] = ("*",)  # globs over mutmut's function names: "x_name", "xǁClassǁmethod"
    exclude: tuple[str, ...] = ()  # I/O functions no unit test can reach (listed in docs/testing.md)

    @property
    def module(self) -> str:
        return self.path.removesuffix(".py").replace("/", ".")

    def counts(self, mutant: str) -> bool:
        """Whether ``mutant`` (a full mutmut mutant name) is one of this module's counted mutants."""
        prefix = self.module + "."
        if not mutant.startswith(prefix):
            return False
        function = mutant[len(prefix):].rsplit("__mutmut_", 1)[0]
        return (any(fnmatch.fnmatchcase(function, g) for g in self.functions)
                and not any(fnmatch.fnmatchcase(function, g) for g in self.exclude))

    def globs(self) -> list[str]:
        """Patterns for ``mutmut run``: they match the mutant names and mutmut's function names alike, so
        its clean run takes only the tests that call them (the exclusions are applied by :meth:`counts`)."""
        return [f"{self.module}.{g}" + ("" if g.endswith("*") else "*") for g in self.functions]


ENVELOPE_TESTS = ("test_envelope.py", "test_batch.py", "test_caps.py", "test_senders.py", "test_lookups.py",
                  "test_envelope_meta.py", "test_gateway_meta.py")
ENVELOPE_CHECK_TESTS = ENVELOPE_TESTS + ("test_envelope_checks.py", "test_envelope_verified.py")

SCOPES: tuple[Scope, ...] = (
    Scope("infra/crypto/tokens.py", ("test_tokens.py", "test_tokens_checks.py"),
          "tokens: a My Number becomes a per-participant token; a dropped check links people across participants "
          "or lets one participant learn another's token"),
    Scope("infra/crypto/merkle.py", ("test_batch.py", "test_records_checkpoints.py", "test_merkle_edges.py"),
          "Merkle audit paths: one signature covers a batch; a wrong path check lets a forged message ride on a "
          "real batch signature"),
    Scope("infra/domain/validation.py", ("test_validation.py", "test_registration_rules.py", "test_tokens.py",
                                          "test_validation_checks.py"),
          "the boundary checks: My Number check digit, bank account fields, the existence answer's holder flag, "
          "consent",
          # _halfwidth_table only builds the kana table at import (the table is checked through
          # to_zengin_halfwidth by test_validation.py): mutmut cannot switch one of its mutants in.
          exclude=("x__halfwidth_table",)),
    Scope("infra/domain/senders.py", ("test_senders.py", "test_envelope.py", "test_senders_words.py"),
          "the receivers' own 'who may send this type to me' table, enforced whatever the hub did",
          # _rule only builds the SENDERS table at import, before mutmut switches a mutant in: none of its
          # mutants can be judged (the table itself is checked against the policy by test_senders.py).
          exclude=("x__rule",)),
    Scope("schemas/bounds.py", ("test_caps.py", "test_codec.py", "test_bounds_walk.py"),
          "array caps checked before decoding: a dropped cap lets one envelope cost seconds of CPU"),
    Scope("streams/registration_rules.py", ("test_registration_rules.py", "test_registration_rules_words.py"),
          "whose account it is: who may register, change or delete, and only the asked bank may answer"),
    Scope("connectors/httpsig.py", ("test_bankhttp_channel.py", "test_httpsig_checks.py"),
          "bank HTTP request signatures: key, clock skew, signature, nonce replay"),
    Scope("infra/crypto/keys.py", ("test_keys.py", "test_envelope.py", "test_batch.py", "test_keyadmin.py",
                          "test_keys_checks.py"),
          "the key directory: root signature, versions, lifecycle on apply; revoked, retired and suspended keys "
          "refused on lookup", functions=("xǁKeyDirectoryǁ*",)),
    Scope("infra/records/records_verify.py", ("test_records_checkpoints.py", "test_records_verify_checks.py"),
          "the portal's verdict on a person's records against the signed checkpoint: deletion, rollback, fork",
          exclude=("xǁRecordsVerifierǁ*",)),
    # The envelope's checks, one module per primitive since the split (issue 17): scored first on the
    # pre-split envelope.py (docs/testing.md says at which commit); sealing and the codec are left out.
    Scope("infra/crypto/verify.py", ENVELOPE_CHECK_TESTS,
          "the hub's and an inbox's verification: every signature, freshness, addressing and ownership check; "
          "a VerifiedEnvelope only the verifier creates, read-only once made",
          functions=("xǁVerifierǁ*", "xǁVerifiedEnvelopeǁ*", "x__with_origin_terms")),
    Scope("infra/crypto/open.py", ENVELOPE_CHECK_TESTS,
          "opening: only a VerifiedEnvelope, addressed to this opener, countersigned where required, once",
          functions=("xǁOpenerǁ*",)),
    Scope("infra/crypto/forward.py", ENVELOPE_CHECK_TESTS,
          "the hub's forward: only an ingress-verified envelope, to its own recipient, countersigned",
          functions=("xǁHubForwarderǁ*",)),
    Scope("infra/crypto/legs.py", ENVELOPE_CHECK_TESTS,
          "a forwarded leg's ids and keys: the hub's leg sealing and the recipient's leg opening"),
    Scope("infra/crypto/replay_guard.py", ENVELOPE_CHECK_TESTS,
          "the in-process replay guard by message id", functions=("xǁMemoryReplayGuardǁ*",)),
    Scope("infra/crypto/layout.py", ENVELOPE_TESTS + ("test_envelope_golden.py", "test_envelope_checks.py"),
          "the envelope's signed layout (split out of envelope.py): domain separation, the signed leaves, the "
          "bound HPKE infos and AADs"),
    Scope("infra/domain/policy.py", ("test_policy.py", "test_senders.py", "test_envelope.py", "test_caps.py",
                           "test_procedures.py", "test_gateway_meta.py", "test_policy_checks.py"),
          "the hub's default-deny policy and suspensions"),
    Scope("streams/gateway.py", ENVELOPE_TESTS + ("test_metrics.py", "test_gateway_checks.py"),
          "the hub's decision per ingress record: verify, rate limit, authorise, translate, countersign"),
    Scope("infra/records/provisions.py", ("test_provisions_chain.py", "test_records_checkpoints.py",
                               "test_provisions_checks.py"),
          "the provision-record hash chain: canonical bytes, chaining, heads and anchors, the chain walk",
          exclude=("xǁProvisionStoreǁ*",)),
    Scope("infra/records/checkpoints.py", ("test_records_checkpoints.py", "test_checkpoints_checks.py"),
          "signed checkpoints over every person's chain head: the tree, the signature, the evidence",
          exclude=("x_read_evidence",)),
)


def scope_for(mutant: str, scopes: Iterable[Scope] = SCOPES) -> Scope | None:
    return next((s for s in scopes if s.counts(mutant)), None)


WITHOUT_ENV = "MUTATION_WITHOUT"
"""Comma-separated test file names left out of every scope: a baseline score measured without the tests
written to kill survivors (``MUTATION_WITHOUT=test_tokens_checks.py make mutation MODULE=infra/crypto/tokens.py``)."""


def tests_for_mutant(mutant: str, scopes: Iterable[Scope] = SCOPES,
                     without: str | None = None) -> tuple[str, ...] | None:
    """The unit test files that judge ``mutant`` (paths from the repository root), or None if it is not scoped."""
    scope = scope_for(mutant, scopes)
    if scope is None:
        return None
    left_out = set(filter(None, (os.environ.get(WITHOUT_ENV, "") if without is None else without).split(",")))
    return tuple(unit_test_path(t) for t in scope.tests if t not in left_out)


UNIT_TESTS = Path(__file__).resolve().parent / "unit"


def unit_test_path(name: str, unit: Path = UNIT_TESTS) -> str:
    """Where the unit test file ``name`` is, from the repository root: ``tests/unit/<package>/<name>``.

    A scope names files only; their folder mirrors the package they test (docs/testing.md) and may change
    without touching the scopes. LookupError when no file, or more than one, has that name."""
    found = sorted(p for p in unit.rglob(name) if "__pycache__" not in p.parts)
    if len(found) != 1:
        raise LookupError(f"a mutation scope names {name}: {len(found)} files of that name under tests/unit")
    return f"tests/unit/{found[0].relative_to(unit).as_posix()}"


# mutmut's exit codes (mutmut.__main__.status_by_exit_code): what each means for the score.
KILLED_CODES = frozenset({1, 3})
TIMEOUT_CODES = frozenset({24, -24, 36, 152, 255, -9, -11})  # CPU/wall time limit, or killed by it
SURVIVED_CODES = frozenset({0})
NO_TESTS_CODES = frozenset({5, 33})


@dataclass(frozen=True)
class Score:
    """One module's row of the table."""

    path: str
    mutants: int
    killed: int
    survived: int
    timeout: int
    no_tests: int
    other: int  # not checked (run interrupted) or suspicious
    survivors: tuple[str, ...]

    @property
    def score(self) -> float:
        """Killed (a timeout is a detected mutant too) over every counted mutant; 0 when there are none."""
        return (self.killed + self.timeout) / self.mutants if self.mutants else 0.0


def tally(scope: Scope, exit_codes: Mapping[str, int | None]) -> Score:
    """``scope``'s row from mutmut's ``exit_code_by_key`` of its file."""
    codes = {k: v for k, v in exit_codes.items() if scope.counts(k)}
    in_ = lambda group: sum(1 for v in codes.values() if v in group)  # noqa: E731
    known = KILLED_CODES | TIMEOUT_CODES | SURVIVED_CODES | NO_TESTS_CODES
    return Score(
        path=scope.path, mutants=len(codes), killed=in_(KILLED_CODES), survived=in_(SURVIVED_CODES),
        timeout=in_(TIMEOUT_CODES), no_tests=in_(NO_TESTS_CODES),
        other=sum(1 for v in codes.values() if v not in known),
        survivors=tuple(sorted(k for k, v in codes.items() if v in SURVIVED_CODES | NO_TESTS_CODES)),
    )


def render(scores: Iterable[Score]) -> str:
    rows = [("module", "mutants", "killed", "survived", "timeout", "no tests", "score")]
    for s in scores:
        rows.append((s.path, str(s.mutants), str(s.killed), str(s.survived), str(s.timeout), str(s.no_tests),
                     f"{s.score:.1%}" + ("" if s.score >= GOAL else " <") + (f" ({s.other} unchecked)" if s.other else "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(rows[0]), line(tuple("-" * w for w in widths))] + [line(r) for r in rows[1:]])


# -- running (through make: the mutation venv, from the repository root) --------------------------

def _selected(modules: list[str]) -> list[Scope]:
    if not modules:
        return list(SCOPES)
    by_path = {s.path: s for s in SCOPES}
    unknown = [m for m in modules if m.removeprefix("./") not in by_path]
    if unknown:
        sys.exit(f"not in the mutation scope: {', '.join(unknown)}; the modules are {', '.join(by_path)}")
    return [by_path[m.removeprefix("./")] for m in modules]


def _mutmut_config(root: Path) -> dict:
    import tomllib

    return tomllib.loads((root / "pyproject.toml").read_text())["tool"]["mutmut"]


def sync_data_files(root: Path) -> list[str]:
    """Copy the source packages' non-Python files (policy, participants, Avro schemas) into ``mutants/`` where
    they differ: mutmut copies them only when missing, so after a merge its copy would judge the mutants
    against the old policy or schemas, and its clean run fails. Returns the paths copied."""
    import shutil

    config = _mutmut_config(root)
    copied = []
    for top in [*config["source_paths"], *config.get("also_copy", [])]:
        for source in sorted((root / top).rglob("*")):
            if not source.is_file() or source.suffix in (".py", ".pyc"):
                continue
            target = root / "mutants" / source.relative_to(root)
            if not target.exists() or target.read_bytes() != source.read_bytes():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
                copied.append(str(source.relative_to(root)))
    return copied


def prune_removed(root: Path) -> list[str]:
    """Delete ``mutants/`` copies of source and test modules that no longer exist (moved or split, like
    ``connectors/client.py`` or ``tests/unit/test_*.py`` before the tests mirrored the packages): mutmut never
    removes a copy, and a stale one fails the clean run (a package exports a module it no longer has, or
    two test files share a name). Returns the paths removed."""
    config = _mutmut_config(root)
    removed = []
    for top in [*config["source_paths"], "tests"]:
        copies = root / "mutants" / top
        for copy in sorted(copies.rglob("*.py")) if copies.is_dir() else ():
            source = root / copy.relative_to(root / "mutants")
            if not source.exists():
                copy.unlink()
                copy.with_name(copy.name + ".meta").unlink(missing_ok=True)
                removed.append(str(source.relative_to(root)))
    return removed


def _codes(scope: Scope, root: Path) -> dict[str, int | None]:
    meta = root / "mutants" / f"{scope.path}.meta"
    return json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}


def _scores(scopes: Iterable[Scope], root: Path) -> list[Score]:
    return [tally(scope, _codes(scope, root)) for scope in scopes]


def undetected(scope: Scope, exit_codes: Mapping[str, int | None]) -> list[str]:
    """``scope``'s mutants of the last run that no test detected (survived, no tests, or never checked)."""
    return sorted(k for k, v in exit_codes.items() if scope.counts(k) and v not in KILLED_CODES | TIMEOUT_CODES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["run", "rerun", "table"],
                        help="run: every mutant of the modules; rerun: only those the last run did not detect "
                             "(after new tests, or to finish an interrupted run); table: the last results")
    parser.add_argument("modules", nargs="*", help="module paths, e.g. infra/crypto/tokens.py (default: all)")
    args = parser.parse_args(argv)
    root = Path.cwd()
    scopes = _selected(args.modules)
    if args.command in ("run", "rerun"):
        log = root / "mutants" / "mutmut-run.log"
        log.parent.mkdir(exist_ok=True)
        tmp = root / "mutants" / "tmp"  # each mutant's pytest makes its own numbered folder here, not in /tmp
        tmp.mkdir(exist_ok=True)
        env = dict(os.environ, TMPDIR=str(tmp))
        if (root / "mutants").exists():
            for path in sync_data_files(root):
                print(f"refreshed mutants/{path}", flush=True)
            for path in prune_removed(root):
                print(f"removed mutants/{path} (gone from the source)", flush=True)
        if args.command == "run":
            names = [g for s in scopes for g in s.globs()]
        else:  # a module never run has no results yet: all of its mutants
            names = [n for s in scopes for n in (undetected(s, _codes(s, root)) if _codes(s, root) else s.globs())]
        if not names:
            print("nothing to rerun: every mutant of the last run was detected")
        print(f"mutmut: {len(scopes)} module(s); progress in {log.relative_to(root)}", flush=True)
        started = time.monotonic()
        with log.open("w") as out:
            rc = subprocess.call([sys.executable, "-m", "mutmut", "run", *names], stdout=out, stderr=subprocess.STDOUT,
                                 env=env) if names else 0
        print(f"mutmut exited {rc} after {time.monotonic() - started:.0f} s", flush=True)
        if rc != 0:
            print(log.read_text()[-3000:])
            return rc
    scores = _scores(scopes, root)
    print(render(scores))
    for s in scores:
        for name in s.survivors:
            print(f"  survived: {name}  (mutmut show '{name}')")
    return 0 if all(s.score >= GOAL for s in scores) else 1


if __name__ == "__main__":
    sys.exit(main())
