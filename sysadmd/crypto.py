"""RSA key material as upstream SysAdm uses it, with ``cryptography``.

Upstream identifies a key by its SubjectPublicKeyInfo PEM text: it stores
``base64(PEM)`` and pairs peers by ``base64(MD5(PEM))``.  Challenges are answered with
a *raw* PKCS#1 v1.5 type-1 signature of the challenge bytes (no hash, no DigestInfo),
what OpenSSL's ``RSA_private_encrypt`` produces.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import string
from typing import Optional, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

ALPHANUMERIC = string.ascii_letters + string.digits


class KeyFormatError(ValueError):
    """The bytes are not a PEM public key, certificate or private key we can use."""


def random_token(length: int = 40) -> str:
    """A random ``[A-Za-z0-9]`` string from :mod:`secrets` (upstream's token alphabet)."""
    return "".join(secrets.choice(ALPHANUMERIC) for _ in range(length))


def public_pem(key: Union[rsa.RSAPublicKey, rsa.RSAPrivateKey]) -> str:
    """The SPKI PEM text of *key* (``-----BEGIN PUBLIC KEY-----``, 64 columns, final newline)."""
    if isinstance(key, rsa.RSAPrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def load_public_key(data: Union[bytes, str]) -> rsa.RSAPublicKey:
    """A public RSA key from PEM public key, PEM/DER X.509 certificate or PEM private key."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    loaders = (
        lambda b: serialization.load_pem_public_key(b),
        lambda b: x509.load_pem_x509_certificate(b).public_key(),
        lambda b: x509.load_der_x509_certificate(b).public_key(),
        lambda b: serialization.load_der_public_key(b),
        lambda b: serialization.load_pem_private_key(b, password=None).public_key(),
    )
    for loader in loaders:
        try:
            key = loader(raw)
        except (ValueError, TypeError):
            continue
        if not isinstance(key, rsa.RSAPublicKey):
            raise KeyFormatError("only RSA keys are supported (upstream peers sign with RSA)")
        return key
    raise KeyFormatError("not a PEM public key, X.509 certificate or RSA private key")


def normalized_pem(data: Union[bytes, str]) -> str:
    """Canonical SPKI PEM for any accepted key or certificate input."""
    return public_pem(load_public_key(data))


def stored_form(pem: str) -> str:
    """Upstream's storage form of a key: ``base64(PEM text)``."""
    return base64.b64encode(pem.encode("ascii")).decode("ascii")


def pem_from_stored(stored: str) -> str:
    """Inverse of :func:`stored_form`; raises :class:`KeyFormatError` for bad input."""
    try:
        pem = base64.b64decode(stored.strip(), validate=False).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise KeyFormatError("pub_key is not base64 of a PEM public key") from None
    return normalized_pem(pem)


def md5_checksum(pem: str) -> str:
    """``base64(MD5(PEM text))``: the 24-character key checksum used for pairing."""
    return base64.b64encode(hashlib.md5(pem.encode("ascii")).digest()).decode("ascii")


def sign_challenge(private_key: rsa.RSAPrivateKey, challenge: str) -> str:
    """base64 of the raw PKCS#1 v1.5 signature of *challenge* (what upstream peers send)."""
    sig = private_key.sign(challenge.encode("latin-1"), padding.PKCS1v15(), utils.NoDigestInfo())
    return base64.b64encode(sig).decode("ascii")


def recover_signed(public_key: rsa.RSAPublicKey, encrypted_b64: str) -> Optional[bytes]:
    """The bytes a raw PKCS#1 v1.5 signature carries, or ``None`` if it does not verify."""
    try:
        sig = base64.b64decode(encrypted_b64, validate=False)
    except (binascii.Error, ValueError):
        return None
    if len(sig) != (public_key.key_size + 7) // 8:
        return None
    try:
        return public_key.recover_data_from_signature(sig, padding.PKCS1v15(), None)
    except (InvalidSignature, ValueError):
        return None


def generate_private_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def load_private_key(data: bytes) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFormatError(f"not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFormatError("only RSA private keys are supported")
    return key
