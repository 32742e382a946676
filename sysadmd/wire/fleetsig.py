"""The texts signed for fleet items (issue 13; docs/protocol.md §8.5, §8.6), both ends.

A client signs each command and each emitted event with the key the agent knows it by
(RSA PKCS#1 v1.5, SHA-256), over::

    "sysadm-fleet-command/1\\n" + command id + "\\n" + agent id + "\\n" + sha256_hex(payload)
    "sysadm-fleet-event/1\\n"   + event id   + "\\n" + agent id + "\\n" + sha256_hex(payload)

``payload`` is the text the bridge stores (sealed text, :mod:`sysadmd.wire.seal`).  The
agent checks it against its own registered keys and runs (publishes) the item as that
key's user, with that user's rights: a bridge (or anyone who can write to it) can store
and forward an item but cannot make one, move it to another agent, change its payload or
pass one kind off as another.  (Results need no signature: they are encrypted under a key
only the command's client and agent know, :func:`sysadmd.wire.seal.result_key`.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

PREFIX = "sysadm-fleet-command/1\n"
EVENT_PREFIX = "sysadm-fleet-event/1\n"
MAX_SIGNATURE_B64 = 2048


def _message(prefix: str, item_id: str, agent_id: str, text: str) -> bytes:
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return f"{prefix}{item_id}\n{agent_id}\n{digest}".encode("utf-8")


def _sign(private_key: Any, message: bytes) -> str:
    return base64.b64encode(private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def _verify(public_key: Any, signature_b64: Any, message: bytes) -> bool:
    if not isinstance(signature_b64, str) or len(signature_b64) > MAX_SIGNATURE_B64:
        return False
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except (binascii.Error, ValueError, TypeError, InvalidSignature):
        return False
    return True


def command_message(command_id: str, agent_id: str, payload: str) -> bytes:
    return _message(PREFIX, command_id, agent_id, payload)


def sign_command(private_key: Any, command_id: str, agent_id: str, payload: str) -> str:
    return _sign(private_key, command_message(command_id, agent_id, payload))


def verify_command(public_key: Any, signature_b64: Any, command_id: str, agent_id: str, payload: str) -> bool:
    return _verify(public_key, signature_b64, command_message(command_id, agent_id, payload))


def event_message(event_id: str, agent_id: str, payload: str) -> bytes:
    return _message(EVENT_PREFIX, event_id, agent_id, payload)


def sign_event(private_key: Any, event_id: str, agent_id: str, payload: str) -> str:
    return _sign(private_key, event_message(event_id, agent_id, payload))


def verify_event(public_key: Any, signature_b64: Any, event_id: str, agent_id: str, payload: str) -> bool:
    return _verify(public_key, signature_b64, event_message(event_id, agent_id, payload))
