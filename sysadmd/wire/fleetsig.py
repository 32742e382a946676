"""The text a client signs for a fleet command (issue 13; docs/protocol.md §8.5), both ends.

The client signs, with the key the agent knows it by (RSA PKCS#1 v1.5, SHA-256)::

    "sysadm-fleet-command/1\\n" + command id + "\\n" + agent id + "\\n" + sha256_hex(payload)

The agent checks it against its own registered keys and runs the command as that key's
user, with that user's rights: a bridge (or anyone who can write to it) can store and
forward a command but cannot make one, move one to another agent, or change its payload.
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
MAX_SIGNATURE_B64 = 2048


def command_message(command_id: str, agent_id: str, payload: str) -> bytes:
    digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()
    return f"{PREFIX}{command_id}\n{agent_id}\n{digest}".encode("utf-8")


def sign_command(private_key: Any, command_id: str, agent_id: str, payload: str) -> str:
    signature = private_key.sign(command_message(command_id, agent_id, payload), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def verify_command(public_key: Any, signature_b64: str, command_id: str, agent_id: str, payload: str) -> bool:
    if not isinstance(signature_b64, str) or len(signature_b64) > MAX_SIGNATURE_B64:
        return False
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        public_key.verify(signature, command_message(command_id, agent_id, payload), padding.PKCS1v15(), hashes.SHA256())
    except (binascii.Error, ValueError, TypeError, InvalidSignature):
        return False
    return True
