"""Settings: the one typed configuration object, built once and passed down.

Why this file is long: the one typed configuration object, its sources (defaults, file, environment, flags)
and where each value came from.

Sources, lowest to highest precedence: built-in defaults < TOML file
(``--config`` or ``RENKEI_CONFIG``) < ``RENKEI_*`` environment variables <
CLI flags.  No other module reads the environment.  An unset Kafka bootstrap
or PostgreSQL DSN means "use the embedded stack".
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.core.errors import ConfigError

ENV_PREFIX = "RENKEI_"


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach Kafka. ``bootstrap`` empty = the embedded broker (``broker`` says which)."""

    bootstrap: str = ""
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    sasl_mechanism: str = ""  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    # A file holding the password (a mounted secret), read when no password is given: never on a command line.
    sasl_password_file: str = ""
    # A folder of ``<principal>.password`` files (0600; `renkei cluster up` writes one): the processes the
    # platform starts for a participant log in as that participant (:meth:`Settings.as_principal`).
    credentials_dir: str = ""
    topic_prefix: str = "renkei"
    replication: int = 1  # replication factor for created topics (3 on a production cluster)
    # Which broker: `auto` (the embedded Apache Kafka when Java 17+ is found, else Tansu), `kafka`
    # or `tansu`. Clients of Tansu work around its quirks (infra.platform.kafka); a configured bootstrap with
    # `auto` is taken to be Apache Kafka.
    broker: str = "auto"
    # How long the broker may hold a fetch that found nothing (infra.platform.kafka.fetch_wait_ms). Apache
    # Kafka answers a held fetch as soon as data arrives, so this is a long poll that costs no latency.
    fetch_wait_ms: int = 500
    # Tansu answers a held fetch only when the wait ends, so every hop pays it: short there, longer
    # for a consumer of many inboxes, whose every fetch costs the broker and the client per partition.
    tansu_fetch_wait_ms: int = 20
    tansu_fetch_wait_max_ms: int = 250

    def environment(self) -> dict[str, str]:
        """``RENKEI_KAFKA_*`` variables that hand a child process this security configuration.

        Secrets go by environment or by file, never on a command line (``ps`` shows those). The
        password itself is passed only when no file holds it; an empty value clears a password the
        parent's own environment may carry (the child logs in as its own principal).
        """
        if self.security_protocol == "PLAINTEXT":
            return {}
        env = {"RENKEI_KAFKA_SECURITY_PROTOCOL": self.security_protocol,
               "RENKEI_KAFKA_SSL_CAFILE": self.ssl_cafile, "RENKEI_KAFKA_SSL_CERTFILE": self.ssl_certfile,
               "RENKEI_KAFKA_SSL_KEYFILE": self.ssl_keyfile, "RENKEI_KAFKA_SASL_MECHANISM": self.sasl_mechanism,
               "RENKEI_KAFKA_SASL_USERNAME": self.sasl_username,
               "RENKEI_KAFKA_SASL_PASSWORD_FILE": self.sasl_password_file,
               "RENKEI_KAFKA_SASL_PASSWORD": "" if self.sasl_password_file else self.sasl_password,
               "RENKEI_KAFKA_CREDENTIALS_DIR": self.credentials_dir,
               "RENKEI_KAFKA_REPLICATION": str(self.replication)}
        return env

    @property
    def tansu(self) -> bool:
        """The broker is Tansu (the no-Java fallback): clients apply its workarounds."""
        return self.broker == "tansu"

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients (bootstrap and security)."""
        opts: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            opts["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile or None,
                certfile=self.ssl_certfile or None,
                keyfile=self.ssl_keyfile or None,
            )
        if self.security_protocol.startswith("SASL"):
            opts["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            opts["sasl_plain_username"] = self.sasl_username
            opts["sasl_plain_password"] = self.sasl_password
        return opts


@dataclass(frozen=True)
class Settings:
    """Everything a Renkei process needs to know, typed and immutable."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    # PostgreSQL: where the server is. Its user, if any, is the administrator (the embedded stack's
    # superuser), used only to create the component roles; components connect as their own role
    # (infra.platform.pgdsn), with secrets from a password file, never from the DSN.
    pg_dsn: str = field(default="", repr=False)
    pg_dsn_file: Path | None = None  # a file holding the DSN (a mounted secret), read when no DSN is given
    pg_passfile: Path | None = None  # the component roles' secrets; default <state_dir>/secrets/pg-roles.pgpass
    pg_role_prefix: str = "renkei_"  # component roles: renkei_hub, renkei_registry, ... (infra.platform.pglayout)
    pg_schema_prefix: str = ""  # component schemas: <prefix>hub, ...; a namespace for tests and benchmarks
    state_dir: Path = Path(".renkei")
    participant_id: str = "hub"
    keys_dir: Path | None = None  # default: <state_dir>/keys
    keys_passphrase_file: Path | None = None  # default: <keys_dir>/../secrets/keys.passphrase (generated, embedded)
    keys_passphrase: str = field(default="", repr=False)  # RENKEI_KEYS_PASSPHRASE; wins over the file
    participants_file: Path | None = None  # default: the built-in demo set
    banks: int = 5  # simulated banks in the built-in participant set
    embedded_kafka_port: int = 0  # 0 = pick a free loopback port
    embedded_pg_port: int = 0
    embedded_java: str = ""  # java executable for the embedded Apache Kafka; "" = JAVA_HOME's, else PATH's
    embedded_kafka_cache: Path | None = None  # fetched Kafka jars; default ~/.cache/renkei (XDG_CACHE_HOME)
    embedded_kafka_heap_mb: int = 512
    hub_workers: int = 1
    # Per verified sender and hub worker (infra.domain.ratelimit): a sustained rate and a burst a batch job
    # may send at once; beyond them the hub refuses with RATE_LIMITED.  0 = no limit.
    hub_sender_rate: int = 200
    hub_sender_burst: int = 20_000
    log_level: str = "INFO"
    # Where this worker process serves /metrics and /health (infra.metrics): an address and a port; 0 = a free
    # port. `renkei up` gives its i-th worker ops_port + i when ops_port is set (docs/operations.md).
    ops_host: str = "127.0.0.1"
    ops_port: int = 0
    # "text" for people, "json" for a log pipeline: one object per line with the message and correlation
    # ids, reason code and trace id (infra.logs).
    log_format: str = "text"
    # The registry closes an existence check (口座実在性確認) no bank answered within this many seconds
    # with a TIMEOUT result to whoever asked (streams.registry.expire_checks): no request hangs forever.
    registry_check_deadline_s: int = 3600
    # Provision records (infra.records.checkpoints, infra.records.provisions): a signed checkpoint of the chain heads is made
    # when this many records wait for one, or this many seconds after the last one; records are kept this
    # many years (the 住基ネット disclosure period) before `renkei records purge` may remove them.
    records_checkpoint_interval_s: int = 10
    records_checkpoint_records: int = 1000
    records_retention_years: int = 7
    # 相続時・災害時照会 (docs/lookups.md): how long the hub gathers the banks' answers to a lookup, per kind — the
    # lookup's own deadline, never an envelope's lifetime, so a bank answering in its next daily cycle still
    # counts —, how often DICJ re-sends the inquiry to the banks that have not answered yet, and how long DICJ
    # gathers the banks' answers to a numbering request (付番申出) it passes on.  Durations: seconds, or a
    # number with a unit (``90s``, ``30m``, ``36h``, ``10d``).
    lookup_deadline_inheritance_s: int = 10 * 86_400
    lookup_deadline_disaster_s: int = 3 * 86_400
    lookup_reminder_interval_s: int = 86_400
    numbering_deadline_s: int = 3 * 86_400

    @property
    def embedded_kafka(self) -> bool:
        return not self.kafka.bootstrap

    @property
    def embedded_pg(self) -> bool:
        return not self.pg_dsn

    @property
    def resolved_pg_passfile(self) -> Path:
        return self.pg_passfile if self.pg_passfile is not None else self.state_dir / "secrets" / "pg-roles.pgpass"

    @property
    def resolved_keys_dir(self) -> Path:
        return self.keys_dir if self.keys_dir is not None else self.state_dir / "keys"

    @property
    def resolved_kafka_cache(self) -> Path:
        return self.embedded_kafka_cache if self.embedded_kafka_cache is not None else DEFAULT_CACHE

    def with_endpoints(self, *, bootstrap: str, pg_dsn: str, broker: str | None = None) -> Settings:
        """A copy pointing at concrete endpoints (e.g. those the embedded stack started).

        ``broker`` is the kind the embedded stack runs (``kafka`` or ``tansu``), so clients and
        workers know whether Tansu's workarounds apply.
        """
        kafka = dataclasses.replace(self.kafka, bootstrap=bootstrap, broker=broker or self.kafka.broker)
        return dataclasses.replace(self, kafka=kafka, pg_dsn=pg_dsn)

    def as_principal(self, principal: str) -> Settings:
        """A copy that logs in to Kafka as ``principal`` (``infra.platform.acls`` names them).

        Only with SASL and a credentials folder (``kafka.credentials_dir``, e.g. `renkei cluster up`'s):
        then its user name and ``<principal>.password`` file. Otherwise the settings as they are: the
        embedded broker knows no principals, and a deployment that gives each process its own
        credentials configures them directly.
        """
        k = self.kafka
        if not k.security_protocol.startswith("SASL") or not k.credentials_dir:
            return self
        password_file = Path(k.credentials_dir) / f"{principal}.password"
        kafka = dataclasses.replace(k, sasl_username=principal, sasl_password_file=str(password_file),
                                    sasl_password=_read_secret(password_file, "kafka_credentials_dir"))
        return dataclasses.replace(self, kafka=kafka)


