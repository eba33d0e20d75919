"""The secured cluster's pure parts: its TLS material, SCRAM password files, layout and the principals' logins.

The cluster itself runs in tests/integration/test_cluster.py; these check what it is given.
"""

from __future__ import annotations

import stat

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from infra.core.settings import KafkaSettings, Settings
from infra.platform.cluster import ClusterLayout, Credentials, security_properties
from infra.platform.cluster_tls import BROKER_CN, ClusterTls


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_brokers_key_stores_open_with_their_password_and_name_the_broker_and_its_hosts(tmp_path):
    tls = ClusterTls(tmp_path / "tls")
    tls.ensure([1, 2], ["127.0.0.1", "localhost"])
    ca = x509.load_pem_x509_certificate(tls.ca_file.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for node in (1, 2):
        store = tls.keystore(node)
        assert _mode(store.path) == 0o600
        key, cert, chain = pkcs12.load_key_and_certificates(store.path.read_bytes(), store.password.encode())
        assert key is not None and cert is not None and [c.subject for c in chain] == [ca.subject]
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == BROKER_CN
        assert cert.issuer == ca.subject
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert _mode(tls.ca_key_file) == 0o600 and _mode(tls.password_file) == 0o600
    # A second ensure keeps what exists (a running cluster's certificates do not change under it).
    before = tls.keystore(1).path.read_bytes()
    tls.ensure([1, 2], ["127.0.0.1", "localhost"])
    assert tls.keystore(1).path.read_bytes() == before


def test_scram_passwords_are_private_generated_once_and_distinct(tmp_path):
    creds = Credentials(tmp_path / "credentials")
    assert creds.ensure(["admin", "hub"]) == ["admin", "hub"]
    assert creds.ensure(["admin", "hub", "portal"]) == ["portal"]
    assert _mode(creds.folder) == 0o700 and all(_mode(creds.file(u)) == 0o600 for u in creds.users())
    passwords = {creds.password(u) for u in creds.users()}
    assert len(passwords) == 3 and all(len(p) >= 24 for p in passwords)


def test_the_layout_survives_a_restart_and_fixed_ports_follow_the_base(tmp_path):
    layout = ClusterLayout.new(base_port=40000)
    assert {n: (p.port, p.controller_port) for n, p in layout.ports.items()} == {
        1: (40000, 40001), 2: (40002, 40003), 3: (40004, 40005)}
    assert ClusterLayout.from_json(layout.to_json()) == layout
    assert layout.bootstrap == "127.0.0.1:40000,127.0.0.1:40002,127.0.0.1:40004"


def test_the_cluster_is_default_deny_with_only_the_brokers_and_admin_as_super_users():
    props = security_properties()
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:broker;User:admin"
    assert props["listener.security.protocol.map"] == "CLIENT:SASL_SSL,CONTROLLER:SSL"
    assert (props["min.insync.replicas"], props["default.replication.factor"]) == ("2", "3")
    assert "PLAINTEXT" not in props["listener.security.protocol.map"].replace("SASL_SSL", "")


def test_a_worker_logs_in_as_its_own_principal_with_its_password_from_a_file(tmp_path):
    creds = Credentials(tmp_path)
    creds.ensure(["admin", "hub"])
    admin = KafkaSettings(bootstrap="127.0.0.1:1", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                          sasl_username="admin", sasl_password=creds.password("admin"),
                          sasl_password_file=str(creds.file("admin")), credentials_dir=str(tmp_path))
    hub = Settings(kafka=admin).as_principal("hub").kafka
    assert (hub.sasl_username, hub.sasl_password) == ("hub", creds.password("hub"))
    env = hub.environment()
    # The child gets the file, never the password itself (an environment is readable by the same user only,
    # but a file is what a deployment mounts as a secret).
    assert env["RENKEI_KAFKA_SASL_USERNAME"] == "hub" and env["RENKEI_KAFKA_SASL_PASSWORD"] == ""
    assert env["RENKEI_KAFKA_SASL_PASSWORD_FILE"] == str(creds.file("hub"))
    assert creds.password("hub") not in " ".join(env.values())
    # Without SASL there are no principals: the settings stay as they are.
    plain = Settings(kafka=KafkaSettings(bootstrap="127.0.0.1:1", credentials_dir=str(tmp_path)))
    assert plain.as_principal("hub") is plain and plain.kafka.environment() == {}
