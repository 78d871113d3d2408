"""A certificate authority of the lab's own, for a lab without a public domain (https.ca: local).

homelab makes the CA once (its key stays in the lab's state folder, 0600, and never leaves this machine) and
signs a wildcard certificate for ``*.<domain>`` and ``<domain>`` with it, which Traefik serves as its default
certificate. The user trusts the CA's certificate once (`homelab secrets ca` prints it and where it is); the
wildcard certificate is renewed here, before it expires, by a later deploy.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from homelab.lab.models import Lab
from homelab.paths import state_dir
from homelab.state.files import write_atomic, write_secret

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.x509 import Certificate

CA_DAYS = 3650
LEAF_DAYS = 397  # what browsers accept for a server certificate
RENEW_DAYS = 30


@dataclass(frozen=True)
class LocalTls:
    """The wildcard certificate Traefik serves (PEM) and its key."""

    cert: str
    key: str = field(repr=False)


def ca_dir(lab: Lab) -> Path:
    return state_dir(lab.name) / "ca"


def ca_cert_path(lab: Lab) -> Path:
    """The CA certificate the user trusts once (in a browser or the OS store)."""
    return ca_dir(lab) / "homelab-ca.crt"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key() -> EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ensure_ca(lab: Lab) -> tuple[EllipticCurvePrivateKey, Certificate]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key_path, cert_path = ca_dir(lab) / "homelab-ca.key", ca_cert_path(lab)
    if key_path.exists() and cert_path.exists():
        from cryptography.hazmat.primitives.asymmetric import ec

        loaded = serialization.load_pem_private_key(key_path.read_bytes(), None)
        kept = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if isinstance(loaded, ec.EllipticCurvePrivateKey) and kept.not_valid_after_utc - _now() > dt.timedelta(
            days=LEAF_DAYS
        ):
            return loaded, kept
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"homelab CA for lab {lab.name}")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_secret(key_path, _pem_key(key))
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM).decode())
    return key, cert


def _leaf(domain: str, ca_key: EllipticCurvePrivateKey, ca_cert: Certificate) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = _key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"*.{domain}")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"*.{domain}"), x509.DNSName(domain)]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def local_tls(lab: Lab, domain: str, *, keep: bool = True) -> LocalTls:
    """The wildcard certificate for ``domain`` signed by the lab's CA: the kept one while it is valid for
    ``domain`` more than RENEW_DAYS, else a new one (kept when ``keep``; a preview passes False)."""
    from cryptography import x509

    cert_path, key_path = ca_dir(lab) / "wildcard.crt", ca_dir(lab) / "wildcard.key"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
        if f"*.{domain}" in names and cert.not_valid_after_utc - _now() > dt.timedelta(days=RENEW_DAYS):
            return LocalTls(cert_path.read_text(), key_path.read_text())
    if not keep and not (ca_dir(lab) / "homelab-ca.key").exists():
        # a preview makes no CA: it shows the certificate files as new, with stand-in content
        return LocalTls("(certificate made on the first deploy)\n", "(key made on the first deploy)\n")
    ca_key, ca_cert = _ensure_ca(lab)
    cert_pem, key_pem = _leaf(domain, ca_key, ca_cert)
    if keep:
        write_secret(key_path, key_pem)
        write_atomic(cert_path, cert_pem.decode())
    return LocalTls(cert_pem.decode(), key_pem.decode())
