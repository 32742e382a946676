"""Real processes for the bridge end-to-end tests: ``twistd -n sysadm-bridge`` and
``twistd -n sysadmd`` as children, wired together with the operators' admin commands,
the ``sysadm`` CLI as a child, and :class:`RawPeer`, a bridge peer scripted frame by
frame in the test process.

Wiring, as an operator would do it (each a child process)::

    python -m sysadmd.admin.main --state-dir S bridge_export_key server.key
    python -m sysadmd.admin.main --state-dir S bridge_add office wss://127.0.0.1:PORT --verify pin
    python -m bridge.admin --state-dir B import_ssl_file office server.key --role server
    python -m bridge.admin --state-dir B import_ssl_file NICK NICK.pub --role client
    python -m sysadmd.admin.main --state-dir S import_ssl_file root NICK.pub NICK
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import defer, error, protocol, reactor, task, utils

from sysadmd.runtime import crypto
from sysadmd.client.wsclient import connect_unix, insecure_client_tls
from tests import keys_support as ks
from tests.support import short_tempdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
TWISTD = [PY, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
CLI = "from sysadmd.client.main import main; import sys; sys.exit(main())"
BRIDGE_LISTENING = re.compile(r"sysadm-bridge wss listening on 127\.0\.0\.1 port (\d+)")
SERVER_LISTENING = re.compile(r"local socket listening on unix port (\S+)")
IDENT_REQUEST = '{"args":"","id":"sysadm_bridge_request_ident","name":"identify","namespace":"rpc"}'
AUTH_ID = "sysadm-client-auth-auto"


def child_env(**extra: str) -> Dict[str, str]:
    return dict(os.environ, PYTHONPATH=ROOT, **extra)


# --- child processes ------------------------------------------------------------------------
class Child(protocol.ProcessProtocol):
    """A child whose output is kept and searched; ``ended`` fires when it is gone."""

    def __init__(self, label: str):
        self.label = label
        self.output = ""
        self.chunks: List[Tuple[float, str]] = []  # (monotonic time, stdout text)
        self.out = ""
        self.err = ""
        self.ended: defer.Deferred = defer.Deferred()
        self.exit_code: Optional[int] = None
        self._waiters: List[Tuple[re.Pattern, defer.Deferred]] = []

    def outReceived(self, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        self.chunks.append((time.monotonic(), text))
        self.out += text
        self._add(text)

    def errReceived(self, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        self.err += text
        self._add(text)

    def _add(self, text: str) -> None:
        self.output += text
        for waiter in list(self._waiters):
            match = waiter[0].search(self.output)
            if match:
                self._waiters.remove(waiter)
                waiter[1].callback(match)

    def wait_for(self, pattern: re.Pattern, timeout: float = 30) -> defer.Deferred:
        match = pattern.search(self.output)
        if match:
            return defer.succeed(match)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append((pattern, d))

        def timed_out(*_):
            raise AssertionError(f"{self.label}: {pattern.pattern!r} did not appear in {timeout} s:\n{self.output[-3000:]}")

        return d.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)

    def processEnded(self, reason) -> None:
        code = reason.value.exitCode
        self.exit_code = code if code is not None else -(reason.value.signal or 0)
        waiters, self._waiters = self._waiters, []
        for pattern, d in waiters:
            d.errback(AssertionError(f"{self.label} exited before {pattern.pattern!r}:\n{self.output[-3000:]}"))
        self.ended.callback(self.exit_code)

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass


def spawn(testcase: Any, label: str, argv: List[str], env: Optional[Dict[str, str]] = None,
          path: str = ROOT, timeout: Optional[float] = None) -> Child:
    """Start *argv*; it is SIGKILLed at cleanup (or after *timeout* s) if still running."""
    child = Child(label)
    reactor.spawnProcess(child, argv[0], argv, env=env or child_env(), path=path)
    watchdog = reactor.callLater(timeout, child.signal, "KILL") if timeout else None

    def cleanup():
        if not child.ended.called:
            child.signal("KILL")
            return child.ended
        return None

    def ended(result):
        if watchdog is not None and watchdog.active():
            watchdog.cancel()
        return result

    child.ended.addBoth(ended)
    testcase.addCleanup(cleanup)
    return child


@defer.inlineCallbacks
def run_command(*argv: str, timeout: float = 30):
    """``python ARGV…`` to completion; fires with ``(stdout, stderr)``, fails on a non-zero exit."""
    d = utils.getProcessOutputAndValue(PY, list(argv), env=child_env(), path=ROOT)
    out, err, code = yield d.addTimeout(timeout, reactor)
    if code != 0:
        raise AssertionError(f"{' '.join(argv)} exited {code}:\n{out.decode()}{err.decode()}")
    return out.decode(), err.decode()


@defer.inlineCallbacks
def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05):
    """Poll *check* (may return a Deferred) until it is truthy; fires with its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = yield defer.maybeDeferred(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        yield task.deferLater(reactor, interval, lambda: None)


# --- the three parties ------------------------------------------------------------------------
class BridgeHarness:
    """What the process harnesses share: key files of tests.keys_support's named keys under
    ``self.base``, and a real sysadm-bridge (``self.bridge_state``, ``self.config``) with its
    admin command."""

    testcase: Any
    base: str
    home: str
    bridge_state: str
    config: str
    bridge: Any
    port: Optional[int]

    def key_file(self, name: str) -> str:
        """The private key *name* (tests.keys_support) as a PEM file for the CLI."""
        path = os.path.join(self.base, f"{name}.pem")
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(crypto.private_pem(ks.private_key(name)))
        return path

    def public_file(self, name: str) -> str:
        path = os.path.join(self.base, f"{name}.pub")
        with open(path, "w") as f:
            f.write(ks.pem_of(name))
        return path

    def bridge_admin(self, *args: str) -> defer.Deferred:
        return run_command("-m", "bridge.admin", "--state-dir", self.bridge_state, *args)

    def sysadm(self, *argv: str, timeout: float = 30) -> defer.Deferred:
        """``sysadm ARGV…`` as a child (HOME in ``self.home``); fires with its :class:`Child`."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": ROOT, "HOME": self.home,
               "XDG_CONFIG_HOME": os.path.join(self.home, "cfg"), "XDG_STATE_HOME": os.path.join(self.home, "state"),
               "LANG": "C.UTF-8"}
        child = spawn(self.testcase, "sysadm", [PY, "-c", CLI, *argv], env=env, path=self.home, timeout=timeout)
        return child.ended.addCallback(lambda _: child)

    @defer.inlineCallbacks
    def start_bridge(self, port: int = 0):
        """Start the bridge (on *port*, or a free one); fires when it listens.  The test
        class's ``tls_engine``, if any, is its BRIDGE_TLS_ENGINE."""
        config = self.config
        engine = getattr(self.testcase, "tls_engine", None)
        if engine:
            config = os.path.join(self.base, f"bridge-{engine}.conf")
            with open(self.config) as f, open(config, "w") as out:
                out.write(f.read() + f"\nBRIDGE_TLS_ENGINE={engine}\n")
        self.bridge = spawn(self.testcase, "sysadm-bridge", TWISTD + [
            "sysadm-bridge", "--config", config, "--port", f"tcp:{port}:interface=127.0.0.1",
            "--state-dir", self.bridge_state])
        match = yield self.bridge.wait_for(BRIDGE_LISTENING)
        self.port = int(match.group(1))
        return self.bridge

    @defer.inlineCallbacks
    def stop_bridge(self):
        """SIGTERM, as an operator's restart does; fires when the process is gone."""
        self.bridge.signal("TERM")
        yield self.bridge.ended.addTimeout(20, reactor)


class Cluster(BridgeHarness):
    """One sysadm-bridge and one sysadmd, real twistd children on loopback, linked."""

    def __init__(self, testcase: Any):
        self.testcase = testcase
        self.base = short_tempdir(testcase, "e2e")
        self.bridge_state = os.path.join(self.base, "b")
        self.server_state = os.path.join(self.base, "s")
        self.socket = os.path.join(self.server_state, "sysadmd.sock")
        self.home = os.path.join(self.base, "home")
        os.makedirs(self.home)
        self.config = os.path.join(self.base, "empty.conf")  # never /etc/*.conf of this machine
        with open(self.config, "w") as f:
            f.write("# every key keeps its default\n")
        self.server_config: Optional[str] = None  # sysadmd's own config file, when a test needs one
        self.bridge: Optional[Child] = None
        self.server: Optional[Child] = None
        self.port: Optional[int] = None
        self._local: Any = None

    # admin commands

    def sysadmd_admin(self, *args: str) -> defer.Deferred:
        return run_command("-m", "sysadmd.admin.main", "--state-dir", self.server_state, *args)

    def register_on_bridge(self, name: str) -> defer.Deferred:
        return self.bridge_admin("import_ssl_file", name, self.public_file(name), "--role", "client")

    def register_on_server(self, name: str) -> defer.Deferred:
        return self.sysadmd_admin("import_ssl_file", "root", self.public_file(name), name)

    # processes

    @defer.inlineCallbacks
    def start_server(self):
        self.server = spawn(self.testcase, "sysadmd", TWISTD + [
            "sysadmd", "--config", self.server_config or self.config, "--port", "tcp:0:interface=127.0.0.1",
            "--state-dir", self.server_state, "--socket", self.socket])
        yield self.server.wait_for(SERVER_LISTENING)
        self._local = None
        return self.server

    @defer.inlineCallbacks
    def start(self, *clients: str, bridge_only: Tuple[str, ...] = (), server_only: Tuple[str, ...] = ()):
        """Bridge, then the admin wiring (link, server key, the keys of *clients* on both
        sides, *bridge_only* and *server_only* on one), then sysadmd.

        Keys for the server go in before it starts: the bridge asks for its key list right
        after it authenticates (and then only every KEYS_REFRESH_INTERVAL).  Fires once the
        server's bridge link has authenticated.
        """
        yield self.start_bridge()
        server_key = os.path.join(self.base, "server.key")
        yield self.sysadmd_admin("bridge_export_key", server_key)
        server_side = [lambda: self.sysadmd_admin("bridge_add", "office", f"wss://127.0.0.1:{self.port}", "--verify", "pin")]
        bridge_side = [lambda: self.bridge_admin("import_ssl_file", "office", server_key, "--role", "server")]
        for name in clients + server_only:
            server_side.append(lambda name=name: self.register_on_server(name))
        for name in clients + bridge_only:
            bridge_side.append(lambda name=name: self.register_on_bridge(name))
        # The two state directories are separate databases: their commands run side by side.
        yield defer.gatherResults([_in_turn(server_side), _in_turn(bridge_side)], consumeErrors=True)
        yield self.start_server()
        yield self.wait_link(lambda link: link["authenticated"], "the server's link to authenticate")

    # the server's view, through its local socket
    @defer.inlineCallbacks
    def link_status(self):
        """``list_bridges`` for the link ``office``, asked over the daemon's Unix socket."""
        if self._local is None or self._local.closed.called:
            self._local = yield connect_unix(reactor, self.socket, timeout=5)
            local = self._local
            self.testcase.addCleanup(lambda: local.closed if local.closed.called else local.close())
        reply = yield self._local.call("rpc", "settings", {"action": "list_bridges"})
        assert reply["name"] == "response", reply
        return reply["args"]["bridges"]["office"]

    def wait_link(self, check: Callable[[dict], bool], what: str, timeout: float = 15) -> defer.Deferred:
        @defer.inlineCallbacks
        def probe():
            link = yield self.link_status()
            return link if check(link) else None

        return wait_until(probe, timeout, what, interval=0.05)

    # the client
    def bridged(self, key: str, *argv: str, **kw: Any) -> defer.Deferred:
        return self.sysadm("--bridge", f"127.0.0.1:{self.port}", "--key", self.key_file(key), *argv, **kw)

    @defer.inlineCallbacks
    def peer(self) -> Any:
        """A :class:`RawPeer` connected to the bridge; aborted at cleanup."""
        factory = WebSocketClientFactory(f"wss://127.0.0.1:{self.port}/", reactor=reactor)
        factory.protocol = RawPeer
        factory.noisy = False
        factory.opened = defer.Deferred()
        factory.setProtocolOptions(openHandshakeTimeout=10, closeHandshakeTimeout=3)
        connectWS(factory, insecure_client_tls(), timeout=10)
        peer = yield factory.opened.addTimeout(15, reactor)
        self.testcase.addCleanup(peer.abort)
        return peer


@defer.inlineCallbacks
def _in_turn(commands: List[Callable[[], defer.Deferred]]):
    # One database, one writer at a time: no "database is locked" between two commands.
    for command in commands:
        yield command()


# --- a scripted bridge peer ---------------------------------------------------------------------
class RawPeer(WebSocketClientProtocol):
    """Every text frame in is kept verbatim (with its arrival time); tests wait on them."""

    def __init__(self):
        super().__init__()
        self.frames: List[str] = []
        self.times: List[float] = []
        self.closed: defer.Deferred = defer.Deferred()
        self.close_code: Optional[int] = None
        self.close_reason: Optional[str] = None
        self.key_list: Optional[List[str]] = None  # when set, list_ssl_checksums is answered with it
        self.on_frame: Optional[Callable[[str], None]] = None  # called with every frame (e.g. to relay it)
        self._waiters: List[list] = []

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        text = payload.decode("utf-8", "replace")
        self.frames.append(text)
        self.times.append(time.monotonic())
        if self.key_list is not None and text.startswith("{") and '"list_ssl_checksums"' in text:
            request = json.loads(text)
            self.send(json.dumps({"args": {"md5_keys": self.key_list}, "id": request["id"], "name": "response",
                                  "namespace": "rpc"}, separators=(",", ":"), sort_keys=True))
        if self.on_frame is not None:
            self.on_frame(text)
        for waiter in list(self._waiters):
            index = len(self.frames) - 1
            if index >= waiter[1]:
                value = waiter[0](text)
                if value is not None:
                    self._waiters.remove(waiter)
                    waiter[2].callback((value, index))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self.close_code, self.close_reason = code, reason
        waiters, self._waiters = self._waiters, []
        for _, _, d, what in waiters:
            d.errback(AssertionError(f"the bridge closed the connection ({code}: {reason}) while waiting for {what}"))
        if not self.factory.opened.called:
            self.factory.opened.errback(AssertionError(f"connection to the bridge failed ({code}: {reason})"))
        if not self.closed.called:
            self.closed.callback((code, reason))

    def send(self, text: str) -> None:
        self.sendMessage(text.encode("utf-8"), isBinary=False)

    def abort(self) -> defer.Deferred:
        if not self.closed.called:
            self.dropConnection(abort=True)
        return self.closed

    def wait_for(self, match: Callable[[str], Any], what: str, start: int = 0, timeout: float = 10) -> defer.Deferred:
        """Fires with ``(value, index)`` for the first frame from *start* on where
        ``match(frame)`` is not None."""
        for index in range(start, len(self.frames)):
            value = match(self.frames[index])
            if value is not None:
                return defer.succeed((value, index))
        d: defer.Deferred = defer.Deferred()
        if self.closed.called:
            d.errback(AssertionError(f"the connection is closed ({self.close_code}); no {what}"))
            return d
        waiter = [match, start, d, what]
        self._waiters.append(waiter)

        def timed_out(*_):
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            raise AssertionError(f"no {what} within {timeout} s; frames: {self.frames[start:][-8:]!r}")

        return d.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)

    def available_lists(self, start: int = 0) -> List[List[str]]:
        return [ids for ids in map(available, self.frames[start:]) if ids is not None]


