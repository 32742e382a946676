"""Sealed text: what the bridge stores and relays for our own fleet peers (issue 13 item 6).

A fleet command's payload is sealed to the agent's bridge key; its result, and an emitted
event, to the key they are meant for.  The bridge holds only the sealed text and routing
metadata (docs/protocol.md §8.6).  Both ends use the constructions of the `cryptography`
library, nothing of our own:

* a fresh 256-bit content key, wrapped with RSA-OAEP (SHA-256, MGF1-SHA-256) to the
  recipient's RSA public key (the keys both sides already trust: the agent's bridge key,
  the client's registered key);
* the plaintext encrypted with ChaCha20-Poly1305 under that key and a random 96-bit nonce,
  with a *context* as associated data that names what the text is and where it may be
  opened (``sysadm-fleet/1`` + kind + id + agent id), so sealed text cannot be replayed
  as another command, moved to another agent or swapped between a payload and a result.

Wire form (ASCII, no spaces)::

    "sealed1:" + b64(RSA-OAEP(content key)) + "." + b64(nonce || ciphertext+tag)

(standard base64 with padding).  A browser can produce and open it with WebCrypto
(RSA-OAEP SHA-256) and a vendored ChaCha20-Poly1305.

A command's result is not sealed with RSA but *keyed* (``keyed1:``, below): encrypted under
a key derived from the command's content key, which only its client and agent know.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

PREFIX = "sealed1:"
#: Sealed text longer than this is refused before any decoding (16 MiB of plaintext).
MAX_SEALED_CHARS = 23 * 1024 * 1024
KEY_BYTES = 32
NONCE_BYTES = 12


class SealError(ValueError):
    """Sealed text that is malformed, not for this key or this context, or was altered."""


def _oaep() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def fleet_context(kind: str, item_id: str, agent_id: str) -> bytes:
    """The associated data for a fleet item: *kind* ``command``, ``result`` or ``event``."""
    return f"sysadm-fleet/1\n{kind}\n{item_id}\n{agent_id}".encode("utf-8")


def is_sealed(text: Any) -> bool:
    return isinstance(text, str) and text.startswith(PREFIX)


def seal(public_key: rsa.RSAPublicKey, plaintext: bytes, context: bytes) -> str:
    """*plaintext* sealed to *public_key*, bound to *context*, under a fresh content key."""
    return seal_with_key(public_key, ChaCha20Poly1305.generate_key(), plaintext, context)


def open_sealed(private_key: rsa.RSAPrivateKey, text: str, context: bytes) -> bytes:
    """The plaintext of *text*; :class:`SealError` if it is not sealed to this key and context."""
    return open_sealed_key(private_key, text, context)[0]


# --- keys as the bridge lists them; chosen content keys (additive, helper A) -----------------------

def spki_b64(key: Any) -> str:
    """Standard base64 of the SubjectPublicKeyInfo DER of *key* (public or private)."""
    from cryptography.hazmat.primitives import serialization

    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return base64.b64encode(public.public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)).decode("ascii")


MAX_SPKI_B64 = 8192


def agent_key(spki: Any, agent_id: str) -> rsa.RSAPublicKey:
    """The RSA public key in *spki* (b64 SPKI DER, as ``fleet/agents`` lists it), checked
    to be the key *agent_id* names (sha256 of that DER); :class:`SealError` otherwise."""
    import hashlib

    from cryptography.hazmat.primitives import serialization

    if not isinstance(spki, str) or not spki or len(spki) > MAX_SPKI_B64:
        raise SealError(f"agent {agent_id[:12]}: the bridge lists no key for it (a bridge too old to, or the agent "
                        "never said hello)")
    try:
        der = base64.b64decode(spki, validate=True)
    except (binascii.Error, ValueError):
        raise SealError(f"agent {agent_id[:12]}: its listed key is not base64") from None
    if hashlib.sha256(der).hexdigest() != agent_id:
        raise SealError(f"agent {agent_id[:12]}: the key the bridge lists for it is not the key its id names "
                        "(sha256 of the key differs); refusing to seal anything to it")
    try:
        public = serialization.load_der_public_key(der)
    except ValueError:
        raise SealError(f"agent {agent_id[:12]}: its listed key is not a public key") from None
    if not isinstance(public, rsa.RSAPublicKey):
        raise SealError(f"agent {agent_id[:12]}: its key is not an RSA key")
    return public


def seal_with_key(public_key: rsa.RSAPublicKey, content_key: bytes, plaintext: bytes, context: bytes) -> str:
    """:func:`seal` with a content key the caller chose (and keeps, to open the result)."""
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise TypeError("sealing needs an RSA public key")
    if len(content_key) != KEY_BYTES:
        raise ValueError(f"a content key is {KEY_BYTES} bytes")
    nonce = os.urandom(NONCE_BYTES)
    body = nonce + ChaCha20Poly1305(content_key).encrypt(nonce, plaintext, context)
    wrapped = public_key.encrypt(content_key, _oaep())
    return PREFIX + base64.b64encode(wrapped).decode("ascii") + "." + base64.b64encode(body).decode("ascii")


def open_sealed_key(private_key: rsa.RSAPrivateKey, text: str, context: bytes) -> "tuple[bytes, bytes]":
    """:func:`open_sealed`, and the content key it was sealed with: ``(plaintext, key)``."""
    if not is_sealed(text):
        raise SealError("not sealed text (it must start with 'sealed1:')")
    if len(text) > MAX_SEALED_CHARS:
        raise SealError(f"sealed text over {MAX_SEALED_CHARS} characters")
    head, dot, tail = text[len(PREFIX):].partition(".")
    if not dot:
        raise SealError("sealed text without its '.' between key and body")
    try:
        wrapped = base64.b64decode(head, validate=True)
        body = base64.b64decode(tail, validate=True)
    except (binascii.Error, ValueError):
        raise SealError("sealed text that is not base64") from None
    if len(body) < NONCE_BYTES + 16:
        raise SealError("sealed body too short")
    try:
        content_key = private_key.decrypt(wrapped, _oaep())
    except ValueError:
        raise SealError("sealed to another key") from None
    if len(content_key) != KEY_BYTES:
        raise SealError("sealed with a content key of the wrong size")
    return _open_body(content_key, body, context), content_key


def open_keyed_body(content_key: bytes, tail: str, context: bytes) -> bytes:
    try:
        body = base64.b64decode(tail, validate=True)
    except (binascii.Error, ValueError):
        raise SealError("sealed text that is not base64") from None
    if len(body) < NONCE_BYTES + 16:
        raise SealError("sealed body too short")
    return _open_body(content_key, body, context)


def _open_body(content_key: bytes, body: bytes, context: bytes) -> bytes:
    """ChaCha20-Poly1305 ``nonce || ciphertext+tag`` opened under *context*."""
    try:
        return ChaCha20Poly1305(content_key).decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], context)
    except Exception:  # cryptography.exceptions.InvalidTag
        raise SealError("sealed text altered, or sealed for another command or agent") from None


# --- results: keyed by the command's content key ---------------------------------------------------
#
# A command's result is encrypted with ChaCha20-Poly1305 under a key derived from the
# content key of the command's sealed payload: only the client that sealed the command and
# the agent that opened it know that key, so the result is both secret and authentic (the
# bridge, which could seal to the client's public key, cannot make one), without any RSA
# operation.  Wire form: "keyed1:" + b64(nonce(12) || ciphertext+tag), associated data
# fleet_context("result", command id, agent id).

KEYED_PREFIX = "keyed1:"


def result_key(content_key: bytes) -> bytes:
    """The key a command's result is encrypted with: HKDF-SHA256 of the command's content key."""
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=b"sysadm-fleet/1 result key").derive(content_key)


def is_keyed(text: Any) -> bool:
    return isinstance(text, str) and text.startswith(KEYED_PREFIX)


def seal_keyed(key: bytes, plaintext: bytes, context: bytes) -> str:
    nonce = os.urandom(NONCE_BYTES)
    return KEYED_PREFIX + base64.b64encode(nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, context)).decode("ascii")


def open_keyed(key: bytes, text: str, context: bytes) -> bytes:
    if not is_keyed(text):
        raise SealError("not a keyed result (it must start with 'keyed1:')")
    if len(text) > MAX_SEALED_CHARS:
        raise SealError(f"keyed text over {MAX_SEALED_CHARS} characters")
    return open_keyed_body(key, text[len(KEYED_PREFIX):], context)


def command_key(private_key: rsa.RSAPrivateKey, command_id: str, agent_id: str) -> bytes:
    """A command's content key, derived from the client's private key so that a later
    ``sysadm fleet wait`` (another process) can open the result: HMAC-SHA256 over
    ``"command\n" + id + "\n" + agent`` with a secret HKDF-derived from the private key
    (PKCS#8 DER).  Only the key's holder can compute it; ids are never reused."""
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    cached = _COMMAND_SECRETS.get(id(private_key))
    if cached is not None and cached[0] is private_key:
        secret = cached[1]
    else:
        der = private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        secret = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                      info=b"sysadm-fleet/1 command keys").derive(der)
        if len(_COMMAND_SECRETS) >= 8:
            _COMMAND_SECRETS.clear()
        _COMMAND_SECRETS[id(private_key)] = (private_key, secret)  # the key object kept: its id stays its own
    return hmac.new(secret, f"command\n{command_id}\n{agent_id}".encode("utf-8"), hashlib.sha256).digest()


#: id(private key) -> (that key, its command-key secret): a client seals and opens many commands.
_COMMAND_SECRETS: "dict[int, tuple[Any, bytes]]" = {}
