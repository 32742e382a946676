"""``rpc/auth_ssl``: logging in with a registered RSA key (challenge and answer).

Wire exchange (upstream-compatible; challenges are ours: random, single use, bound to
the session that asked, valid ``CHALLENGE_TTL`` seconds)::

    stage 1   args without "encrypted_string" ("" , {} or anything not an object)
      → {"test_string": T}                       T: 40 chars [A-Za-z0-9]
    stage 1, naming the key   args {"checksum": M}      M = base64(MD5(client PEM))
      → {"test_string": T}                       (only that key may answer)
    stage 1, bridged variant   args {"md5_key": M}
      → {"new_ssl_key": base64(server PEM), "test_string": base64(T)}
    stage 2   args {"encrypted_string": base64(raw PKCS#1 v1.5 signature of T)}
      → [token, ttl_seconds]                     or a 401 error with a detail

When the client names its key (``md5_key``, or ``checksum``, which an upstream server
ignores), the answer must come from that key and only that key is checked; otherwise
the answer is checked against at most ``KEY_LOGIN_MAX_TRIED`` registered keys, oldest
first.  Signatures are verified in a small thread pool (:class:`SignatureChecker`),
never on the reactor thread.  A checksum nobody registered gets the same stage-1 reply
as a registered one and fails only at stage 2, with the same words as a wrong
signature, so stage 1 cannot be used to find out which keys are registered.

``new_ssl_key`` is a static server-wide public key (``enc_pub.pem`` in the state
directory): upstream generated an RSA-4096 pair on every stage 1 but never used it; Qt
clients only need a PEM containing ``" PUBLIC KEY--"`` to switch to base64 payloads.
"""

from __future__ import annotations

import base64
import os
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger

from sysadmd.runtime import crypto
from sysadmd.auth import boundlogin
from sysadmd.auth.keys import CheckerBusy, CheckResult, KeyStore, RegisteredKey, SignatureChecker, raw_signature_of
from sysadmd.wire.envelope import ApiError
from sysadmd.session import Challenge, Identity, Session
from sysadmd.runtime.statedir import write_private_file

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


def thread_reactor(reactor: Any) -> Any:
    """The reactor pool threads report back to: the server's, unless that is a test
    Clock (which has no thread support); then the process's global reactor."""
    if hasattr(reactor, "callFromThread"):
        return reactor
    from twisted.internet import reactor as global_reactor

    return global_reactor


