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
    """*plaintext* sealed to *public_key*, bound to *context*."""
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise TypeError("sealing needs an RSA public key")
    content_key = ChaCha20Poly1305.generate_key()
    nonce = os.urandom(NONCE_BYTES)
    body = nonce + ChaCha20Poly1305(content_key).encrypt(nonce, plaintext, context)
    wrapped = public_key.encrypt(content_key, _oaep())
    return PREFIX + base64.b64encode(wrapped).decode("ascii") + "." + base64.b64encode(body).decode("ascii")


def open_sealed(private_key: rsa.RSAPrivateKey, text: str, context: bytes) -> bytes:
    """The plaintext of *text*; :class:`SealError` if it is not sealed to this key and context."""
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
    try:
        return ChaCha20Poly1305(content_key).decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], context)
    except Exception:  # cryptography.exceptions.InvalidTag
        raise SealError("sealed text altered, or sealed for another command or agent") from None