class Duration(int):
    """Marker type of duration settings: whole seconds, given as ``90`` or with a unit (``90s``, ``30m``,
    ``36h``, ``10d``)."""


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_duration(value: Any) -> int:
    """Seconds from ``90``, ``"90"``, ``"90s"``, ``"30m"``, ``"36h"`` or ``"10d"`` (ValueError otherwise)."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a number with a unit")
    if isinstance(value, int):
        return value
    text = str(value).strip().lower()
    unit = _UNITS.get(text[-1:], None)
    number = text[:-1] if unit is not None else text
    if not number.isdigit():
        raise ValueError("a duration is a number of seconds or a number with a unit")
    return int(number) * (unit or 1)


# Flat key -> (section path, type). Flat keys are what env vars and CLI flags use.
_FIELDS: dict[str, tuple[tuple[str, ...], type]] = {
    "kafka_bootstrap": (("kafka", "bootstrap"), str),
    "kafka_security_protocol": (("kafka", "security_protocol"), str),
    "kafka_ssl_cafile": (("kafka", "ssl_cafile"), str),
    "kafka_ssl_certfile": (("kafka", "ssl_certfile"), str),
    "kafka_ssl_keyfile": (("kafka", "ssl_keyfile"), str),
    "kafka_sasl_mechanism": (("kafka", "sasl_mechanism"), str),
    "kafka_sasl_username": (("kafka", "sasl_username"), str),
    "kafka_sasl_password": (("kafka", "sasl_password"), str),
    "kafka_sasl_password_file": (("kafka", "sasl_password_file"), str),
    "kafka_credentials_dir": (("kafka", "credentials_dir"), str),
    "kafka_topic_prefix": (("kafka", "topic_prefix"), str),
    "kafka_replication": (("kafka", "replication"), int),
    "broker": (("kafka", "broker"), str),
    "kafka_fetch_wait_ms": (("kafka", "fetch_wait_ms"), int),
    "kafka_tansu_fetch_wait_ms": (("kafka", "tansu_fetch_wait_ms"), int),
    "kafka_tansu_fetch_wait_max_ms": (("kafka", "tansu_fetch_wait_max_ms"), int),
    "pg_dsn": (("pg_dsn",), str),
    "pg_dsn_file": (("pg_dsn_file",), Path),
    "pg_passfile": (("pg_passfile",), Path),
    "pg_role_prefix": (("pg_role_prefix",), str),
    "pg_schema_prefix": (("pg_schema_prefix",), str),
    "state_dir": (("state_dir",), Path),
    "participant_id": (("participant_id",), str),
    "keys_dir": (("keys_dir",), Path),
    "keys_passphrase_file": (("keys_passphrase_file",), Path),
    "keys_passphrase": (("keys_passphrase",), str),
    "participants_file": (("participants_file",), Path),
    "banks": (("banks",), int),
    "embedded_kafka_port": (("embedded_kafka_port",), int),
    "embedded_pg_port": (("embedded_pg_port",), int),
    "embedded_java": (("embedded_java",), str),
    "embedded_kafka_cache": (("embedded_kafka_cache",), Path),
    "embedded_kafka_heap_mb": (("embedded_kafka_heap_mb",), int),
    "hub_workers": (("hub_workers",), int),
    "hub_sender_rate": (("hub_sender_rate",), int),
    "hub_sender_burst": (("hub_sender_burst",), int),
    "log_level": (("log_level",), str),
    "ops_host": (("ops_host",), str),
    "ops_port": (("ops_port",), int),
    "log_format": (("log_format",), str),
    "registry_check_deadline_s": (("registry_check_deadline_s",), int),
    "records_checkpoint_interval_s": (("records_checkpoint_interval_s",), int),
    "records_checkpoint_records": (("records_checkpoint_records",), int),
    "records_retention_years": (("records_retention_years",), int),
    "lookup_deadline_inheritance_s": (("lookup_deadline_inheritance_s",), Duration),
    "lookup_deadline_disaster_s": (("lookup_deadline_disaster_s",), Duration),
    "lookup_reminder_interval_s": (("lookup_reminder_interval_s",), Duration),
    "numbering_deadline_s": (("numbering_deadline_s",), Duration),
}

_PROTOCOLS = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}
LOG_FORMATS = ("text", "json")
BROKERS = ("auto", "kafka", "tansu")
DEFAULT_CACHE = Path.home() / ".cache" / "renkei"


def _read_secret(path: Path, key: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path} ({exc.strerror})") from None


def _flatten_toml(data: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "kafka" and isinstance(value, Mapping):
            for sub, subval in value.items():
                flat[f"kafka_{sub}"] = subval
        elif key == "postgres" and isinstance(value, Mapping):
            for sub, subval in value.items():
                flat[f"pg_{sub}"] = subval
        else:
            flat[key] = value
    unknown = sorted(k for k in flat if k not in _FIELDS)
    if unknown:
        raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
    return flat


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    flat = {}
    for name in _FIELDS:
        env_name = ENV_PREFIX + name.upper()
        if env_name in environ and environ[env_name] != "":
            flat[name] = environ[env_name]
    # Short aliases used by the test harness and documented in the README.
    if "RENKEI_KAFKA_BOOTSTRAP" in environ:
        flat["kafka_bootstrap"] = environ["RENKEI_KAFKA_BOOTSTRAP"]
    if "RENKEI_PG_DSN" in environ:
        flat["pg_dsn"] = environ["RENKEI_PG_DSN"]
    # The usual places of Java and of caches, when Renkei's own keys do not say.
    if "embedded_java" not in flat and environ.get("JAVA_HOME"):
        flat["embedded_java"] = str(Path(environ["JAVA_HOME"]) / "bin" / "java")
    if "embedded_kafka_cache" not in flat and environ.get("XDG_CACHE_HOME"):
        flat["embedded_kafka_cache"] = str(Path(environ["XDG_CACHE_HOME"]) / "renkei")
    return flat


def _coerce(name: str, value: Any) -> Any:
    typ = _FIELDS[name][1]
    try:
        if typ is int:
            out = int(value)
            if out < 0:
                raise ValueError
            return out
        if typ is Duration:
            return parse_duration(value)
        if typ is Path:
            return Path(str(value)).expanduser()
        return str(value)
    except (TypeError, ValueError):
        expected = "a duration (90, 90s, 30m, 36h, 10d)" if typ is Duration else typ.__name__
        raise ConfigError(f"{name}: expected {expected}") from None


def load_settings(
    *,
    cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Build :class:`Settings` from defaults < TOML file < environment < CLI flags.

    ``cli`` holds flat keys (see ``_FIELDS``); ``None`` values are ignored so
    argparse namespaces can be passed through unchanged.
    """
    merged: dict[str, Any] = {}
    for layer in _layers(cli, environ, config_file):
        merged.update(layer.values)

    kafka_kwargs: dict[str, Any] = {}
    top_kwargs: dict[str, Any] = {}
    for name, raw in merged.items():
        path, _ = _FIELDS[name]
        value = _coerce(name, raw)
        if path[0] == "kafka":
            kafka_kwargs[path[1]] = value
        else:
            top_kwargs[path[0]] = value
    if kafka_kwargs.get("sasl_password_file") and not kafka_kwargs.get("sasl_password"):
        kafka_kwargs["sasl_password"] = _read_secret(Path(kafka_kwargs["sasl_password_file"]),
                                                     "kafka_sasl_password_file")
    if top_kwargs.get("pg_dsn_file") and not top_kwargs.get("pg_dsn"):
        top_kwargs["pg_dsn"] = _read_secret(top_kwargs["pg_dsn_file"], "pg_dsn_file")
    kafka = KafkaSettings(**kafka_kwargs)
    if kafka.security_protocol not in _PROTOCOLS:
        raise ConfigError(
            f"kafka_security_protocol: must be one of {', '.join(sorted(_PROTOCOLS))}"
        )
    if kafka.security_protocol.startswith("SASL") and not kafka.sasl_username:
        raise ConfigError("kafka_sasl_username: required with a SASL security protocol")
    if kafka.broker not in BROKERS:
        raise ConfigError(f"broker: must be one of {', '.join(BROKERS)}")
    if top_kwargs.get("log_format", "text") not in LOG_FORMATS:
        raise ConfigError(f"log_format: must be one of {', '.join(LOG_FORMATS)}")
    if top_kwargs.get("registry_check_deadline_s", 1) < 1:
        raise ConfigError("registry_check_deadline_s: at least 1 second")
    if kafka.fetch_wait_ms < 1:
        raise ConfigError("kafka_fetch_wait_ms: must be at least 1")
    if not 1 <= kafka.tansu_fetch_wait_ms <= kafka.tansu_fetch_wait_max_ms:
        raise ConfigError(
            "kafka_tansu_fetch_wait_ms: must be at least 1 and at most kafka_tansu_fetch_wait_max_ms")
    for name in ("records_checkpoint_interval_s", "records_checkpoint_records", "records_retention_years",
                 "lookup_deadline_inheritance_s", "lookup_deadline_disaster_s", "lookup_reminder_interval_s",
                 "numbering_deadline_s"):
        if top_kwargs.get(name, 1) < 1:
            raise ConfigError(f"{name}: must be at least 1")
    if top_kwargs.get("ops_port", 0) > 65535:
        raise ConfigError("ops_port: a TCP port (0 = a free one)")
    settings = Settings(kafka=kafka, **top_kwargs)
    if settings.embedded_kafka_heap_mb < 128:
        raise ConfigError("embedded_kafka_heap_mb: must be at least 128")
    return settings


