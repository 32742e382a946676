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


# --- keys as the bridge lists them, and signed results (additive, helper A) -----------------------

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


def seal_result(agent_private: rsa.RSAPrivateKey, client_public: rsa.RSAPublicKey, command_id: str,
                agent_id: str, result: str) -> str:
    """A command's *result* JSON text, signed by the agent (fleetsig) and sealed to the client.

    Sealed plaintext: ``{"result": RESULT_TEXT, "signature": b64}`` (compact JSON)."""
    import json

    from sysadmd.wire import fleetsig

    signature = fleetsig.sign_result(agent_private, command_id, agent_id, result)
    inner = json.dumps({"result": result, "signature": signature}, separators=(",", ":"), sort_keys=True)
    return seal(client_public, inner.encode("utf-8"), fleet_context("result", command_id, agent_id))


def open_result(client_private: rsa.RSAPrivateKey, agent_public: rsa.RSAPublicKey, command_id: str,
                agent_id: str, text: str) -> str:
    """The result JSON text inside *text*, once its agent signature checks; :class:`SealError` if not."""
    import json

    from sysadmd.wire import fleetsig

    inner = open_sealed(client_private, text, fleet_context("result", command_id, agent_id))
    try:
        body = json.loads(inner.decode("utf-8"))
    except ValueError:
        raise SealError("the sealed result is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("result"), str):
        raise SealError('the sealed result is not {"result": TEXT, "signature": SIG}')
    if not fleetsig.verify_result(agent_public, body.get("signature"), command_id, agent_id, body["result"]):
        raise SealError("the result is not signed by the agent's key")
    return body["result"]
