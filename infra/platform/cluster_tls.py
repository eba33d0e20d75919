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

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from infra.crypto.certificates import ORGANIZATION, certificate_authority, issue, pkcs12_bytes, write_file

BROKER_CN = "broker"
"""The common name of every broker certificate: ``ssl.principal.mapping.rules`` turns it into ``User:broker``."""
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


__all__ = ["BROKER_CN", "ClusterTls", "NodeKeystore"]
