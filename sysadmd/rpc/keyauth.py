"""``rpc/auth_ssl``: logging in with a registered RSA key (challenge and answer).

Wire exchange (upstream-compatible; challenges are ours: random, single use, bound to
the session that asked, valid ``CHALLENGE_TTL`` seconds)::

    stage 1   args without "encrypted_string" ("" , {} or anything not an object)
      → {"test_string": T}                       T: 40 chars [A-Za-z0-9]
    stage 1, bridged variant   args {"md5_key": M}    M = base64(MD5(client PEM))
      → {"new_ssl_key": base64(server PEM), "test_string": base64(T)}
    stage 2   args {"encrypted_string": base64(raw PKCS#1 v1.5 signature of T)}
      → [token, ttl_seconds]                     or a 401 error with a detail

In the ``md5_key`` variant the answer must come from the key with checksum ``M``.
``new_ssl_key`` is a static server-wide public key (``enc_pub.pem`` in the state
directory): upstream generated an RSA-4096 pair on every stage 1 but never used it; Qt
clients only need a PEM containing ``" PUBLIC KEY--"`` to switch to base64 payloads.
Unlike upstream, an unknown ``M`` is refused with a 401 instead of a garbled reply.
"""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING, Optional

from twisted.logger import Logger

from sysadmd import crypto
from sysadmd.auth import bound
from sysadmd.auth.keys import KeyStore
from sysadmd.auth.revocation import RevokedKeyWatcher
from sysadmd.envelope import ApiError
from sysadmd.session import Challenge, Identity, Session
from sysadmd.statedir import write_private_file

if TYPE_CHECKING:
    from sysadmd.server import Server

log = Logger()

CHALLENGE_LENGTH = 40


class ExchangeKey:
    """The server's static key pair for the ``md5_key`` reply, made once per state dir."""

    def __init__(self, state_dir: str, bits: int = 2048):
        self.public_path = os.path.join(state_dir, "enc_pub.pem")
        self.private_path = os.path.join(state_dir, "enc.key")
        self.bits = bits
        self._pem: Optional[str] = None

    def public_pem(self) -> str:
        if self._pem is None:
            self._pem = self._load_or_create()
        return self._pem

    def _load_or_create(self) -> str:
        if os.path.exists(self.private_path):
            with open(self.private_path, "rb") as f:
                pem = crypto.public_pem(crypto.load_private_key(f.read()))
        else:
            private = crypto.generate_private_key(self.bits)
            write_private_file(self.private_path, crypto.private_pem(private))
            pem = crypto.public_pem(private)
            log.info("generated the key-exchange key {path}", path=self.private_path)
        if not os.path.exists(self.public_path):
            write_private_file(self.public_path, pem.encode("ascii"))
        return pem


def install(server: "Server") -> KeyStore:
    """Register ``rpc/auth_ssl`` and ``rpc/settings``, and watch for revoked keys."""
    from sysadmd.rpc import settings

    keys = KeyStore(server.db, clock=server.clock)
    server.subsystems["keys"] = keys
    exchange = ExchangeKey(server.state_dir)
    api = server.api

    def new_challenge(session: Session, md5_key: Optional[str] = None) -> str:
        text = crypto.random_token(CHALLENGE_LENGTH)
        session.challenge = Challenge(text, server.clock.seconds() + server.config.challenge_ttl, md5_key)
        return text

    def refuse(session: Session, user: str, detail: str):
        server.login_failed(session, user, "key")
        raise ApiError("401", detail)

    def stage1_md5(session: Session, md5_key) -> dict:
        if not isinstance(md5_key, str) or not md5_key:
            refuse(session, "", "md5_key must be a non-empty string: base64(MD5(your PEM public key))")
        key = keys.find_by_md5(md5_key)
        if key is None:
            refuse(session, "", f"no registered key has the checksum {md5_key[:64]!r}")
        text = new_challenge(session, md5_key)
        return {
            "new_ssl_key": base64.b64encode(exchange.public_pem().encode("ascii")).decode("ascii"),
            "test_string": base64.b64encode(text.encode("ascii")).decode("ascii"),
        }

    def stage2(session: Session, answer, mode: Optional[bound.Stage2] = None) -> list:
        challenge, session.challenge = session.challenge, None  # single use, whatever the outcome
        if not isinstance(answer, str) or not answer:
            refuse(session, "", "encrypted_string must be a non-empty base64 string")
        if challenge is None:
            refuse(session, "", "no challenge outstanding on this connection: send rpc/auth_ssl without "
                                "encrypted_string first (each challenge answers once)")
        if server.clock.seconds() >= challenge.expires:
            refuse(session, "", f"the challenge expired (answer within {server.config.challenge_ttl} s)")
        if mode is not None and mode.bound:  # bridged login bound to this server's key (auth/bound.py)
            key = mode.verify(keys, challenge, answer)
        else:
            key = keys.verify(challenge.text, answer, challenge.md5_key)
        if key is None:
            which = "the key named by md5_key" if challenge.md5_key else "any registered key"
            refuse(session, "", f"the signature does not match {which}")
        full = server.rights.for_user(key.user)
        if full is None:
            refuse(session, key.user, f"user {key.user} has no access rights on this host")
        return server.login_succeeded(session, Identity(key.user, full, "key", key_checksum=key.md5))

    def auth_ssl(session: Session, request):
        # Every auth* request logs the session out first (upstream does; login.py too).
        server.tokens.revoke(session.token)
        session.logout()
        args = request.args
        if isinstance(args, dict) and "encrypted_string" in args:
            mode = bound.Stage2(server, session, args)
            if mode.refused:
                session.challenge = None
                refuse(session, "", mode.refused)
            return stage2(session, args["encrypted_string"], mode)
        if isinstance(args, dict) and "md5_key" in args:
            return stage1_md5(session, args["md5_key"])
        return {"test_string": new_challenge(session)}

    api.add("rpc", "auth_ssl", auth_ssl, public=True, listed=False)
    settings.install(server, keys)
    RevokedKeyWatcher(server, keys, server.clock).setServiceParent(server)
    return keys
