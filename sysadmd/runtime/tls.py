"""TLS for the listeners: a self-signed certificate made once, or configured files.

The certificate is generated with ``cryptography`` on first start and reused after
that, so clients can pin its SHA-256 fingerprint (upstream made a new one on every
start).  Served through ``twisted.internet.ssl`` with TLS 1.2 as the minimum.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
from typing import Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from twisted.internet import ssl

from sysadmd.runtime.crypto import generate_private_key, private_pem
from sysadmd.runtime.statedir import write_private_file


def make_self_signed(common_name: str, organization: str = "SysAdm") -> Tuple[bytes, bytes]:
    """Return ``(cert_pem, key_pem)`` for a new RSA-2048 self-signed certificate."""
    key = generate_private_key(2048)
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    alt = [x509.DNSName(common_name), x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), private_pem(key)


def ensure_certificate(state_dir: str, basename: str) -> Tuple[str, str, bool]:
    """Make ``<basename>.crt``/``.key`` in *state_dir* unless both exist.

    Returns ``(cert_path, key_path, created)``.
    """
    cert_path = os.path.join(state_dir, basename + ".crt")
    key_path = os.path.join(state_dir, basename + ".key")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path, False
    cert_pem, key_pem = make_self_signed(socket.gethostname() or "localhost")
    write_private_file(key_path, key_pem)
    write_private_file(cert_path, cert_pem)
    return cert_path, key_path, True


def fingerprint_sha256(cert_pem: bytes) -> str:
    """``AB:CD:…`` SHA-256 fingerprint of a PEM certificate's DER form."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return fingerprint_der(der)


def fingerprint_der(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def server_context(cert_path: str, key_path: str) -> ssl.CertificateOptions:
    """TLS 1.2+ server options for the certificate and key files (no client certificates)."""
    with open(cert_path, "rb") as f:
        cert_pem = f.read()
    with open(key_path, "rb") as f:
        key_pem = f.read()
    cert = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    return ssl.CertificateOptions(
        privateKey=cert.privateKey.original,
        certificate=cert.original,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