class KeyLogin:
    """The two stages of ``rpc/auth_ssl`` for one server.

    *server* is the server state (:class:`sysadmd.server.Server`): its clock, config,
    rights and login bookkeeping (``logout``, ``login_succeeded``, ``login_failed``).
    """

    def __init__(self, server: Any, keys: KeyStore, checker: SignatureChecker, exchange: ExchangeKey):
        self.server = server
        self.keys = keys
        self.checker = checker
        self.exchange = exchange
        self._over_limit_logged: Optional[int] = None

    # --- the request --------------------------------------------------------------------
    def auth_ssl(self, session: Session, request) -> Any:
        # Every auth* request logs the session out first (upstream does; login.py too):
        # its token, its identity and its event subscriptions.
        self.server.logout(session)
        args = request.args
        if isinstance(args, dict) and "encrypted_string" in args:
            mode = boundlogin.Stage2(self.server, session, args)  # bridged logins bound to this server (auth/boundlogin.py)
            if mode.refused:
                session.challenge = None
                self.refuse(session, "", mode.refused)
            return self.stage2(session, args["encrypted_string"], mode)
        if isinstance(args, dict) and "md5_key" in args:
            return self.stage1_md5(session, args["md5_key"])
        if isinstance(args, dict) and "checksum" in args:
            checksum = self.checked_checksum(session, "checksum", args["checksum"])
            return {"test_string": self.new_challenge(session, checksum)}
        return {"test_string": self.new_challenge(session)}

    # --- stage 1 ------------------------------------------------------------------------
    def new_challenge(self, session: Session, md5_key: Optional[str] = None) -> str:
        text = crypto.random_token(CHALLENGE_LENGTH)
        session.challenge = Challenge(text, self.server.clock.seconds() + self.server.config.challenge_ttl, md5_key)
        return text

    def checked_checksum(self, session: Session, field: str, value: Any) -> str:
        """*value* if it has the shape of a key checksum; a 401 naming *field* if not.

        Whether a key with that checksum is registered is not looked at here: the reply
        must not depend on it.
        """
        if not isinstance(value, str) or not crypto.is_md5_checksum(value):
            self.refuse(session, "", f"{field} must be a key checksum: base64(MD5(your PEM public key)), "
                                     "24 characters ending in '=='")
        return value

    def stage1_md5(self, session: Session, md5_key: Any) -> dict:
        md5 = self.checked_checksum(session, "md5_key", md5_key)
        text = self.new_challenge(session, md5)
        return {
            "new_ssl_key": base64.b64encode(self.exchange.public_pem().encode("ascii")).decode("ascii"),
            "test_string": base64.b64encode(text.encode("ascii")).decode("ascii"),
        }

    # --- stage 2 ------------------------------------------------------------------------
    def stage2(self, session: Session, answer: Any, mode: Optional[boundlogin.Stage2] = None) -> defer.Deferred:
        challenge, session.challenge = session.challenge, None  # single use, whatever the outcome
        if not isinstance(answer, str) or not answer:
            self.refuse(session, "", "encrypted_string must be a non-empty base64 string")
        if challenge is None:
            self.refuse(session, "", "no challenge outstanding on this connection: send rpc/auth_ssl without "
                                     "encrypted_string first (each challenge answers once)")
        if self.server.clock.seconds() >= challenge.expires:
            self.refuse(session, "", f"the challenge expired (answer within {self.server.config.challenge_ttl} s)")
        d = self.verify_challenge(session, challenge, answer, mode)
        d.addCallback(self.finish, session, challenge)
        return d

    def verify_challenge(self, session: Session, challenge: Challenge, signature_b64: str,
                         mode: Optional[boundlogin.Stage2] = None) -> defer.Deferred:
        """Fires with the registered key whose signature of *challenge* is *signature_b64*,
        or ``None``; the check runs in the checker's threads.

        The keys tried are chosen here (on the reactor thread, where the database is
        used); :meth:`signature_matcher` says what a valid signature carries.
        """
        limit = self.server.config.key_login_max_tried
        candidates, total = self.keys.login_candidates(challenge.md5_key, limit)
        if total > limit and self._over_limit_logged != total:
            self._over_limit_logged = total
            log.warn("{total} keys are registered; key logins that do not name their key by checksum are "
                     "checked against the oldest {limit} only (KEY_LOGIN_MAX_TRIED)", total=total, limit=limit)
        d = self.checker.find_signer(candidates, signature_b64, self.signature_matcher(session, challenge, mode),
                                     peer=session.peer)

        def unpack(result: CheckResult) -> Optional[RegisteredKey]:
            return result.key

        def busy(failure: Any) -> None:
            failure.trap(CheckerBusy)
            log.warn("key login from {peer} refused: {why}", peer=session.peer, why=str(failure.value))
            raise ApiError("503", "the server is busy checking other key logins; try again in a few seconds")

        return d.addCallbacks(unpack, busy)

    def signature_matcher(self, session: Session, challenge: Challenge, mode: Optional[boundlogin.Stage2] = None) -> Any:
        """What the answer to *challenge* must be: upstream's raw PKCS#1 v1.5 signature of
        the challenge text, or, for a bound bridged login, a SHA-256 signature over this
        server's key, its bridge connection ID and the challenge (auth/boundlogin.py)."""
        if mode is not None and mode.bound:
            return mode.matcher(challenge)
        return raw_signature_of(challenge.text.encode("latin-1"))

    def finish(self, key: Optional[RegisteredKey], session: Session, challenge: Challenge) -> list:
        if session.closed:
            raise ApiError("401", "the connection closed while its key login was being checked")
        if key is None:
            which = "the key named by its checksum" if challenge.md5_key else "any registered key"
            self.refuse(session, "", f"the signature does not match {which}")
        current = self.keys.find_by_md5(key.md5)
        if current is None or current.user != key.user:
            # Revoked (or moved) while its signature was being checked.
            self.refuse(session, "", "the signature does not match any registered key")
        full = self.server.rights.for_user(key.user)
        if full is None:
            self.refuse(session, key.user, self.server.no_rights_message(key.user))
        return self.server.login_succeeded(session, Identity(key.user, full, "key", key_checksum=key.md5))

    def refuse(self, session: Session, user: str, detail: str) -> None:
        self.server.login_failed(session, user, "key", detail)
        raise ApiError("401", detail)


def route(api: Any, login: KeyLogin) -> None:
    """Route ``rpc/auth_ssl`` (public, not listed in ``rpc/query``) to *login*."""
    api.add("rpc", "auth_ssl", login.auth_ssl, public=True, listed=False)
