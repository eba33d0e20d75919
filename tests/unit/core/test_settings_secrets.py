"""Every secret setting can come from a file (``*_FILE``: a mounted container secret), never only inline."""

from __future__ import annotations

import pytest

from infra.core.errors import ConfigError
from infra.core.settings import load_settings, setting_keys, setting_sources, setting_value

SECRET = "s3cr3t-from-a-file"


def test_every_secret_setting_has_a_file_form():
    secrets = [k for k, s in setting_sources(environ={}).items() if s.secret]
    assert sorted(secrets) == ["kafka_sasl_password", "keys_passphrase", "pg_dsn"]
    assert all(f"{key}_file" in setting_keys() for key in secrets)


@pytest.mark.parametrize("key, value", [
    ("kafka_sasl_password", SECRET),
    ("pg_dsn", f"postgresql://db.example:5432/renkei?passfile=/run/{SECRET}"),
    ("keys_passphrase", SECRET),
])
def test_each_secret_is_read_from_its_file_given_by_environment(tmp_path, key, value):
    secret_file = tmp_path / key
    secret_file.write_text(value + "\n")  # a trailing newline, as `echo` and most secret stores write
    environ = {f"RENKEI_{key.upper()}_FILE": str(secret_file)}
    if key == "kafka_sasl_password":
        environ |= {"RENKEI_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "RENKEI_KAFKA_SASL_USERNAME": "hub"}
    settings = load_settings(environ=environ)
    if key == "keys_passphrase":  # read where the keys are opened (infra.platform.keystore), from the path set here
        assert settings.keys_passphrase_file == secret_file
    else:
        assert setting_value(settings, key) == value
    assert SECRET not in repr(settings)


def test_an_inline_value_wins_over_the_file_and_a_missing_file_is_named(tmp_path):
    (tmp_path / "dsn").write_text("postgresql://from-file/renkei")
    both = {"RENKEI_PG_DSN": "postgresql://inline/renkei", "RENKEI_PG_DSN_FILE": str(tmp_path / "dsn")}
    assert load_settings(environ=both).pg_dsn == "postgresql://inline/renkei"
    with pytest.raises(ConfigError, match="pg_dsn_file: cannot read"):
        load_settings(environ={"RENKEI_PG_DSN_FILE": str(tmp_path / "absent")})
