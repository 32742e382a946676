"""Transport limits and the local socket, over real sockets; session timers on a Clock."""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import sys
import time

import pytest
from twisted.internet import defer, reactor, task, utils
from twisted.internet.task import Clock
from twisted.trial import unittest

from sysadmd.client.wsclient import connect
from sysadmd.session import Identity, Session
from sysadmd.wire.close import CLOSE_GOING_AWAY, CLOSE_POLICY
from tests.support import FakePasswords, RecordingChannel, make_config, open_client, short_tempdir, start_daemon


def wait_until(predicate, timeout: float = 10.0, step: float = 0.02) -> defer.Deferred:
    """Fires when *predicate()* is true; fails after *timeout* seconds."""

    @defer.inlineCallbacks
    def poll():
        deadline = reactor.seconds() + timeout
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError(f"condition not met within {timeout} s")
            yield task.deferLater(reactor, step, lambda: None)

    return poll()


class WebSocketLimitTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        cfg = make_config(short_tempdir(self), MAX_MESSAGE_BYTES=4096, MAX_CONNECTIONS=3, MAX_SESSION_BUFFER_BYTES=65536)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))

    @defer.inlineCallbacks
    def test_message_over_the_limit_closes_with_1009(self):
        client = yield open_client(self, self.running)
        reply = yield client.call("rpc", "identify", {"pad": "x" * 3000})
        self.assertEqual(reply["name"], "response")
        client.send_text(json.dumps({"namespace": "rpc", "name": "identify", "id": "big", "args": "x" * 5000}))
        code, _ = yield client.closed
        self.assertEqual(code, 1009)
        yield wait_until(lambda: len(self.running.server.sessions) == 0)

    @defer.inlineCallbacks
    def test_binary_frames_are_read_as_text(self):
        client = yield open_client(self, self.running)
        d = defer.Deferred()
        client.pending["b1"] = d
        client.sendMessage(b'{"namespace":"rpc","name":"identify","id":"b1","args":{}}', isBinary=True)
        reply = yield d
        self.assertEqual(reply["name"], "response")
        self.assertEqual(reply["args"]["type"], "server")

    @defer.inlineCallbacks
    def test_any_path_and_any_origin_are_accepted(self):
        url = f"wss://127.0.0.1:{self.running.port}/some/deep/path?x=1"
        client = yield connect(reactor, url, timeout=10, origin="https://elsewhere.example")
        self.addCleanup(client.close)
        reply = yield client.call("rpc", "identify", "")
        self.assertEqual(reply["name"], "response")

    @defer.inlineCallbacks
    def test_connections_over_the_limit_are_closed_with_1013(self):
        clients = []
        for _ in range(3):
            clients.append((yield open_client(self, self.running)))
        extra = yield open_client(self, self.running)
        code, reason = yield extra.closed
        self.assertEqual(code, 1013)
        self.assertIn("MAX_CONNECTIONS=3", reason)
        # The others are unaffected, and a freed slot is usable again.
        reply = yield clients[0].call("rpc", "identify", "")
        self.assertEqual(reply["name"], "response")
        yield clients[1].close()
        yield wait_until(lambda: len(self.running.server.sessions) == 2)
        again = yield open_client(self, self.running)
        reply = yield again.call("rpc", "identify", "")
        self.assertEqual(reply["name"], "response")

    @defer.inlineCallbacks
    def test_slow_reader_is_closed_and_others_keep_working(self):
        server = self.running.server
        slow = yield open_client(self, self.running)
        other = yield open_client(self, self.running)
        yield wait_until(lambda: len(server.sessions) == 2)
        # Find the slow client's session: each session sends its id; see what `slow` gets.
        marker = defer.Deferred()
        slow.event_listeners.append(lambda m: marker.called or marker.callback(m))
        candidates = list(server.sessions)
        for s in candidates:
            s.send_event("probe", {"session": s.id})
        probe = yield marker
        session = next(s for s in candidates if s.id == probe["args"]["session"])

        server.events.subscribe(session, "system-state")
        slow.transport.pauseProducing()  # stop reading: the daemon's send buffer fills up
        payload = {"pad": "p" * 16384}
        sent = [0]

        def flood():
            for _ in range(16):
                server.events.publish("system-state", payload, store=False)
                sent[0] += 16384
            if session.closed or sent[0] > 256 * 1024 * 1024:
                loop.stop()

        loop = task.LoopingCall(flood)
        done = loop.start(0.005)
        yield wait_until(lambda: session.closed or session.close_reason, timeout=20)
        if loop.running:
            loop.stop()
        yield done
        self.assertIn("reads too slowly", session.close_reason)
        self.assertIn("limit 65536", session.close_reason)
        # Meanwhile the other connection is served normally.
        reply = yield other.call("rpc", "identify", "")
        self.assertEqual(reply["name"], "response")
        slow.transport.resumeProducing()
        code, reason = yield slow.closed
        self.assertIn(code, (CLOSE_POLICY, 1006))
        yield wait_until(lambda: session not in list(server.sessions))
        self.assertLess(len(list(server.sessions)), 2)


