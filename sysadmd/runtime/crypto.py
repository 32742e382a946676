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
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

ALPHANUMERIC = string.ascii_letters + string.digits


class KeyFormatError(ValueError):
    """The bytes are not a PEM public key, certificate or private key we can use."""


class PrivateKeyGiven(KeyFormatError):
    """A private key where a public key is expected (never stored, never sent)."""


class PassphraseNeeded(KeyFormatError):
    """An encrypted private key and no (or a wrong) passphrase."""


class KeyPolicyError(KeyFormatError):
    """A readable RSA key that may not log in (size or public exponent out of policy)."""


# Keys that may be registered for logins (rpc/auth_ssl).  Smaller moduli are weak; larger
# ones, and exponents other than 65537, make every verification expensive: a key with a
# 3,000-bit exponent costs thousands of times a normal one, and logins try keys.
MIN_LOGIN_KEY_BITS = 2048
MAX_LOGIN_KEY_BITS = 4096
LOGIN_KEY_EXPONENT = 65537
LOGIN_KEY_RULE = f"RSA keys of {MIN_LOGIN_KEY_BITS} to {MAX_LOGIN_KEY_BITS} bits with public exponent {LOGIN_KEY_EXPONENT}"


def random_token(length: int = 40) -> str:
    """A random ``[A-Za-z0-9]`` string from :mod:`secrets` (upstream's token alphabet)."""
    return "".join(secrets.choice(ALPHANUMERIC) for _ in range(length))


