"""Reaching a server: the local socket, ``wss://`` with a pinned certificate, logging in.

Targets, in order of preference:

* ``--bridge URL --server ID``: through a bridge (:mod:`sysadmd.client.bridged`);
* ``--url wss://host[:port]``: TLS WebSocket (port 12150 by default), certificate
  pinned on first use (:mod:`sysadmd.client.knownhosts`), then a login with
  ``--user`` (``rpc/auth``), ``--key`` (``rpc/auth_ssl``) or ``--token`` (``rpc/auth_token``);
* otherwise the daemon's local Unix socket, where the peer's uid is the login (a login
  option still works there, e.g. to act as another user).
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import defer

from sysadmd.runtime import paths
from sysadmd.client import wsclient
from sysadmd.client.errors import (
    EXIT_AUTH, EXIT_CONNECT, EXIT_USAGE, ClientError, connection_lost, describe_connect_failure, error_fields, is_error,
)
from sysadmd.client.knownhosts import KnownHosts, endpoint_name
from sysadmd.wire.wssurl import parse_wss

SERVER_PORT = 12150
BRIDGE_PORT = 12149


@dataclass
class Endpoint:
    host: str
    port: int
    path: str = "/"

    @property
    def name(self) -> str:
        return endpoint_name(self.host, self.port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"wss://{host}:{self.port}{self.path}"


def parse_url(text: str, default_port: int) -> Endpoint:
    """``wss://host[:port][/path]`` (the scheme may be left out) as an :class:`Endpoint`."""
    try:
        address = parse_wss(text, default_port)
    except ValueError as e:
        raise ClientError(f"not a usable URL: {e}", EXIT_USAGE) from None
    return Endpoint(address.host, address.port, address.path or "/")


def default_socket() -> str:
    """``$SYSADM_SOCKET``; else the system daemon's socket when it exists; else the
    socket of a daemon run by this user on the default configuration."""
    chosen = os.environ.get("SYSADM_SOCKET")
    if chosen:
        return chosen
    if os.path.exists(paths.SYSTEM_SOCKET):
        return paths.SYSTEM_SOCKET
    return paths.default_socket_path()


# --- credentials ------------------------------------------------------------------------

@dataclass
class Credentials:
    user: Optional[str] = None
    password: Optional[str] = None
    key: Any = None  # an RSA private key
    key_path: Optional[str] = None
    token: Optional[str] = None

    @property
    def given(self) -> bool:
        return bool(self.user or self.key is not None or self.token)


MAX_KEY_FILE_BYTES = 1024 * 1024  # far more than any key or certificate file


