"""TLS for the bank HTTP channel: a channel CA in the key store, and server certificates issued from it.

The bank HTTP channel is served over TLS only.  Unless the operator gives its own
certificate (``--tls-cert`` / ``--tls-key``, e.g. from the bank network's CA),
the connector issues itself one from the platform's channel CA:

- ``bank-http-ca.pem`` / ``bank-http-ca.key`` in the key store folder: an ECDSA
  P-256 CA (10 years, path length 0), its private key PEM-encrypted under a
  key-store secret (``bank-http-tls.secret``, itself encrypted under the store's
  passphrase).  Banks trust ``bank-http-ca.pem`` for the connector's server.
- ``bank-http-<name>.crt`` / ``.key``: a server certificate (ECDSA P-256, 397
  days, serverAuth) for the names and addresses it is served under; re-issued
  when missing, within 30 days of expiry, not from the current CA, or not
  covering a requested name.

Everything is generated with ``cryptography``.  :func:`client_context` is the
client side: verify the peer against a CA file (or the system's trust store).
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from infra.core.settings import Settings
from infra.crypto.certificates import certificate_authority, issue, subject_alternative_names, utc_now, write_file
from infra.platform.keystore import KeyStore

CA_FILE = "bank-http-ca.pem"
_CA_KEY = "bank-http-ca.key"
_PEM_SECRET = "bank-http-tls"
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class ServerCertificate:
    """A certificate chain file and its (encrypted) private key, ready for ``ssl.SSLContext.load_cert_chain``."""

    cert_file: Path
    key_file: Path
    password: bytes | None = None

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file, password=self.password)
        return context


def client_context(cafile: Path | None = None) -> ssl.SSLContext:
    """Verify the server against ``cafile`` (the system's trust store when None); TLS 1.2 or newer."""
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def channel_ca(settings: Settings) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    """The channel CA (created once): certificate, private key, and the path of its PEM for the banks."""
    store = KeyStore.for_settings(settings)
    password = store.secret(_PEM_SECRET)
    cert_path, key_path = store.dir / CA_FILE, store.dir / _CA_KEY
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key, cert_path
    cert, key = certificate_authority("Renkei bank channel CA")
    write_file(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(password)), 0o600)
    write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key, cert_path


def _covers(cert: x509.Certificate, ca: x509.Certificate, wanted: list[x509.GeneralName]) -> bool:
    if cert.issuer != ca.subject or cert.not_valid_after_utc - RENEW_BEFORE < utc_now():
        return False
    try:
        present = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return all(name in present for name in wanted)


def server_certificate(settings: Settings, name: str, hosts: list[str]) -> ServerCertificate:
    """A server certificate for ``hosts`` (names or addresses) issued from the channel CA; reused while good."""
    ca_cert, ca_key, _ = channel_ca(settings)
    store = KeyStore.for_settings(settings)
    password = store.secret(_PEM_SECRET)
    cert_path, key_path = store.dir / f"bank-http-{name}.crt", store.dir / f"bank-http-{name}.key"
    wanted = subject_alternative_names(hosts)
    if cert_path.exists() and key_path.exists():
        if _covers(x509.load_pem_x509_certificate(cert_path.read_bytes()), ca_cert, wanted):
            return ServerCertificate(cert_path, key_path, password)
    cert, key = issue(ca_cert, ca_key, f"Renkei bank HTTP channel {name}", hosts, [ExtendedKeyUsageOID.SERVER_AUTH],
                      397)
    write_file(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(password)), 0o600)
    write_file(cert_path,
               cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return ServerCertificate(cert_path, key_path, password)


def certificate_hosts(listen_host: str, extra: list[str] | None = None) -> list[str]:
    """The names a connector listening on ``listen_host`` is reached under (loopback always included)."""
    import socket

    hosts = list(extra or [])
    if listen_host in ("0.0.0.0", "::", ""):
        hosts.append(socket.gethostname())
    else:
        hosts.append(listen_host)
    return hosts + ["localhost", "127.0.0.1"]


__all__ = ["CA_FILE", "ServerCertificate", "certificate_hosts", "channel_ca", "client_context", "server_certificate"]
