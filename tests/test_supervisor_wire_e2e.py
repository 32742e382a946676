"""The seed's supervisor wire against a real in-process daemon (real supervisor, real
processes, real SQLite): the seed's exchanges verbatim from a plain socket client, the uid
check with a real unprivileged user over TCP and the Unix socket, garbage that leaves the
connection and the daemon working, the configuration and a busy port."""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import time

from twisted.internet import defer, threads
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from sysadmd import config as configmod
from sysadmd.runtime.configfile import ConfigError
from tests.support import make_config, open_client, short_tempdir, start_daemon
from tests.test_dispatcher_durability import eventually
from tests.test_supervisor_wire import UnprivilegedUser, plain_exchange, split_answers


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


NGINX = {"command": ["/bin/sleep", "60"], "user": "root", "autostart": False, "startsecs": 0.2, "stopwaitsecs": 2}


def read_cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


class WireClient:
    """A plain blocking socket client (used from a thread): one query, one answer."""

    def __init__(self, kind: str, where):
        if kind == "tcp":
            self.sock = socket.create_connection(("127.0.0.1", where), timeout=10)
        else:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(10)
            self.sock.connect(where)
        self.pending = b""

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def answer(self) -> bytes:
        while b";;" not in self.pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; had {self.pending[:200]!r}")
            self.pending += chunk
        end = self.pending.index(b";;") + 2
        out, self.pending = self.pending[:end], self.pending[end:]
        return out

    def ask(self, raw: bytes) -> bytes:
        self.send(raw)
        return self.answer()

    def close(self) -> None:
        self.sock.close()


class DaemonWireTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def start(self, **overrides):
        state = short_tempdir(self)
        sockets = short_tempdir(self, "sw")
        os.chmod(sockets, 0o755)  # other local users must reach the socket
        self.socket_path = os.path.join(sockets, "supervisor.sock")
        cfg = make_config(state, SUPERVISOR_SOCKET=self.socket_path, **overrides)
        self.running = yield start_daemon(self, cfg)
        return self.running

    @property
    def port(self) -> int:
        return self.running.daemon.listeners["supervisor-tcp"].port.getHost().port

    def client(self, kind="tcp"):
        c = WireClient(kind, self.port if kind == "tcp" else self.socket_path)
        self.addCleanup(c.close)
        return c

    def ask(self, client, raw: bytes):
        return threads.deferToThread(client.ask, raw)

    @defer.inlineCallbacks
    def wait_state(self, client, query: bytes, state: str):
        deadline = time.monotonic() + 10
        while True:
            raw = yield self.ask(client, query)
            status = json.loads(unb64(json.loads(raw[:-2])["data"]))
            if status["state"] == state or time.monotonic() > deadline:
                self.assertEqual(status["state"], state, status)
                return status
            yield threads.deferToThread(time.sleep, 0.05)

    @defer.inlineCallbacks
    def test_the_seeds_exchanges_verbatim(self):
        yield self.start()
        host = self.running.daemon.listeners["supervisor-tcp"].port.getHost()
        self.assertEqual(host.host, "127.0.0.1")
        self.assertEqual(stat.S_IMODE(os.stat(self.socket_path).st_mode), 0o666)
        for kind in ("tcp", "unix"):
            c = self.client(kind)
            push = json.dumps({"command": "push", "job": b64("nginx"), "data": b64(json.dumps(NGINX))},
                              separators=(",", ":")).encode() + b";;"
            self.assertEqual((yield self.ask(c, push)), b'{"response":"success"};;')
            self.assertEqual((yield self.ask(c, push)), b'{"response":"redundant"};;')  # the same definition
            listed = yield self.ask(c, b'{"command":"list"};;')
            self.assertEqual(listed, b'{"response":"list","list":"' + b64('{"jobs":[{"name":"nginx"}]}').encode()
                             + b'"};;')
            self.assertEqual((yield self.ask(c, b'{"command":"start","job":"bmdpbng="};;')), b'{"response":"success"};;')
            self.assertEqual((yield self.ask(c, b'{"command":"start","job":"bmdpbng="};;')),
                             b'{"response":"redundant"};;')
            status = yield self.wait_state(c, b'{"command":"status","job":"bmdpbng="};;', "RUNNING")
            self.assertEqual(status["name"], "nginx")
            # RUNNING may be seen while the child is still inside execve (its cmdline reads
            # empty until the loader has set it up): read until it is set.
            cmdline = yield eventually(lambda: read_cmdline(status["pid"]), timeout=10, what="the program's cmdline")
            self.assertEqual(cmdline, b"/bin/sleep\x0060\x00")
            # the seed's own sample query, byte for byte
            self.assertEqual((yield self.ask(c, b'{"command":"kill","job":"bmdpbng="};;')), b'{"response":"success"};;')
            yield self.wait_state(c, b'{"command":"status","job":"bmdpbng="};;', "STOPPED")
            pulled = json.loads((yield self.ask(c, b'{"command":"pull","job":"bmdpbng="};;'))[:-2])
            self.assertEqual((list(pulled), pulled["response"], pulled["job"]), (["response", "job", "data"],
                                                                                 "file", "bmdpbng="))
            self.assertEqual(json.loads(unb64(pulled["data"]))["command"], NGINX["command"])
            self.assertEqual((yield self.ask(c, b'{"command":"delete","job":"bmdpbng="};;')),
                             b'{"response":"success"};;')
            # the seed's own failure answer: a job that does not exist
            gone = json.loads((yield self.ask(c, b'{"command":"kill","job":"bmdpbng="};;'))[:-2])
            self.assertEqual(gone["response"], "fail")
            self.assertIn("nginx", unb64(gone["error"]))
            self.assertEqual((yield self.ask(c, b'{"command":"list"};;')),
                             b'{"response":"list","list":"' + b64('{"jobs":[]}').encode() + b'"};;')

    @defer.inlineCallbacks
    def test_garbage_keeps_the_connection_and_the_daemon(self):
        yield self.start()
        c = self.client()
        garbage = [b"\x00\xff\xfe;;", b"{;;", b'{"command":"rm -rf /"};;', b'[[[[' * 50000 + b";;",
                   b'{"command":"kill","job":"not base64!"};;',
                   b'{"command":"push","job":"eA==","data":"' + b64("{not json").encode() + b'"};;',
                   b'{"command":"push","job":"Li4vZXRj","data":"' + b64("{}").encode() + b'"};;']
        expected = ["invalid", "invalid", "invalid", "invalid", "fail", "fail", "fail"]
        for raw, kind in zip(garbage, expected):
            answer = json.loads((yield self.ask(c, raw))[:-2])
            self.assertEqual(answer["response"], kind, (raw[:60], unb64(answer.get("error", ""))))
            self.assertTrue(unb64(answer["error"]))
        # 2 MiB without ';;': one invalid, the rest dropped up to its ';;', then the connection goes on
        yield threads.deferToThread(c.send, b"a" * (2 * 1024 * 1024) + b";;")
        answer = json.loads((yield threads.deferToThread(c.answer))[:-2])
        self.assertEqual(answer["response"], "invalid")
        self.assertIn("no ';;' within 1048576 bytes", unb64(answer["error"]))
        self.assertEqual((yield self.ask(c, b'{"command":"list"};;'))[:24], b'{"response":"list","list')
        # a definition near the limit still fits (the bound includes the base64)
        big = dict(NGINX, environment={"PAD": "x" * 600_000})
        raw = json.dumps({"command": "push", "job": b64("big"), "data": b64(json.dumps(big))}).encode() + b";;"
        self.assertLess(len(raw), 1024 * 1024)
        answer = json.loads((yield self.ask(c, raw))[:-2])
        self.assertIn(answer["response"], ("success", "fail"))  # the core may refuse its size, by name
        # the daemon's other doors are still open
        client = yield open_client(self, self.running)
        reply = yield client.call("rpc", "identify", "")
        self.assertEqual(reply["args"]["type"], "server")

    @defer.inlineCallbacks
    def test_a_real_unprivileged_user(self):
        user = UnprivilegedUser(self)
        yield self.start(LIMITED_ACCESS_GROUPS="nogroup-" + user.name)  # the user is in no access group
        admin = self.client()
        push = json.dumps({"command": "push", "job": b64("nginx"), "data": b64(json.dumps(NGINX))}).encode() + b";;"
        self.assertEqual((yield self.ask(admin, push)), b'{"response":"success"};;')
        for kind, where in (("tcp", self.port), ("unix", self.socket_path)):
            raw = yield threads.deferToThread(plain_exchange, kind, where, b'{"command":"list"};;', 1, user.uid)
            [answer] = split_answers(raw)
            self.assertEqual(answer["response"], "fail", kind)
            self.assertIn(f"uid {user.uid} ({user.name}) has no access", unb64(answer["error"]))

    @defer.inlineCallbacks
    def test_a_real_limited_user(self):
        user = UnprivilegedUser(self)
        yield self.start(LIMITED_ACCESS_GROUPS=user.name)  # useradd --user-group: its own group
        admin = self.client()
        push = json.dumps({"command": "push", "job": b64("nginx"), "data": b64(json.dumps(NGINX))}).encode() + b";;"
        self.assertEqual((yield self.ask(admin, push)), b'{"response":"success"};;')
        for kind, where in (("tcp", self.port), ("unix", self.socket_path)):
            raw = yield threads.deferToThread(
                plain_exchange, kind, where, b'{"command":"status","job":"bmdpbng="};;{"command":"list"};;'
                b'{"command":"pull","job":"bmdpbng="};;{"command":"start","job":"bmdpbng="};;'
                b'{"command":"delete","job":"bmdpbng="};;', 5, user.uid)
            answers = split_answers(raw)
            self.assertEqual([a["response"] for a in answers], ["status", "list", "file", "fail", "fail"], kind)
            self.assertIn("start: needs full access", unb64(answers[3]["error"]))
        status = json.loads(unb64(json.loads((yield self.ask(admin, b'{"command":"status","job":"bmdpbng="};;'))[:-2])
                                  ["data"]))
        self.assertEqual(status["state"], "STOPPED")  # the limited user's start never happened

    @defer.inlineCallbacks
    def test_a_busy_port_is_logged_and_the_daemon_runs_on(self):
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        self.addCleanup(taken.close)
        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        yield self.start(SUPERVISOR_PORT=taken.getsockname()[1])
        self.assertIsNone(self.running.daemon.listeners["supervisor-tcp"].port)
        self.assertTrue(any("supervisor wire cannot listen" in (e.get("log_format") or "").replace(
            "{label}", e.get("label", "")) for e in seen))
        c = self.client("unix")  # the socket still serves
        self.assertEqual((yield self.ask(c, b'{"command":"list"};;'))[:24], b'{"response":"list","list')
        client = yield open_client(self, self.running)
        reply = yield client.call("rpc", "identify", "")
        self.assertEqual(reply["args"]["type"], "server")