# --- frame readers ------------------------------------------------------------------------------
def available(frame: str) -> Optional[List[str]]:
    """The ID list of a ``bridge`` event frame, else None."""
    if not frame.startswith("{"):
        return None
    message = json.loads(frame)
    if message.get("namespace") == "events" and message.get("name") == "bridge":
        return message["args"]["available_connections"]
    return None


def bridge_reply(request_id: str) -> Callable[[str], Optional[dict]]:
    """A direct (unprefixed) reply from the bridge with id *request_id*."""
    def match(frame: str) -> Optional[dict]:
        if frame.startswith("{"):
            message = json.loads(frame)
            if message.get("id") == request_id and message.get("name") in ("response", "error"):
                return message
        return None
    return match


def body_from(source: str) -> Callable[[str], Optional[str]]:
    """The payload of a relay frame from *source*, raw."""
    prefix = source + "\n"
    return lambda frame: frame[len(prefix):] if frame.startswith(prefix) else None


def decode_body(body: str) -> dict:
    """A relayed payload: plain JSON, or base64 of it (upstream's bridge mode)."""
    return json.loads(body if body.startswith("{") else base64.b64decode(body).decode("utf-8"))


def reply_from(source: str, request_id: str) -> Callable[[str], Optional[dict]]:
    read = body_from(source)

    def match(frame: str) -> Optional[dict]:
        body = read(frame)
        if body is None:
            return None
        message = decode_body(body)
        return message if message.get("id") == request_id else None
    return match