# --- provenance: where each effective value came from (``renkei config show``) ------------------


@dataclass(frozen=True)
class _Layer:
    source: str  # file | environment | flag
    values: dict[str, Any]
    file: Path | None = None


def _layers(cli: Mapping[str, Any] | None, environ: Mapping[str, str] | None,
            config_file: Path | None) -> list[_Layer]:
    """The configuration sources above the defaults, lowest precedence first (what load_settings merges)."""
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (cli or {}).items() if v is not None and k in _FIELDS}
    if config_file is None and environ.get("RENKEI_CONFIG"):
        config_file = Path(environ["RENKEI_CONFIG"])
    layers = []
    if config_file is not None:
        try:
            with open(config_file, "rb") as fh:
                layers.append(_Layer("file", _flatten_toml(tomllib.load(fh)), Path(config_file)))
        except FileNotFoundError:
            raise ConfigError(f"configuration file not found: {config_file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {config_file} is not valid TOML: {exc}") from None
    layers.append(_Layer("environment", _from_env(environ)))
    layers.append(_Layer("flag", flags))
    return layers


@dataclass(frozen=True)
class SettingSource:
    """Where one setting's effective value came from."""

    key: str  # the flat key (kafka_bootstrap, state_dir, ...)
    source: str  # default | file | environment | flag
    origin: str  # the file's path, the environment variable's name, or "" (default, flag)
    secret: bool  # never print the value (a password, a passphrase; a DSN is printed without its secrets)