def read_key_bytes(path: str) -> bytes:
    """The bytes of the key file *path* (``~`` expanded); unreadable files are usage errors."""
    try:
        with open(os.path.expanduser(path), "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        raise ClientError(f"cannot read key file {path}: {e.strerror or e}", EXIT_USAGE) from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ClientError(f"key file {path} is larger than {MAX_KEY_FILE_BYTES} bytes; expected one key", EXIT_USAGE)
    return data


def read_key_file(path: str, loader: Any) -> Any:
    """*loader* applied to the bytes of *path*; unreadable or unusable files are usage errors."""
    from sysadmd.runtime import crypto  # imported when needed: cryptography costs ~25 ms of start-up

    data = read_key_bytes(path)
    try:
        return loader(data)
    except crypto.KeyFormatError as e:
        raise ClientError(f"cannot use key file {path}: {e}", EXIT_USAGE) from None


def warn_if_exposed(path: str, err: Any) -> None:
    """Warn (like ssh, which refuses) when the private key file *path* is readable by its
    group or by others.  We only warn: the key may sit on a single-user machine."""
    try:
        mode = os.stat(os.path.expanduser(path)).st_mode
    except OSError:
        return
    if mode & 0o044 and err is not None:
        err.write(f"sysadm: WARNING: private key file {path} is readable by "
                  f"{'others' if mode & 0o004 else 'its group'} (mode {mode & 0o777:04o}); "
                  f"protect it with: chmod 600 {path}\n")
        err.flush()


def passphrase_for(path: str, stdin: Any, environ: Any) -> str:
    """The passphrase of the encrypted key *path*: $SYSADM_KEY_PASSPHRASE, else asked on
    the terminal; without either a usage error."""
    passphrase = environ.get("SYSADM_KEY_PASSPHRASE")
    if passphrase is not None:
        return passphrase
    if not (hasattr(stdin, "isatty") and stdin.isatty()):
        raise ClientError(f"key file {path} is encrypted: set SYSADM_KEY_PASSPHRASE, or run on a terminal to be "
                          "asked for its passphrase", EXIT_USAGE)
    try:
        return getpass.getpass(f"Passphrase for {path}: ")
    except (EOFError, KeyboardInterrupt):
        raise ClientError("no passphrase given", EXIT_USAGE) from None


def load_key(path: str, stdin: Any = None, err: Any = None, environ: Any = None) -> Any:
    """The RSA private key in *path* (for auth_ssl): PEM (PKCS#1 or PKCS#8) or OpenSSH
    format; encrypted keys are opened with :func:`passphrase_for`."""
    import sys

    from sysadmd.runtime import crypto

    stdin = sys.stdin if stdin is None else stdin
    err = sys.stderr if err is None else err
    environ = os.environ if environ is None else environ
    data = read_key_bytes(path)
    kind = crypto.private_key_kind(data)
    if kind is None:
        try:
            crypto.load_public_key(data)
            hint = "this is a public key; --key needs the private key that goes with it"
        except crypto.KeyFormatError:
            hint = "not an RSA private key in PEM (PKCS#1 or PKCS#8) or OpenSSH format"
        raise ClientError(f"cannot use key file {path}: {hint}", EXIT_USAGE)
    warn_if_exposed(path, err)
    try:
        if crypto.private_key_encrypted(data):
            return crypto.load_private_key(data, passphrase_for(path, stdin, environ))
        return crypto.load_private_key(data)
    except crypto.KeyFormatError as e:
        raise ClientError(f"cannot use key file {path}: {e}", EXIT_USAGE) from None


def resolve_credentials(user: Optional[str], key_path: Optional[str], token: Optional[str], stdin: Any,
                        environ: Optional[dict] = None, err: Any = None) -> Credentials:
    """Turn ``--user``/``--key``/``--token`` (and the environment) into :class:`Credentials`."""
    environ = os.environ if environ is None else environ
    token = token or environ.get("SYSADM_TOKEN") or None
    chosen = [name for name, value in (("--user", user), ("--key", key_path), ("--token", token)) if value]
    if len(chosen) > 1:
        raise ClientError(f"use one way to log in, not {' and '.join(chosen)}", EXIT_USAGE)
    if key_path:
        return Credentials(key=load_key(key_path, stdin, err, environ), key_path=key_path)
    if token:
        return Credentials(token=token)
    if user:
        password = environ.get("SYSADM_PASSWORD")
        if password is None:
            if not (hasattr(stdin, "isatty") and stdin.isatty()):
                raise ClientError(
                    f"--user {user} needs a password: set SYSADM_PASSWORD, or run on a terminal to be asked",
                    EXIT_USAGE,
                )
            try:
                password = getpass.getpass(f"Password for {user}: ")
            except (EOFError, KeyboardInterrupt):
                raise ClientError("no password given", EXIT_USAGE) from None
        return Credentials(user=user, password=password)
    return Credentials()


# --- requests with a deadline --------------------------------------------------------------

async def request(conn: Any, reactor: Any, namespace: str, name: str, args: Any, timeout: Optional[float],
                  target: str = "the server") -> dict:
    """Send one request; the reply envelope, or a :class:`ClientError` on timeout/loss."""
    d = conn.call(namespace, name, args)
    if timeout:
        d.addTimeout(timeout, reactor)
    try:
        return await d
    except defer.TimeoutError:
        raise ClientError(f"no reply to {namespace}/{name} from {target} within {timeout:g} s (see --timeout)",
                          EXIT_CONNECT) from None
    except wsclient.ConnectionLost as e:
        raise connection_lost(target, _close_reason(conn) or str(e)) from None


def _close_reason(conn: Any) -> str:
    reason = getattr(conn, "close_reason", None)
    return str(reason) if reason else ""


# --- opening -----------------------------------------------------------------------

async def _with_deadline(d: defer.Deferred, reactor: Any, timeout: Optional[float]) -> Any:
    if timeout:
        d.addTimeout(timeout + 1, reactor)
    return await d


async def open_unix(reactor: Any, path: str, timeout: Optional[float]) -> Any:
    try:
        return await _with_deadline(wsclient.connect_unix(reactor, path, timeout=timeout or 30), reactor, timeout)
    except Exception:
        from twisted.python.failure import Failure

        raise describe_connect_failure(path, Failure()) from None


async def open_tls(reactor: Any, endpoint: Endpoint, timeout: Optional[float], known_hosts: KnownHosts,
                   fingerprint: Optional[str], err: Any, service: str = "sysadmd") -> Any:
    """Connect to *endpoint* and check its certificate before anything else is sent."""
    try:
        conn = await _with_deadline(wsclient.connect(reactor, endpoint.url, timeout=timeout or 30), reactor, timeout)
    except Exception:
        from twisted.python.failure import Failure

        raise describe_connect_failure(endpoint.name, Failure(), service=service) from None
    try:
        note = known_hosts.verify(endpoint.name, conn.peer_fingerprint(), fingerprint)
    except ClientError:
        conn.transport.abortConnection()
        raise
    if note:
        err.write(note + "\n")
        err.flush()
    return conn


async def login(conn: Any, reactor: Any, creds: Credentials, timeout: Optional[float], target: str) -> Optional[list]:
    """Log *conn* in with *creds*; the reply args (``[token, ttl]``) or ``None`` if none given."""
    if creds.user:
        reply = await request(conn, reactor, "rpc", "auth", {"username": creds.user, "password": creds.password or ""},
                              timeout, target)
        _check_login(reply, f"login as {creds.user}")
    elif creds.token:
        reply = await request(conn, reactor, "rpc", "auth_token", {"token": creds.token}, timeout, target)
        _check_login(reply, "login with the token")
    elif creds.key is not None:
        first = await request(conn, reactor, "rpc", "auth_ssl", "", timeout, target)
        _check_login(first, f"login with key {creds.key_path}")
        challenge = first.get("args", {}).get("test_string") if isinstance(first.get("args"), dict) else None
        if not isinstance(challenge, str):
            raise ClientError(f"login with key {creds.key_path}: the server sent no challenge", EXIT_AUTH)
        from sysadmd.runtime import crypto

        answer = crypto.sign_challenge(creds.key, challenge)
        reply = await request(conn, reactor, "rpc", "auth_ssl", {"encrypted_string": answer}, timeout, target)
        _check_login(reply, f"login with key {creds.key_path}")
    else:
        return None
    return reply["args"]


def _check_login(reply: dict, what: str) -> None:
    if is_error(reply):
        code, message, detail = error_fields(reply)
        text = f"{what} refused: {detail or message or code}"
        if "no access rights" in detail:
            text += ("\n  hint: the server's administrator adds the user to a group named in FULL_ACCESS_GROUPS "
                     "or LIMITED_ACCESS_GROUPS (sysadmd.conf)")
        elif "key" in what:
            text += "\n  hint: register the public key first (`sysadm keys add FILE` while logged in another way)"
        raise ClientError(text, EXIT_AUTH)