def compact(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"), sort_keys=True)


# --- the client's steps -------------------------------------------------------------------------
@defer.inlineCallbacks
def bridge_login(peer: RawPeer, bridge_key: str, server_keys: List[str], hostname: str = "e2e-client",
                 role: str = "client"):
    """identify as *role*, auth_ssl to the bridge with *bridge_key*, report the MD5s of
    *server_keys*; fires with the first ``available_connections`` list."""
    yield peer.wait_for(lambda f: f if f == IDENT_REQUEST else None, "the bridge's identify request")
    peer.key_list = [ks.md5_of(name) for name in server_keys]
    peer.send(compact({"args": {"hostname": hostname, "type": role}, "id": "sysadm_bridge_request_ident",
                       "name": "response", "namespace": "rpc"}))
    mark = len(peer.frames)
    peer.send(compact({"args": "", "id": AUTH_ID, "name": "auth_ssl", "namespace": "rpc"}))
    stage1, _ = yield peer.wait_for(bridge_reply(AUTH_ID), "the bridge's auth_ssl challenge", start=mark)
    mark = len(peer.frames)
    signed = crypto.sign_challenge(ks.private_key(bridge_key), stage1["args"]["test_string"])
    peer.send(compact({"args": {"encrypted_string": signed}, "id": AUTH_ID, "name": "auth_ssl", "namespace": "rpc"}))
    stage2, _ = yield peer.wait_for(bridge_reply(AUTH_ID), "the bridge's auth_ssl verdict", start=mark)
    assert stage2["name"] == "response", stage2
    ids, _ = yield peer.wait_for(available, "the first available_connections", start=mark)
    return ids


@defer.inlineCallbacks
def server_login(peer: RawPeer, server_id: str, key: str):
    """identify + the md5_key auth_ssl with the server behind the bridge; fires with the token."""
    mark = len(peer.frames)
    peer.send(f"{server_id}\n" + compact({"args": "", "id": "sysadm_client_identify", "name": "identify", "namespace": "rpc"}))
    ident, _ = yield peer.wait_for(reply_from(server_id, "sysadm_client_identify"), "the server's identify reply", start=mark)
    assert ident["args"]["type"] == "server", ident
    peer.send(f"{server_id}\n" + compact({"args": {"md5_key": ks.md5_of(key)}, "id": AUTH_ID, "name": "auth_ssl",
                                          "namespace": "rpc"}))
    stage1, _ = yield peer.wait_for(reply_from(server_id, AUTH_ID), "the server's stage-1 reply", start=mark)
    challenge = base64.b64decode(stage1["args"]["test_string"]).decode("latin-1")
    mark = len(peer.frames)
    stage2 = compact({"args": {"encrypted_string": crypto.sign_challenge(ks.private_key(key), challenge)}, "id": AUTH_ID,
                      "name": "auth_ssl", "namespace": "rpc"})
    peer.send(f"{server_id}\n" + base64.b64encode(stage2.encode()).decode())
    reply, _ = yield peer.wait_for(reply_from(server_id, AUTH_ID), "the server's stage-2 reply", start=mark)
    assert reply["name"] == "response", reply
    return reply["args"][0]


@defer.inlineCallbacks
def server_call(peer: RawPeer, server_id: str, namespace: str, name: str, args: Any, request_id: str):
    """One base64 request to a server we logged in to; fires with the decoded reply."""
    mark = len(peer.frames)
    body = compact({"args": args, "id": request_id, "name": name, "namespace": namespace})
    peer.send(f"{server_id}\n" + base64.b64encode(body.encode()).decode())
    reply, _ = yield peer.wait_for(reply_from(server_id, request_id), f"the reply to {namespace}/{name}", start=mark)
    return reply


__all__ = ["Cluster", "RawPeer", "available", "body_from", "bridge_login", "bridge_reply", "compact", "decode_body",
           "reply_from", "server_call", "server_login", "wait_until"]
