"""Settings precedence: defaults < TOML file < RENKEI_* environment < CLI flags."""

from pathlib import Path

import pytest

from infra.core.errors import ConfigError
from infra.core.settings import load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "renkei.toml"
    path.write_text(text)
    return path


def test_defaults_mean_embedded(tmp_path):
    s = load_settings(environ={})
    assert s.embedded_kafka and s.embedded_pg
    assert s.state_dir == Path(".renkei")
    assert s.resolved_keys_dir == Path(".renkei") / "keys"
    assert s.kafka.topic_prefix == "renkei"


def test_file_then_env_then_cli(tmp_path):
    cfg = write(tmp_path, """
state_dir = "/srv/renkei"
banks = 7
[kafka]
bootstrap = "file:9092"
topic_prefix = "fromfile"
[postgres]
dsn = "postgresql://file/db"
""")
    s = load_settings(environ={}, config_file=cfg)
    assert (s.kafka.bootstrap, s.pg_dsn, s.banks, s.kafka.topic_prefix) == (
        "file:9092", "postgresql://file/db", 7, "fromfile")
    env = {"RENKEI_KAFKA_BOOTSTRAP": "env:9092", "RENKEI_BANKS": "9"}
    s = load_settings(environ=env, config_file=cfg)
    assert (s.kafka.bootstrap, s.banks, s.pg_dsn) == ("env:9092", 9, "postgresql://file/db")
    s = load_settings(environ=env, config_file=cfg, cli={"kafka_bootstrap": "cli:9092", "banks": None})
    assert (s.kafka.bootstrap, s.banks) == ("cli:9092", 9)
    assert s.state_dir == Path("/srv/renkei")


def test_config_file_from_env(tmp_path):
    cfg = write(tmp_path, 'participant_id = "agency-nta"\n')
    assert load_settings(environ={"RENKEI_CONFIG": str(cfg)}).participant_id == "agency-nta"