@pytest.mark.slow  # waits seconds of real time (timeouts, floods)
class AuthDeadlineTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_unauthenticated_connection_closes_after_auth_timeout(self):
        cfg = make_config(short_tempdir(self), AUTH_TIMEOUT=1)
        running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        idle = yield open_client(self, running)
        logged_in = yield open_client(self, running)
        yield logged_in.call("rpc", "auth", {"username": "root", "password": "pw"})
        started = time.monotonic()
        code, reason = yield idle.closed
        elapsed = time.monotonic() - started
        self.assertEqual(code, CLOSE_POLICY)
        self.assertIn("not authenticated within 1 s", reason)
        self.assertLess(elapsed, 2.5)
        # The authenticated connection stays.
        yield task.deferLater(reactor, 0.5, lambda: None)
        reply = yield logged_in.call("rpc", "query", {})
        self.assertEqual(reply["name"], "response")


CHILD = r"""
import base64, json, os, socket, struct, sys
path, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(path)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(("GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key).encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
assert head.startswith(b"HTTP/1.1 101"), head
def send(text):
    data = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81]) + (bytes([0x80 | len(data)]) if len(data) < 126 else bytes([0x80 | 126]) + struct.pack("!H", len(data)))
    s.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
def read_exact(n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise SystemExit("connection closed")
        out += chunk
    return out
def receive():
    b0, b1 = read_exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(8))[0]
    return read_exact(n).decode()
send(json.dumps({"namespace": "rpc", "name": "query", "id": "q", "args": {}}))
print(receive())
send(json.dumps({"namespace": "rpc", "name": "identify", "id": "i", "args": {}}))
print(receive())
"""


class UnixSocketTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        # A test-only socket in a directory others may traverse (the state dir stays 0700).
        self.socket_dir = short_tempdir(self, "ss")
        os.chmod(self.socket_dir, 0o711)
        cfg = make_config(short_tempdir(self), SOCKET=os.path.join(self.socket_dir, "s.sock"))
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({}))

    def test_socket_file_is_open_and_its_directory_decides(self):
        mode = os.stat(self.running.config.socket).st_mode
        self.assertTrue(stat.S_ISSOCK(mode))
        self.assertEqual(stat.S_IMODE(mode), 0o666)
        # In the state directory (the default for a daemon run by a user) only its owner
        # can reach the socket.
        state = self.running.config.state_dir
        self.assertEqual(stat.S_IMODE(os.stat(state).st_mode), 0o700)

    @defer.inlineCallbacks
    def test_a_new_socket_directory_is_made_reachable_whatever_the_umask(self):
        where = os.path.join(short_tempdir(self, "sr"), "run", "sysadmd")
        old = os.umask(0o077)
        try:
            cfg = make_config(short_tempdir(self), SOCKET=os.path.join(where, "s.sock"))
            running = yield start_daemon(self, cfg, passwords=FakePasswords({}))
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(where).st_mode), 0o755)
        self.assertEqual(stat.S_IMODE(os.stat(running.config.socket).st_mode), 0o666)

    @defer.inlineCallbacks
    def test_access_group_members_use_the_socket_without_sudo(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root to switch users")
        nobody = pwd.getpwnam("nobody")
        group = grp.getgrgid(nobody.pw_gid).gr_name
        cfg = make_config(short_tempdir(self), SOCKET=os.path.join(self.socket_dir, "g.sock"),
                          LIMITED_ACCESS_GROUPS=group)
        running = yield start_daemon(self, cfg, passwords=FakePasswords({}))
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, ["-c", CHILD, running.config.socket, str(nobody.pw_uid), str(nobody.pw_gid)],
            env=dict(os.environ),
        )
        self.assertEqual(code, 0, err)
        query, identify = (json.loads(line) for line in out.decode().splitlines())
        self.assertEqual(query["name"], "response", query)
        self.assertTrue(query["args"])
        self.assertEqual(query["args"]["rpc/dispatcher"], "read")  # limited: may read, not run

    @defer.inlineCallbacks
    def test_root_peer_gets_full_access_without_a_password(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root")
        client = yield open_client(self, self.running, unix=True)
        reply = yield client.call("rpc", "query", {})
        self.assertEqual(reply["name"], "response")
        self.assertTrue(reply["args"])
        self.assertTrue(all(v == "read/write" for v in reply["args"].values()), reply["args"])
        sessions = [s for s in self.running.server.sessions if s.kind == "unix"]
        self.assertEqual(len(sessions), 1)
        self.assertEqual(sessions[0].identity.method, "peer-uid")
        self.assertTrue(sessions[0].identity.full_access)
        self.assertIsNone(sessions[0].token)

    @defer.inlineCallbacks
    def test_other_users_must_log_in(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root to switch users")
        nobody = pwd.getpwnam("nobody")
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, ["-c", CHILD, self.running.config.socket, str(nobody.pw_uid), str(nobody.pw_gid)],
            env=dict(os.environ),
        )
        self.assertEqual(code, 0, err)
        query, identify = (json.loads(line) for line in out.decode().splitlines())
        self.assertEqual(query["name"], "error")
        self.assertEqual(query["args"]["code"], "401")
        self.assertEqual(identify["args"]["type"], "server")


class SessionTimerTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.channel = RecordingChannel()
        self.session = Session("wss", "192.0.2.9", self.channel, self.clock)

    def test_auth_deadline_closes_with_1008(self):
        self.session.start_timers(30, 1800)
        self.clock.advance(29.9)
        self.assertIsNone(self.channel.closed_with)
        self.clock.advance(0.2)
        self.assertEqual(self.channel.closed_with, (CLOSE_POLICY, "not authenticated within 30 s"))

    def test_login_cancels_the_auth_deadline(self):
        self.session.start_timers(30, 1800)
        self.session.login(Identity("alice", True, "password"), "t" * 40)
        self.clock.advance(100)
        self.assertIsNone(self.channel.closed_with)

    def test_idle_timer_restarts_with_each_message(self):
        self.session.login(Identity("alice", True, "password"), None)
        self.session.start_timers(30, 1800)
        for _ in range(5):
            self.clock.advance(1000)
            self.session.touch()
        self.assertIsNone(self.channel.closed_with)
        self.clock.advance(1799)
        self.assertIsNone(self.channel.closed_with)
        self.clock.advance(2)
        self.assertEqual(self.channel.closed_with, (CLOSE_GOING_AWAY, "idle for 1800 s"))

    def test_lost_session_cancels_its_timers(self):
        seen = []
        self.session.on_close(seen.append)
        self.session.start_timers(30, 1800)
        self.session.lost()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(seen, [self.session])
        self.session.send({"a": 1})  # sends after the end are dropped
        self.assertEqual(self.channel.sent, [])

    def test_no_timers_when_disabled(self):
        self.session.start_timers(0, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
