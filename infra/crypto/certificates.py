"""X.509 material made with ``cryptography``: a CA, certificates it issues, PKCS#12 key stores, private files.

Shared by the Kafka cluster's TLS (``infra.platform.cluster_tls``) and the bank HTTP channel's
(``connectors.channel_tls``): ECDSA P-256 keys, SHA-256 signatures, the subject ``O=Renkei,CN=<name>``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

ORGANIZATION = "Renkei"
CA_DAYS = 3650


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write atomically, created with ``mode`` (a secret is never readable by others, not even briefly)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)  # os.open's mode is filtered by the umask
    os.replace(tmp, path)


def x509_name(common_name: str) -> x509.Name:
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


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def certificate_authority(common_name: str, days: int = CA_DAYS) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509_name(common_name)
    now = utc_now()
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
    now = utc_now()
    cert = (x509.CertificateBuilder().subject_name(x509_name(common_name)).issuer_name(ca_cert.subject)
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


__all__ = ["CA_DAYS", "ORGANIZATION", "certificate_authority", "issue", "pkcs12_bytes", "subject_alternative_names",
           "utc_now", "write_file", "x509_name"]
