"""TLS material of a Kafka cluster: a cluster CA, and one key store per broker issued from it.

Generated with ``cryptography`` (no ``keytool``, no ``openssl`` command):

- ``ca.pem`` (public: every client and broker trusts it) and ``ca.key`` (0600; only needed to issue
  more certificates): an ECDSA P-256 CA, path length 0;
- ``node-<id>.p12`` (0600): the broker's key and certificate chain as a PKCS#12 key store, encrypted
  (PBES2, AES-256, HMAC-SHA256) under the password in ``keystore.password`` (0600). The certificate
  has ``CN=broker`` — the brokers' one principal on the mutual-TLS controller listener — and the
  names and addresses the broker is reached under as subject alternative names, for both server and
  client authentication (a broker is the controller's client).

Java 17 reads these PKCS#12 files as they are (``ssl.keystore.type=PKCS12``) and the CA as a PEM
trust store (``ssl.truststore.type=PEM``); Python and librdkafka clients take ``ca.pem``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

BROKER_CN = "broker"
"""The common name of every broker certificate: ``ssl.principal.mapping.rules`` turns it into ``User:broker``."""
ORGANIZATION = "Renkei"
CA_DAYS = 3650
NODE_DAYS = 397  # what public CAs issue at most; a deployment renews with its own PKI


@dataclass(frozen=True)
class NodeKeystore:
    """A broker's PKCS#12 key store and the password that opens it (key and store share it)."""

    path: Path
    password: str = ""


@dataclass(frozen=True)
class ClusterTls:
    """The files of a cluster's TLS material under one folder (see the module docstring)."""

    folder: Path

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key_file(self) -> Path:
        return self.folder / "ca.key"

    @property
    def password_file(self) -> Path:
        return self.folder / "keystore.password"

    def keystore(self, node_id: int) -> NodeKeystore:
        return NodeKeystore(self.folder / f"node-{node_id}.p12", self.password_file.read_text().strip())

    def ensure(self, node_ids: list[int], hosts: list[str]) -> None:
        """Create what is missing: the CA once, a key store per node (kept while it exists)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        if not self.ca_file.exists() or not self.ca_key_file.exists():
            cert, key = certificate_authority(f"{ORGANIZATION} Kafka cluster CA")
            write_file(self.ca_key_file, key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()), 0o600)
            write_file(self.ca_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        if not self.password_file.exists():
            write_file(self.password_file, secrets.token_urlsafe(24).encode() + b"\n", 0o600)
        ca_cert = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
        ca_key = serialization.load_pem_private_key(self.ca_key_file.read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        password = self.password_file.read_text().strip().encode()
        for node_id in node_ids:
            path = self.folder / f"node-{node_id}.p12"
            if path.exists():
                continue
            cert, key = issue(ca_cert, ca_key, BROKER_CN, hosts,
                              [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], NODE_DAYS)
            write_file(path, pkcs12_bytes(f"node-{node_id}", key, cert, ca_cert, password), 0o600)


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write atomically, created with ``mode`` (a secret is never readable by others, not even briefly)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)  # os.open's mode is filtered by the umask
    os.replace(tmp, path)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def subject_alternative_names(hosts: list[str]) -> list[x509.GeneralName]:
    """Each host as an IP address SAN when it is one, else a DNS name (duplicates dropped)."""
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def certificate_authority(common_name: str, days: int = CA_DAYS) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, common_name: str, hosts: list[str],
          usages: list[x509.ObjectIdentifier], days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """An end-entity certificate for ``hosts`` with the extended key ``usages``, signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(subject_alternative_names(hosts)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def pkcs12_bytes(alias: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, ca_cert: x509.Certificate,
                 password: bytes) -> bytes:
    """A PKCS#12 key store Java 17 opens: PBES2/AES-256 for the key and certificates, an HMAC-SHA256 MAC."""
    encryption = (serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(10_000)
                  .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC).hmac_hash(hashes.SHA256())
                  .build(password))
    return pkcs12.serialize_key_and_certificates(alias.encode(), key, cert, [ca_cert], encryption)


__all__ = ["BROKER_CN", "ClusterTls", "NodeKeystore", "certificate_authority", "issue", "pkcs12_bytes",
           "subject_alternative_names", "write_file"]