def setting_keys() -> list[str]:
    """Every flat configuration key, in the order of the settings table."""
    return list(_FIELDS)


def setting_value(settings: Settings, key: str) -> Any:
    """The effective value of flat ``key`` in ``settings``."""
    path, _ = _FIELDS[key]
    target: Any = settings
    for part in path:
        target = getattr(target, part)
    return target


def setting_sources(
    *,
    cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> dict[str, SettingSource]:
    """For every key, the layer whose value :func:`load_settings` keeps (same arguments, same precedence)."""
    environ = os.environ if environ is None else environ
    found = {key: SettingSource(key, "default", "", _is_secret(key)) for key in _FIELDS}
    for layer in _layers(cli, environ, config_file):
        for key in layer.values:
            origin = ""
            if layer.source == "file":
                origin = str(layer.file)
            elif layer.source == "environment":
                origin = _env_origin(key, environ)
            found[key] = SettingSource(key, layer.source, origin, _is_secret(key))
    return found


_DERIVED_FROM = {"embedded_java": "JAVA_HOME", "embedded_kafka_cache": "XDG_CACHE_HOME"}


def _env_origin(key: str, environ: Mapping[str, str]) -> str:
    name = ENV_PREFIX + key.upper()
    return name if environ.get(name) else _DERIVED_FROM.get(key, name)


def _is_secret(key: str) -> bool:
    """Secrets are the fields kept out of ``repr`` (``field(repr=False)``): one marking for both."""
    path, _ = _FIELDS[key]
    owner = KafkaSettings if path[0] == "kafka" else Settings
    return not next(f for f in dataclasses.fields(owner) if f.name == path[-1]).repr
