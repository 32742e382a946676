"""Helpers shared by the tests: real daemons in-process on loopback, clients, keys."""

from __future__ import annotations

import shutil
import tempfile
import os
from typing import Any, Dict, List, Optional

import treq
from twisted.internet import defer, reactor, ssl
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from sysadmd import config as configmod
from sysadmd import assembly
from sysadmd.assembly import build
from sysadmd.client.wsclient import connect, connect_unix


# PF_EXITING in the task flags (field 9 of /proc/PID/stat): the process is inside exit(),
# after a SIGKILL for instance, and can never run its own code again.  Between freeing its
# memory and becoming a zombie it still shows as running; counting it alive made kill tests
# flaky on a loaded machine.
PF_EXITING = 0x4


def alive(pid: Optional[int]) -> bool:
    """Whether *pid* is a living process: not gone, not a zombie, not already exiting."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    try:
        return fields[0] not in ("Z", "X", "x") and not int(fields[6]) & PF_EXITING
    except (IndexError, ValueError):
        return False


def short_tempdir(testcase, prefix: str = "sd") -> str:
    """A temp dir short enough for Unix socket paths, removed after the test."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    testcase.addCleanup(shutil.rmtree, path, True)
    return path


def make_config(state_dir: str, **overrides: Any) -> configmod.Config:
    # SUPERVISOR_PORT 0: any free loopback port, so test daemons never contend for 7777
    raw: Dict[str, str] = {"PORT": "tcp:0:interface=127.0.0.1", "STATE_DIR": state_dir, "SUPERVISOR_PORT": "0"}
    raw.update({k.upper(): str(v) for k, v in overrides.items()})
    return configmod.load(None, raw)


class FakePasswords:
    """Password checker for tests that are not about PAM: {user: password}."""

    def __init__(self, accounts: Dict[str, str], delay: float = 0.0):
        self.accounts = accounts
        self.delay = delay
        self.calls = 0

    def check(self, user: str, password: str) -> defer.Deferred:
        self.calls += 1
        ok = self.accounts.get(user) == password
        if self.delay:
            from twisted.internet import task

            return task.deferLater(reactor, self.delay, lambda: ok)
        return defer.succeed(ok)


def unit_server(cfg: configmod.Config, db: Any, clock: Any, **kwargs: Any) -> Any:
    """The daemon's server state on *clock* (a Clock) without subsystems or listeners,
    built by the real assembly (:func:`sysadmd.assembly.build_server`)."""
    return assembly.build_server(cfg, db, clock, **kwargs)


def add_key_login(server: Any) -> Any:
    """Key logins, ``rpc/settings`` and its key actions on a :func:`unit_server`, as
    :func:`sysadmd.assembly.build` adds them; returns ``(keys, key_login)``."""
    return assembly.add_key_login(server, assembly.add_settings(server))


class RunningDaemon:
    def __init__(self, daemon: Any, cfg: configmod.Config):
        self.daemon = daemon
        self.server = daemon.server
        self.config = cfg

    @property
    def port(self) -> int:
        return self.daemon.listeners["wss"].port.getHost().port

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/"

    def connect(self) -> defer.Deferred:
        return connect(reactor, self.url)

    def connect_unix(self) -> defer.Deferred:
        return connect_unix(reactor, self.config.socket)


@defer.inlineCallbacks
def start_daemon(testcase, cfg: Optional[configmod.Config] = None, **server_kwargs: Any):
    """Build and start a real daemon on 127.0.0.1:0; stopped at test cleanup."""
    if cfg is None:
        cfg = make_config(short_tempdir(testcase))
    daemon = build(cfg, reactor, **server_kwargs)
    daemon.startService()
    testcase.addCleanup(daemon.stopService)
    for listener in daemon.listeners.values():
        yield listener.ready
    return RunningDaemon(daemon, cfg)


@defer.inlineCallbacks
def open_client(testcase, running: RunningDaemon, unix: bool = False):
    client = yield (running.connect_unix() if unix else running.connect())
    testcase.addCleanup(client.close)
    return client


@defer.inlineCallbacks
def logged_in_client(testcase, running: RunningDaemon, user: str, password: str):
    """A wss client of *running* logged in as *user* (the test fails if the login does)."""
    client = yield open_client(testcase, running)
    reply = yield client.call("rpc", "auth", {"username": user, "password": password})
    testcase.assertEqual(reply["name"], "response", reply)
    return client


class RecordingChannel:
    """A session's channel that keeps what was sent and how it was closed."""

    def __init__(self) -> None:
        self.sent: List[str] = []
        self.closed_with: Any = None

    def send_text(self, text: str) -> None:
        self.sent.append(text)

    def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)


@implementer(IPolicyForHTTPS)
class PinnedPolicy:
    """Trust exactly the daemon's own certificate, for the name "localhost"."""

    def __init__(self, cert_pem: bytes):
        self.root = ssl.Certificate.loadPEM(cert_pem)

    def creatorForNetloc(self, hostname, port):
        return ssl.optionsForClientTLS("localhost", trustRoot=self.root)


def server_cert(running: RunningDaemon) -> bytes:
    with open(os.path.join(running.config.state_dir, "server.crt"), "rb") as f:
        return f.read()


def http_client(testcase, running: RunningDaemon, persistent: bool = True) -> treq.client.HTTPClient:
    """A treq client for the daemon's HTTPS port that trusts only its certificate."""
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    testcase.addCleanup(pool.closeCachedConnections)
    return treq.client.HTTPClient(Agent(reactor, contextFactory=PinnedPolicy(server_cert(running)), pool=pool))
