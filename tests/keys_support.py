"""Key helpers for the key-login tests: RSA keys made once per run, stage 1 + 2 logins."""

from __future__ import annotations

import base64
import datetime
from typing import Any, Dict, List

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from twisted.internet import defer

from sysadmd.runtime import crypto

_KEYS: Dict[str, rsa.RSAPrivateKey] = {}


def private_key(name: str) -> rsa.RSAPrivateKey:
    """A 2048-bit key per *name* (the smallest size logins accept)."""
    if name not in _KEYS:
        _KEYS[name] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _KEYS[name]


def pem_of(name: str) -> str:
    return crypto.public_pem(private_key(name))


def stored_of(name: str) -> str:
    """What an upstream client sends as ``pub_key``: base64 of its PEM public key."""
    return crypto.stored_form(pem_of(name))


def md5_of(name: str) -> str:
    return crypto.md5_checksum(pem_of(name))


def certificate(name: str, encoding=serialization.Encoding.PEM) -> bytes:
    """A self-signed X.509 certificate for key *name*."""
    key = private_key(name)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"sysadm client {name}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256())
    )
    return cert.public_bytes(encoding)


def register(running: Any, user: str, name: str, nickname: str = "") -> Any:
    """Register key *name* for *user* straight in the daemon's key store (*running*: a
    RunningDaemon, or a test case that called :func:`clock_server`)."""
    keys = running.daemon.keys if hasattr(running, "daemon") else running.keys
    return keys.register(user, pem_of(name), nickname or name, f"{name}@example.org")


@defer.inlineCallbacks
def key_login(client: Any, name: str):
    """Stage 1 and stage 2 of rpc/auth_ssl with key *name*; fires with the stage-2 reply."""
    stage1 = yield client.call("rpc", "auth_ssl", "")
    challenge = stage1["args"]["test_string"]
    reply = yield client.call("rpc", "auth_ssl", {"encrypted_string": crypto.sign_challenge(private_key(name), challenge)})
    return reply


def b64decode_text(text: str) -> str:
    return base64.b64decode(text).decode("ascii")


def error_code(reply: Dict[str, Any]) -> str:
    assert reply["name"] == "error", reply
    return reply["args"]["code"]


def clock_server(testcase: Any, **overrides: Any):
    """A Server with keys installed, on a Clock and a real SQLite file (no listeners).

    Returns ``(server, clock)`` and sets ``testcase.keys`` and ``testcase.key_login``;
    the server is started, and stopped at cleanup.
    """
    from twisted.internet.task import Clock

    from sysadmd.runtime.db import database_path, open_database
    from tests.support import FakePasswords, add_key_login, make_config, short_tempdir, unit_server

    cfg = make_config(short_tempdir(testcase), **overrides)
    db = open_database(database_path(cfg.state_dir))
    testcase.addCleanup(db.close)
    clock = Clock()
    server = unit_server(cfg, db, clock, passwords=FakePasswords({}))
    testcase.keys, testcase.key_login = add_key_login(server)
    server.startService()

    def stop():
        d = server.stopService()
        clock.advance(10)  # the shutdown grace for open sessions runs on this Clock too
        return d

    testcase.addCleanup(stop)
    return server, clock


def call(server: Any, session: Any, name: str, args: Any, namespace: str = "rpc") -> Dict[str, Any]:
    """Run one request synchronously (everything on a Clock fires at once)."""
    from sysadmd.wire.envelope import Request

    result: List[Any] = []
    server.api.handle(session, Request(namespace, name, "t1", args)).addBoth(result.append)
    assert result, "the request did not complete synchronously"
    return result[0]


def call_async(server: Any, session: Any, name: str, args: Any, namespace: str = "rpc") -> defer.Deferred:
    """Run one request; fires with the reply (key-login answers are checked in threads)."""
    from sysadmd.wire.envelope import Request

    return server.api.handle(session, Request(namespace, name, "t1", args))