@pytest.mark.parametrize("text, fragment", [
    ('nonsense = 1\n', "unknown configuration keys: nonsense"),
    ('banks = "many"\n', "banks: expected int"),
    ('banks = -1\n', "banks: expected int"),
    ('[kafka]\nsecurity_protocol = "TLS"\n', "kafka_security_protocol: must be one of"),
    ('[kafka]\nsecurity_protocol = "SASL_SSL"\n', "kafka_sasl_username: required"),
    ('banks = [\n', "not valid TOML"),
])
def test_bad_configuration_is_named(tmp_path, text, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
        load_settings(environ={}, config_file=write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(environ={}, config_file=tmp_path / "absent.toml")


def test_sasl_options_and_secret_not_in_repr():
    s = load_settings(environ={
        "RENKEI_KAFKA_BOOTSTRAP": "k:9093", "RENKEI_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "RENKEI_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "RENKEI_KAFKA_SASL_USERNAME": "hub",
        "RENKEI_KAFKA_SASL_PASSWORD": "s3cret", "RENKEI_PG_DSN": "postgresql://u:pw@h/db"})
    opts = s.kafka.client_options()
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512" and opts["sasl_plain_username"] == "hub"
    assert "s3cret" not in repr(s) and "pw@" not in repr(s)


def test_with_endpoints_keeps_the_rest():
    s = load_settings(environ={"RENKEI_BANKS": "3"})
    t = s.with_endpoints(bootstrap="b:1", pg_dsn="postgresql://x/y")
    assert (t.kafka.bootstrap, t.pg_dsn, t.banks) == ("b:1", "postgresql://x/y", 3)
    assert not t.embedded_kafka and not t.embedded_pg


def test_fetch_wait_is_a_long_poll_on_apache_kafka():
    from infra.platform.kafka import fetch_wait_ms

    kafka = load_settings(environ={}).kafka
    assert not kafka.tansu  # auto: Apache Kafka unless the stack says it runs Tansu
    assert fetch_wait_ms(kafka) == fetch_wait_ms(kafka, 5000) == 500
    assert fetch_wait_ms(load_settings(environ={"RENKEI_KAFKA_FETCH_WAIT_MS": "800"}).kafka) == 800


def test_the_key_directory_follower_holds_its_fetch_longer_on_apache_kafka_only():
    from infra.platform.kafka import follower_fetch_wait_ms

    assert follower_fetch_wait_ms(load_settings(environ={}).kafka) == 5000  # answered at once when a key changes
    assert follower_fetch_wait_ms(load_settings(environ={"RENKEI_KAFKA_FETCH_WAIT_MS": "8000"}).kafka) == 8000
    assert follower_fetch_wait_ms(load_settings(environ={"RENKEI_BROKER": "tansu"}).kafka) == 500  # held to the end


def test_fetch_wait_on_tansu_grows_with_the_partitions_a_consumer_asks_about():
    from infra.platform.kafka import fetch_wait_ms

    kafka = load_settings(environ={"RENKEI_BROKER": "tansu", "RENKEI_KAFKA_TANSU_FETCH_WAIT_MAX_MS": "300"}).kafka
    assert kafka.tansu
    assert fetch_wait_ms(kafka) == fetch_wait_ms(kafka, 80) == 20  # few inboxes: the short wait
    assert fetch_wait_ms(kafka, 400) == 100
    assert fetch_wait_ms(kafka, 5000) == 300  # capped


@pytest.mark.parametrize("env, key", [
    ({"RENKEI_KAFKA_FETCH_WAIT_MS": "0"}, "kafka_fetch_wait_ms"),
    ({"RENKEI_KAFKA_TANSU_FETCH_WAIT_MS": "0"}, "kafka_tansu_fetch_wait_ms"),
    ({"RENKEI_KAFKA_TANSU_FETCH_WAIT_MS": "400", "RENKEI_KAFKA_TANSU_FETCH_WAIT_MAX_MS": "300"},
     "kafka_tansu_fetch_wait_ms"),
    ({"RENKEI_BROKER": "redpanda"}, "broker: must be one of auto, kafka, tansu"),
    ({"RENKEI_EMBEDDED_KAFKA_HEAP_MB": "64"}, "embedded_kafka_heap_mb"),
])
def test_broker_settings_out_of_range_are_config_errors(env, key):
    with pytest.raises(ConfigError, match=key):
        load_settings(environ=env)


def test_broker_choice_from_file_env_and_flag(tmp_path):
    cfg = write(tmp_path, 'broker = "tansu"\n')
    assert load_settings(environ={}, config_file=cfg).kafka.broker == "tansu"
    assert load_settings(environ={"RENKEI_BROKER": "kafka"}, config_file=cfg).kafka.broker == "kafka"
    assert load_settings(environ={"RENKEI_BROKER": "kafka"}, cli={"broker": "auto"}).kafka.broker == "auto"


def test_java_and_cache_follow_java_home_and_xdg_unless_set():
    s = load_settings(environ={"JAVA_HOME": "/opt/jdk", "XDG_CACHE_HOME": "/var/cache/me"})
    assert s.embedded_java == "/opt/jdk/bin/java"
    assert s.resolved_kafka_cache == Path("/var/cache/me/renkei")
    s = load_settings(environ={"JAVA_HOME": "/opt/jdk", "RENKEI_EMBEDDED_JAVA": "/usr/bin/java",
                               "RENKEI_EMBEDDED_KAFKA_CACHE": "/srv/jars"})
    assert (s.embedded_java, s.resolved_kafka_cache) == ("/usr/bin/java", Path("/srv/jars"))
    assert load_settings(environ={}).resolved_kafka_cache == Path.home() / ".cache" / "renkei"


def test_with_endpoints_carries_the_running_broker_kind():
    s = load_settings(environ={})
    assert s.with_endpoints(bootstrap="b:1", pg_dsn="x", broker="tansu").kafka.tansu
    assert s.with_endpoints(bootstrap="b:1", pg_dsn="x").kafka.broker == "auto"


def test_lookup_deadlines_are_durations_with_days_by_default(tmp_path):
    """A lookup's deadline is its own setting per kind, in days by default (banks answer in daily cycles)."""
    s = load_settings(environ={})
    assert (s.lookup_deadline_inheritance_s, s.lookup_deadline_disaster_s) == (10 * 86_400, 3 * 86_400)
    assert (s.lookup_reminder_interval_s, s.numbering_deadline_s) == (86_400, 3 * 86_400)
    cfg = write(tmp_path, 'lookup_deadline_inheritance_s = "14d"\nlookup_deadline_disaster_s = 7200\n')
    s = load_settings(environ={"RENKEI_LOOKUP_REMINDER_INTERVAL_S": "36h"}, config_file=cfg,
                      cli={"numbering_deadline_s": "90s"})
    assert (s.lookup_deadline_inheritance_s, s.lookup_deadline_disaster_s) == (14 * 86_400, 7200)
    assert (s.lookup_reminder_interval_s, s.numbering_deadline_s) == (36 * 3600, 90)


@pytest.mark.parametrize("value, fragment", [
    ('"ten days"', "lookup_deadline_inheritance_s: expected a duration"),
    ('"10w"', "lookup_deadline_inheritance_s: expected a duration"),
    ('"0d"', "lookup_deadline_inheritance_s: must be at least 1"),
    ('true', "lookup_deadline_inheritance_s: expected a duration"),
])
def test_a_bad_duration_is_named(tmp_path, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_settings(environ={}, config_file=write(tmp_path, f"lookup_deadline_inheritance_s = {value}\n"))
