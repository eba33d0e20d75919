"""``renkei --version``, ``renkei completion bash|zsh`` and ``renkei config show``, run as processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata

import pytest

from infra.core.settings import load_settings, setting_keys, setting_sources
from tests.tools import require

SECRET = "s3cr3t-Pa55"


def _renkei(*argv: str, env: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_") and k not in ("JAVA_HOME", "XDG_CACHE_HOME")}
    return subprocess.run([sys.executable, "-m", "infra.cli", *argv], capture_output=True, text=True, timeout=120,
                          env={**clean, **(env or {})}, cwd=cwd)


def test_version():
    done = _renkei("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"renkei {metadata.version('renkei')}"


def test_config_show_names_each_source_and_redacts_secrets(tmp_path):
    config = tmp_path / "renkei.toml"
    config.write_text('banks = 7\nhub_workers = 3\n[kafka]\ntopic_prefix = "from-file"\n')
    env = {"RENKEI_CONFIG": str(config), "RENKEI_BANKS": "4", "RENKEI_KAFKA_SASL_PASSWORD": SECRET,
           "RENKEI_KEYS_PASSPHRASE": SECRET, "JAVA_HOME": "/opt/jdk"}
    done = _renkei("config", "show", "--json", "--state-dir", str(tmp_path / "st"),
                   "--pg-dsn", f"postgresql://admin:{SECRET}@db.example:5432/renkei?passfile=/run/{SECRET}", env=env)
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    rows = {r["key"]: r for r in json.loads(done.stdout)["settings"]}
    assert list(rows) == setting_keys()

    def seen(key):
        return rows[key]["value"], rows[key]["source"], rows[key]["origin"]

    assert seen("hub_workers") == (3, "file", str(config))
    assert seen("kafka_topic_prefix") == ("from-file", "file", str(config))
    assert seen("banks") == (4, "environment", "RENKEI_BANKS")  # environment beats the file
    assert seen("state_dir") == (str(tmp_path / "st"), "flag", "--state-dir")
    assert seen("embedded_java") == ("/opt/jdk/bin/java", "environment", "JAVA_HOME")
    assert seen("log_level") == ("INFO", "default", "")
    assert seen("kafka_sasl_password") == ("<redacted>", "environment", "RENKEI_KAFKA_SASL_PASSWORD")
    assert seen("keys_passphrase") == ("<redacted>", "environment", "RENKEI_KEYS_PASSPHRASE")
    assert seen("pg_dsn") == ("postgresql://admin@db.example:5432/renkei", "flag", "--pg-dsn")
    assert {k for k, r in rows.items() if r["secret"]} == {"kafka_sasl_password", "keys_passphrase", "pg_dsn"}

    table = _renkei("config", "show", "--pg-dsn", f"postgresql://admin:{SECRET}@db/renkei", env={**env, "COLUMNS": "200"})
    assert table.returncode == 0 and SECRET not in table.stdout + table.stderr
    assert "RENKEI_KAFKA_SASL_PASSWORD" in table.stdout and "<redacted>" in table.stdout


def test_config_show_reports_a_bad_configuration_as_a_usage_error(tmp_path):
    done = _renkei("config", "show", env={"RENKEI_BANKS": "many"})
    assert done.returncode == 2 and "banks: expected int" in done.stderr and "Traceback" not in done.stderr


def test_sources_follow_the_loading_precedence(tmp_path):
    """The provenance and the loaded value come from the same layer, whatever the combination."""
    config = tmp_path / "c.toml"
    config.write_text("banks = 1\nhub_workers = 2\nlog_level = 'DEBUG'\n")
    environ = {"RENKEI_BANKS": "5", "RENKEI_HUB_WORKERS": "6"}
    cli = {"banks": 9, "json": True}
    settings = load_settings(cli=cli, environ=environ, config_file=config)
    sources = setting_sources(cli=cli, environ=environ, config_file=config)
    assert (settings.banks, sources["banks"].source) == (9, "flag")
    assert (settings.hub_workers, sources["hub_workers"].source) == (6, "environment")
    assert (settings.log_level, sources["log_level"].source) == ("DEBUG", "file")
    assert (settings.records_retention_years, sources["records_retention_years"].source) == (7, "default")


def _bash_complete(script: str, words: list[str]) -> list[str]:
    line = " ".join(words)
    probe = (f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; COMP_LINE='{line}'; "
             f"COMP_POINT=${{#COMP_LINE}}; _shtab_renkei; printf '%s\\n' \"${{COMPREPLY[@]}}\"\n")
    done = subprocess.run(["bash", "--norc", "--noprofile"], input=probe, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_bash_completion_completes_commands_actions_and_options():
    require(None if shutil.which("bash") else "bash is not installed")
    done = _renkei("completion", "bash")
    assert done.returncode == 0 and "_shtab_renkei" in done.stdout
    script = done.stdout
    assert "schemas" in _bash_complete(script, ["renkei", "sch"])
    assert {"completion", "config"} <= set(_bash_complete(script, ["renkei", "co"]))
    assert set(_bash_complete(script, ["renkei", "schemas", ""])) >= {"list", "show", "export", "check"}
    assert "--group" in _bash_complete(script, ["renkei", "lag", "--gr"])
    assert set(_bash_complete(script, ["renkei", "completion", ""])) == {"bash", "zsh"}


def test_zsh_completion_is_a_valid_zsh_completion_function():
    require(None if shutil.which("zsh") else "zsh is not installed")
    done = _renkei("completion", "zsh")
    assert done.returncode == 0 and done.stdout.startswith("#compdef renkei")
    assert "schemas" in done.stdout and "'--json[" in done.stdout or "--json" in done.stdout
    check = subprocess.run(["zsh", "-n"], input=done.stdout, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("argv", [["completion"], ["completion", "fish"], ["config"]])
def test_usage_errors(argv):
    done = _renkei(*argv)
    assert done.returncode == 2 and "usage:" in done.stderr