class ConfigTests(unittest.TestCase):
    def load(self, **raw):
        values = {"STATE_DIR": "/tmp/sw-config-test"}
        values.update({k: str(v) for k, v in raw.items()})
        return configmod.load(None, values)

    def test_defaults_and_none(self):
        cfg = self.load()
        self.assertEqual(cfg.supervisor_port, 7777)
        self.assertEqual(cfg.supervisor_socket, "/tmp/sw-config-test/supervisor.sock")
        self.assertEqual((cfg.supervisor_max_connections, cfg.supervisor_max_message_bytes), (64, 1024 * 1024))
        cfg = self.load(SUPERVISOR_PORT="none", SUPERVISOR_SOCKET="none")
        self.assertEqual((cfg.supervisor_port, cfg.supervisor_socket), (None, ""))
        self.assertEqual(self.load(SUPERVISOR_PORT="0").supervisor_port, 0)

    def test_no_address_can_be_given(self):
        for text in ("0.0.0.0:7777", "tcp:7777:interface=0.0.0.0", "70000", "-1", "seven"):
            with self.assertRaises(ConfigError) as caught:
                self.load(SUPERVISOR_PORT=text)
            self.assertIn("SUPERVISOR_PORT", str(caught.exception))
            self.assertIn("127.0.0.1 only", str(caught.exception))

    @defer.inlineCallbacks
    def test_none_serves_nothing(self):
        state = short_tempdir(self)
        running = yield start_daemon(self, make_config(state, SUPERVISOR_PORT="none", SUPERVISOR_SOCKET="none"))
        self.assertEqual(running.daemon.supervisor_wire, ())
        self.assertFalse([name for name in running.daemon.listeners if name.startswith("supervisor")])
