"""Smoke test of the real ``twistd -n sysadmd`` process: start, talk, restart, stop."""

from __future__ import annotations

import pytest
import os
import re
import signal
import sys

from twisted.internet import defer, error, protocol, reactor, utils
from twisted.trial import unittest

from sysadmd.runtime import tls
from sysadmd.client.wsclient import connect, connect_unix
from tests.support import short_tempdir

# Starts real daemons or child processes: skipped by ./scripts/test.sh -m "not slow".
pytestmark = pytest.mark.slow


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
LISTENING = re.compile(r"sysadmd wss\+https listening on 127\.0\.0\.1 port (\d+)")
SOCKET_LISTENING = re.compile(r"local socket listening on unix port (\S+)")
FINGERPRINT = re.compile(r"SHA-256 fingerprint ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})")


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT
    return env


class DaemonProcess(protocol.ProcessProtocol):
    """Collects the child's output and fires when a pattern shows up in it."""

    def __init__(self):
        self.output = ""
        self.ended: defer.Deferred = defer.Deferred()
        self.exit_code = None
        self.exit_signal = None
        self._waiters = []

    def outReceived(self, data: bytes) -> None:
        self.output += data.decode("utf-8", "replace")
        for waiter in list(self._waiters):
            pattern, d = waiter
            match = pattern.search(self.output)
            if match:
                self._waiters.remove(waiter)
                d.callback(match)

    errReceived = outReceived

    def wait_for(self, pattern: re.Pattern, timeout: float = 30) -> defer.Deferred:
        match = pattern.search(self.output)
        if match:
            return defer.succeed(match)
        d = defer.Deferred()
        self._waiters.append((pattern, d))
        d.addTimeout(timeout, reactor, onTimeoutCancel=lambda *_: self._timed_out(pattern))
        return d

    def _timed_out(self, pattern):
        raise AssertionError(f"{pattern.pattern!r} did not appear; output so far:\n{self.output}")

    def processEnded(self, reason) -> None:
        self.exit_code = reason.value.exitCode
        self.exit_signal = getattr(reason.value, "signal", None)
        for pattern, d in self._waiters:
            d.errback(AssertionError(f"daemon exited before {pattern.pattern!r}:\n{self.output}"))
        self._waiters = []
        self.ended.callback(self.exit_code)


class TwistdSmokeTests(unittest.TestCase):
    timeout = 90

    def setUp(self):
        self.state_dir = short_tempdir(self, "tw")
        self.config_path = os.path.join(self.state_dir, "empty.conf")
        with open(self.config_path, "w") as f:
            f.write("# nothing: every key keeps its default\n")

    def start(self) -> DaemonProcess:
        proto = DaemonProcess()
        args = TWISTD + ["sysadmd", "--config", self.config_path, "--port", "tcp:0:interface=127.0.0.1", "--state-dir", self.state_dir]
        transport = reactor.spawnProcess(proto, sys.executable, args, env=child_env(), path=ROOT)

        def kill_if_running():
            if not proto.ended.called:
                try:
                    transport.signalProcess("KILL")
                except error.ProcessExitedAlready:
                    pass
                return proto.ended
            return None

        self.addCleanup(kill_if_running)
        proto.transport = transport
        return proto

    @defer.inlineCallbacks
    def stop(self, proto: DaemonProcess):
        proto.transport.signalProcess("TERM")
        timer = reactor.callLater(30, lambda: proto.ended.called or proto.transport.signalProcess("KILL"))
        yield proto.ended
        if timer.active():
            timer.cancel()
        # twistd ends by re-raising the signal that stopped it, so its parent sees "killed
        # by SIGTERM" after a clean shutdown (not SIGKILL, not an error exit code).
        return proto.exit_code, proto.exit_signal

    @defer.inlineCallbacks
    def test_start_talk_restart_stop(self):
        daemon = self.start()
        match = yield daemon.wait_for(LISTENING)
        port = int(match.group(1))
        socket_path = (yield daemon.wait_for(SOCKET_LISTENING)).group(1)
        logged = (yield daemon.wait_for(FINGERPRINT)).group(1)
        cert_path = os.path.join(self.state_dir, "server.crt")
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        self.assertEqual(logged, tls.fingerprint_sha256(cert_pem))
        self.assertEqual(os.stat(os.path.join(self.state_dir, "server.key")).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(self.state_dir).st_mode & 0o777, 0o700)

        client = yield connect(reactor, f"wss://127.0.0.1:{port}/")
        self.addCleanup(client.close)
        self.assertEqual(client.peer_fingerprint(), logged)
        reply = yield client.call("rpc", "identify", "")
        self.assertEqual(reply["args"]["type"], "server")
        yield client.close()

        if os.geteuid() == 0:
            local = yield connect_unix(reactor, socket_path)
            self.addCleanup(local.close)
            reply = yield local.call("rpc", "query", {})
            self.assertEqual(reply["name"], "response")
            self.assertIn("rpc/dispatcher", reply["args"])
            yield local.close()

        ended = yield self.stop(daemon)
        self.assertIn(ended, ((0, None), (None, signal.SIGTERM)), daemon.output)
        self.assertNotIn("Traceback", daemon.output)
        self.assertIn("Server Shut Down", daemon.output)
        self.assertFalse(os.path.exists(socket_path))

        # A second start reuses the certificate: clients that pinned it keep working.
        again = self.start()
        port = int((yield again.wait_for(LISTENING)).group(1))
        self.assertEqual((yield again.wait_for(FINGERPRINT)).group(1), logged)
        # Talk to it before stopping: it proves the reactor (and its SIGTERM handler) runs.
        client = yield connect(reactor, f"wss://127.0.0.1:{port}/")
        self.addCleanup(client.close)
        self.assertEqual(client.peer_fingerprint(), logged)
        reply = yield client.call("rpc", "identify", "")
        self.assertEqual(reply["args"]["type"], "server")
        yield client.close()
        self.assertNotIn("generated a self-signed TLS certificate", again.output)
        with open(cert_path, "rb") as f:
            self.assertEqual(f.read(), cert_pem)
        ended = yield self.stop(again)
        self.assertIn(ended, ((0, None), (None, signal.SIGTERM)), again.output)
        self.assertIn("Server Shut Down", again.output)


class TwistdConfigErrorTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.state_dir = short_tempdir(self, "tc")

    @defer.inlineCallbacks
    def run_with_config(self, text: str):
        path = os.path.join(self.state_dir, "sysadmd.conf")
        with open(path, "w") as f:
            f.write(text)
        args = TWISTD[1:] + ["sysadmd", "--config", path, "--state-dir", self.state_dir]
        d = utils.getProcessOutputAndValue(sys.executable, args, env=child_env(), path=ROOT)
        d.addTimeout(40, reactor)
        out, err, code = yield d
        return out.decode(), err.decode(), code

    @defer.inlineCallbacks
    def assertConfigError(self, text: str, key: str):
        out, err, code = yield self.run_with_config(text)
        self.assertEqual(code, 1, (out, err))
        lines = err.strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith(f"sysadmd: configuration error: {key}:"), lines[0])
        self.assertNotIn("listening", out)
        return lines[0]

    @defer.inlineCallbacks
    def test_bad_port(self):
        line = yield self.assertConfigError("PORT=abc\n", "PORT")
        self.assertIn("'abc'", line)

    @defer.inlineCallbacks
    def test_bad_number(self):
        line = yield self.assertConfigError("# comment\nTOKEN_TTL=x   # seconds\n", "TOKEN_TTL")
        self.assertIn("whole number", line)

    @defer.inlineCallbacks
    def test_unknown_key(self):
        line = yield self.assertConfigError("PORT=12150\nNO_SUCH_KEY=1\n", "NO_SUCH_KEY")
        self.assertIn("unknown configuration key", line)


class TwistdCannotListenTests(unittest.TestCase):
    """A daemon that cannot open what it serves says why in one line and exits 1."""

    timeout = 90

    def setUp(self):
        self.base = short_tempdir(self, "cl")

    @defer.inlineCallbacks
    def run_daemon(self, program: str, *args: str):
        d = utils.getProcessOutputAndValue(sys.executable, TWISTD[1:] + [program, *args], env=child_env(), path=ROOT)
        d.addTimeout(40, reactor)  # the bug: it kept running, serving nothing
        out, err, code = yield d
        return out.decode(), err.decode(), code

    def assertOneLine(self, out: str, code: int, *words: str) -> None:
        self.assertEqual(code, 1, out)
        lines = [line for line in out.splitlines() if "cannot listen" in line]
        self.assertEqual(len(lines), 1, out)
        for word in words:
            self.assertIn(word, lines[0])
        self.assertNotIn("Traceback", out)

    @defer.inlineCallbacks
    def test_port_taken_on_both_daemons(self):
        import socket

        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for program in ("sysadmd", "sysadm-bridge"):
            out, err, code = yield self.run_daemon(program, "--port", f"tcp:{port}:interface=127.0.0.1",
                                                   "--state-dir", os.path.join(self.base, program))
            self.assertOneLine(out + err, code, str(port), "Address already in use")

    @defer.inlineCallbacks
    def test_socket_held_by_another_daemon(self):
        sock = os.path.join(self.base, "shared.sock")
        first = DaemonProcess()
        args = TWISTD + ["sysadmd", "--port", "tcp:0:interface=127.0.0.1", "--state-dir",
                         os.path.join(self.base, "a"), "--socket", sock]
        first.transport = reactor.spawnProcess(first, sys.executable, args, env=child_env(), path=ROOT)
        self.addCleanup(lambda: None if first.ended.called else (first.transport.signalProcess("KILL"), first.ended)[1])
        yield first.wait_for(re.compile(r"local socket listening"))
        out, err, code = yield self.run_daemon("sysadmd", "--port", "tcp:0:interface=127.0.0.1",
                                               "--state-dir", os.path.join(self.base, "b"), "--socket", sock)
        self.assertOneLine(out + err, code, sock, "serves this socket already")

    @defer.inlineCallbacks
    def test_unusable_state_dir(self):
        blocker = os.path.join(self.base, "file")
        with open(blocker, "w"):
            pass
        out, err, code = yield self.run_daemon("sysadmd", "--port", "tcp:0:interface=127.0.0.1",
                                               "--state-dir", os.path.join(blocker, "state"))
        self.assertEqual(code, 1, out + err)
        self.assertEqual(err.strip().splitlines(), [f"sysadmd: cannot start: [Errno 20] Not a directory: "
                                                    f"'{os.path.join(blocker, 'state')}'"])
