"""The daemon's side of bridged logins bound to its identity: which stage 2 a session
must send, and the server's bridge key as its identity.

The signed texts and the checks both ends share are in :mod:`sysadmd.wire.bound` (its
docstring describes the exchange); this module holds what only sysadmd needs: the
session attributes stage 1 sets and the policy that decides how a stage 2 is checked.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Callable, Optional

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sysadmd.runtime import crypto
from sysadmd.wire.bound import MAX_SIGNATURE_B64, fingerprint, login_message

# Session.attributes keys (bridged sessions)
BOUND_REQUIRED = "bound_login_required"  # stage 1 carried client_nonce
SERVER_CONNECTION_ID = "bound_server_connection_id"  # the I the stage-1 proof named


class Stage2:
    """How one stage-2 ``auth_ssl`` must be checked; ``refused`` is why it cannot be."""

    def __init__(self, server: Any, session: Any, args: dict):
        self.bound = args.get("bound") in (1, True, "1")
        self.refused: Optional[str] = None
        self.server_fp: Optional[str] = None
        self.connection_id = ""
        if self.bound:
            if not session.attributes.get(BOUND_REQUIRED):
                self.refused = "a bound stage 2 (\"bound\": 1) needs a stage 1 with md5_key and client_nonce first"
            self.server_fp = fingerprint(server_identity(server))
            self.connection_id = session.attributes.get(SERVER_CONNECTION_ID) or ""
        elif session.attributes.get(BOUND_REQUIRED):
            self.refused = ("this session sent client_nonce in stage 1, so stage 2 must be the bound signature "
                            "(\"bound\": 1); a raw signature is refused")
        elif session.kind == "bridge" and not server.config.bridge_upstream_clients:
            self.refused = ("unbound key logins through a bridge are turned off on this server "
                            "(BRIDGE_UPSTREAM_CLIENTS=false): use a sysadm client that signs bound logins")

    def matcher(self, challenge: Any) -> Callable[[Any, bytes], bool]:
        """``(public key, signature bytes) -> bool`` for a bound answer to *challenge*: the
        same shape as a raw-signature matcher, for a checker that tries candidate keys."""
        message = login_message(self.server_fp or "", self.connection_id, challenge.text)

        def matches(public: Any, signature: bytes) -> bool:
            try:
                public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
            except (InvalidSignature, ValueError, TypeError):
                return False
            return True

        return matches

    def verify(self, keys: Any, challenge: Any, answer: Any) -> Any:
        """The registered key (the one stage 1 named) whose bound signature *answer* is."""
        if not challenge.md5_key:
            return None  # a bound login names its key in stage 1 (md5_key)
        key = keys.find_by_md5(challenge.md5_key)
        if key is None or not isinstance(answer, str) or len(answer) > MAX_SIGNATURE_B64:
            return None
        try:
            public = crypto.load_public_key(key.pem)
            signature = base64.b64decode(answer, validate=True)
        except (crypto.KeyFormatError, binascii.Error, ValueError):
            return None
        return key if self.matcher(challenge)(public, signature) else None


def server_identity(server: Any) -> rsa.RSAPrivateKey:
    """The server's bridge key (created on first use, as the bridge links do)."""
    key = server.bridge_identity
    if key is None:
        from sysadmd.bridgelink import key as bridgekey

        key, _ = bridgekey.load_or_create(server.state_dir)
        server.bridge_identity = key
    return key