def public_pem(key: Union[rsa.RSAPublicKey, rsa.RSAPrivateKey]) -> str:
    """The SPKI PEM text of *key* (``-----BEGIN PUBLIC KEY-----``, 64 columns, final newline)."""
    if isinstance(key, rsa.RSAPrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


PRIVATE_PEM_MARKERS = (b"-----BEGIN RSA PRIVATE KEY-----", b"-----BEGIN PRIVATE KEY-----",
                       b"-----BEGIN ENCRYPTED PRIVATE KEY-----", b"-----BEGIN EC PRIVATE KEY-----",
                       b"-----BEGIN DSA PRIVATE KEY-----")
OPENSSH_PRIVATE_MARKER = b"-----BEGIN OPENSSH PRIVATE KEY-----"


def private_key_kind(data: Union[bytes, str]) -> Optional[str]:
    """``"pem"`` or ``"openssh"`` when *data* holds a private key, else ``None``."""
    raw = data.encode("utf-8", "replace") if isinstance(data, str) else bytes(data)
    if OPENSSH_PRIVATE_MARKER in raw:
        return "openssh"
    if any(marker in raw for marker in PRIVATE_PEM_MARKERS):
        return "pem"
    return None


def extract_public_command(kind: str, path: str = "KEY") -> str:
    """The shell command that writes the public half of the private key in *path*."""
    if kind == "openssh":
        return f"ssh-keygen -e -m PKCS8 -f {path} > {path}.pub"
    return f"openssl rsa -in {path} -pubout -out {path}.pub"


def private_key_refusal(kind: str, path: str = "KEY") -> str:
    return ("this is a private key, and only a public key is accepted here (a private key is never stored); "
            f"extract its public half with `{extract_public_command(kind, path)}` and give that file")


def load_public_key(data: Union[bytes, str], *, allow_private: bool = False) -> rsa.RSAPublicKey:
    """A public RSA key from a PEM public key, a PEM/DER X.509 certificate or an OpenSSH
    ``ssh-rsa`` line.  A private key raises :class:`PrivateKeyGiven` (saying how to extract
    the public half) unless *allow_private*, where its public half is returned."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    kind = private_key_kind(raw)
    if kind is not None:
        if not allow_private:
            raise PrivateKeyGiven(private_key_refusal(kind))
        return load_private_key(raw).public_key()
    loaders = (
        lambda b: serialization.load_pem_public_key(b),
        lambda b: x509.load_pem_x509_certificate(b).public_key(),
        lambda b: x509.load_der_x509_certificate(b).public_key(),
        lambda b: serialization.load_der_public_key(b),
        lambda b: serialization.load_ssh_public_key(b.strip()),
    )
    for loader in loaders:
        try:
            key = loader(raw)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
        if not isinstance(key, rsa.RSAPublicKey):
            raise KeyFormatError("only RSA keys are supported (upstream peers sign with RSA)")
        return key
    raise KeyFormatError("not a PEM public key, X.509 certificate or OpenSSH ssh-rsa public key")


def normalized_pem(data: Union[bytes, str]) -> str:
    """Canonical SPKI PEM for any accepted key or certificate input."""
    return public_pem(load_public_key(data))


def login_key_problem(key: rsa.RSAPublicKey) -> Optional[str]:
    """Why *key* may not log in, or ``None`` if it is within :data:`LOGIN_KEY_RULE`."""
    bits = key.key_size
    exponent = key.public_numbers().e
    if not MIN_LOGIN_KEY_BITS <= bits <= MAX_LOGIN_KEY_BITS:
        return f"an RSA key of {bits} bits is refused: only {LOGIN_KEY_RULE} are accepted"
    if exponent != LOGIN_KEY_EXPONENT:
        shown = str(exponent) if exponent.bit_length() <= 64 else f"a {exponent.bit_length()}-bit number"
        return f"an RSA key with public exponent {shown} is refused: only {LOGIN_KEY_RULE} are accepted"
    return None


def login_key_pem(data: Union[bytes, str]) -> str:
    """Canonical SPKI PEM of a key that may log in; :class:`KeyPolicyError` if it may not."""
    key = load_public_key(data)
    problem = login_key_problem(key)
    if problem is not None:
        raise KeyPolicyError(problem)
    return public_pem(key)


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


def is_md5_checksum(text: str) -> bool:
    """Whether *text* has the shape of :func:`md5_checksum` output (24 base64 characters)."""
    if len(text) != 24 or not text.endswith("=="):
        return False
    try:
        return len(base64.b64decode(text, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def md5_checksum(pem: str) -> str:
    """``base64(MD5(PEM text))``: the 24-character key checksum used for pairing."""
    return base64.b64encode(hashlib.md5(pem.encode("ascii")).digest()).decode("ascii")


def sign_challenge(private_key: rsa.RSAPrivateKey, challenge: str) -> str:
    """base64 of the raw PKCS#1 v1.5 signature of *challenge* (what upstream peers send)."""
    sig = private_key.sign(challenge.encode("latin-1"), padding.PKCS1v15(), utils.NoDigestInfo())
    return base64.b64encode(sig).decode("ascii")


def decode_signature(encrypted_b64: str) -> Optional[bytes]:
    """The signature bytes of a base64 answer, or ``None`` if it cannot be one of a key
    within the login rules (bad base64, or a length no such key's signature has)."""
    if not isinstance(encrypted_b64, str) or len(encrypted_b64) > 2 * (MAX_LOGIN_KEY_BITS // 8) + 64:
        return None
    try:
        sig = base64.b64decode(encrypted_b64, validate=False)
    except (binascii.Error, ValueError):
        return None
    if not (MIN_LOGIN_KEY_BITS + 7) // 8 <= len(sig) <= (MAX_LOGIN_KEY_BITS + 7) // 8:
        return None  # a signature is as long as its key's modulus
    return sig


def recover_raw(public_key: rsa.RSAPublicKey, sig: bytes) -> Optional[bytes]:
    """The bytes the raw PKCS#1 v1.5 signature *sig* carries, or ``None`` if it does not verify."""
    if len(sig) != (public_key.key_size + 7) // 8:
        return None
    try:
        return public_key.recover_data_from_signature(sig, padding.PKCS1v15(), None)
    except (InvalidSignature, ValueError):
        return None


def recover_signed(public_key: rsa.RSAPublicKey, encrypted_b64: str) -> Optional[bytes]:
    """The bytes a base64 raw PKCS#1 v1.5 signature carries, or ``None`` if it does not verify."""
    try:
        sig = base64.b64decode(encrypted_b64, validate=False)
    except (binascii.Error, ValueError):
        return None
    return recover_raw(public_key, sig)


def generate_private_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def private_key_encrypted(data: bytes) -> bool:
    """Whether the private key in *data* needs a passphrase to be read."""
    try:
        _load_any_private(data, None)
    except PassphraseNeeded:
        return True
    except KeyFormatError:
        return False
    return False


def _load_any_private(data: bytes, password: Optional[bytes]):
    raw = bytes(data)
    openssh = OPENSSH_PRIVATE_MARKER in raw
    try:
        if openssh:
            return serialization.load_ssh_private_key(raw, password=password)
        return serialization.load_pem_private_key(raw, password=password)
    except TypeError as e:
        # cryptography: "Password was not given but private key is encrypted" (or the
        # reverse: a passphrase for a key that has none).
        if "not encrypted" in str(e):
            return _load_any_private(raw, None)
        raise PassphraseNeeded("the private key is encrypted; a passphrase is needed") from None
    except ValueError as e:
        if password is not None and ("decrypt" in str(e).lower() or "bad" in str(e).lower() or "incorrect" in str(e).lower()):
            raise PassphraseNeeded("wrong passphrase for the encrypted private key") from None
        if password is not None and private_key_kind(raw) is not None:
            raise PassphraseNeeded(f"cannot decrypt the private key (wrong passphrase?): {e}") from None
        raise KeyFormatError("not an RSA private key in PEM (PKCS#1 `BEGIN RSA PRIVATE KEY` or PKCS#8 "
                             f"`BEGIN PRIVATE KEY`) or OpenSSH format ({e})") from None
    except UnsupportedAlgorithm as e:
        if openssh and "bcrypt" in str(e):
            raise KeyFormatError("an encrypted OpenSSH private key needs the Python module bcrypt, which is not "
                                 "installed; convert the key to encrypted PEM with `ssh-keygen -p -m PEM -f KEY` "
                                 "(it keeps the passphrase)") from None
        raise KeyFormatError(f"unsupported private key ({e})") from None


def load_private_key(data: bytes, password: Optional[Union[bytes, str]] = None) -> rsa.RSAPrivateKey:
    """An RSA private key from PEM (PKCS#1 or PKCS#8, encrypted or not) or OpenSSH format.
    An encrypted key without (or with a wrong) *password* raises :class:`PassphraseNeeded`."""
    if isinstance(password, str):
        password = password.encode("utf-8")
    key = _load_any_private(data, password or None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFormatError("only RSA private keys are supported")
    return key
