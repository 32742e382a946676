"""``sysadm`` end to end: the real client in a child process against a real daemon.

The daemon under test runs in the test's reactor, so the child is spawned through that
reactor (a blocking ``subprocess.run`` would freeze the daemon it talks to).  HOME and
XDG_CONFIG_HOME point into a temp dir, so pinned certificates never touch the user's.
"""

from __future__ import annotations

import pytest
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from twisted.internet import defer, protocol, reactor

# Starts real daemons or child processes: skipped by ./scripts/test.sh -m "not slow".
pytestmark = pytest.mark.slow


MAIN = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = "from sysadmd.client.main import main; import sys; sys.exit(main())"


@dataclass
class CliResult:
    code: int
    out: str
    err: str
    chunks: List[Tuple[float, str]] = field(default_factory=list)  # (monotonic time, stdout text)
    ended: float = 0.0


class CliProcess(protocol.ProcessProtocol):
    def __init__(self, stdin: Optional[bytes], on_out=None):
        self.stdin = stdin
        self.on_out = on_out
        self.out: List[bytes] = []
        self.err: List[bytes] = []
        self.chunks: List[Tuple[float, str]] = []
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        if self.stdin is not None:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)
        self.chunks.append((time.monotonic(), data.decode("utf-8", "replace")))
        if self.on_out is not None:
            self.on_out(self, b"".join(self.out).decode("utf-8", "replace"))

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason) -> None:
        code = reason.value.exitCode
        if code is None:
            code = -(reason.value.signal or 0)
        self.done.callback(CliResult(code, b"".join(self.out).decode("utf-8", "replace"),
                                     b"".join(self.err).decode("utf-8", "replace"), self.chunks, time.monotonic()))

    def interrupt(self) -> None:
        self.transport.signalProcess(signal.SIGINT)


def cli_env(home: str, **extra: str) -> Dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": MAIN,
        "HOME": home,
        "XDG_CONFIG_HOME": os.path.join(home, "cfg"),
        "XDG_STATE_HOME": os.path.join(home, "state"),
        "LANG": "C.UTF-8",
    }
    env.update(extra)
    return env


def run_cli(home: str, *argv: str, stdin: Optional[bytes] = None, on_out=None, timeout: float = 25,
            **env: str) -> defer.Deferred:
    """Run ``sysadm ARGV…`` in a child process; fires with a :class:`CliResult`."""
    proto = CliProcess(stdin, on_out)
    reactor.spawnProcess(proto, sys.executable, [sys.executable, "-c", LAUNCH, *argv], env=cli_env(home, **env),
                         path=home)
    watchdog = reactor.callLater(timeout, lambda: proto.transport.signalProcess(signal.SIGKILL))

    def stop_watchdog(result):
        if watchdog.active():
            watchdog.cancel()
        return result

    return proto.done.addBoth(stop_watchdog)


# --- the tests ------------------------------------------------------------------------------

import json  # noqa: E402
import socket  # noqa: E402
import stat  # noqa: E402

from twisted.internet import task  # noqa: E402
from twisted.trial import unittest  # noqa: E402

from sysadmd.runtime import crypto  # noqa: E402
from sysadmd.auth.rights import Rights  # noqa: E402
from sysadmd.client.knownhosts import KnownHosts  # noqa: E402
from tests.keys_support import private_key, register  # noqa: E402
from tests.support import FakePasswords, make_config, short_tempdir, start_daemon  # noqa: E402


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class CliTestCase(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.home = short_tempdir(self, "cli")
        cfg = make_config(short_tempdir(self), system_state_interval=1)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.url = f"127.0.0.1:{self.running.port}"
        self.endpoint = f"127.0.0.1:{self.running.port}"

    def sysadm(self, *argv, **kw):
        return run_cli(self.home, *argv, **kw)

    def local(self, *argv, **kw):
        return run_cli(self.home, "--socket", self.running.config.socket, *argv, **kw)

    def known_hosts(self) -> KnownHosts:
        return KnownHosts(os.path.join(self.home, "cfg", "sysadm", "known_hosts"))


class DirectConnectionTests(CliTestCase):
    @defer.inlineCallbacks
    def test_identify_over_wss_pins_certificate_on_first_use(self):
        result = yield self.sysadm("--url", self.url, "call", "rpc", "identify")
        self.assertEqual(result.code, 0, result.err)
        self.assertEqual(json.loads(result.out)["type"], "server")
        fingerprint = self.known_hosts().lookup(self.endpoint)
        with open(self.running.daemon.server.state_dir + "/server.crt", "rb") as f:
            from sysadmd.runtime.tls import fingerprint_sha256

            self.assertEqual(fingerprint, fingerprint_sha256(f.read()))
        self.assertIn(f"Pinned certificate for {self.endpoint} SHA-256 {fingerprint}", result.err)
        path = self.known_hosts().path
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700)
        # Second time: same certificate, nothing to say about pinning.
        again = yield self.sysadm("--url", self.url, "identify")
        self.assertEqual(again.code, 0, again.err)
        self.assertIn("type: server", again.out)
        self.assertNotIn("Pinned", again.err)

    @defer.inlineCallbacks
    def test_changed_certificate_is_refused_with_exit_3(self):
        other = yield start_daemon(self, make_config(short_tempdir(self)))
        other_endpoint = f"127.0.0.1:{other.port}"
        first = yield self.sysadm("--url", self.url, "identify")
        self.assertEqual(first.code, 0, first.err)
        mine = self.known_hosts().lookup(self.endpoint)
        # Pretend the other daemon's address used to serve our first daemon's certificate.
        self.known_hosts().store(other_endpoint, mine)
        refused = yield self.sysadm("--url", other_endpoint, "call", "rpc", "identify")
        self.assertEqual(refused.code, 3, refused.err)
        self.assertEqual(refused.out, "")
        self.assertIn("CHANGED", refused.err)
        self.assertIn(f"expected SHA-256 {mine}", refused.err)
        self.assertIn(f"sysadm known-hosts forget {other_endpoint}", refused.err)
        self.assertNotIn("Traceback", refused.err)
        forgot = yield self.sysadm("known-hosts", "forget", other_endpoint)
        self.assertEqual(forgot.code, 0, forgot.err)
        accepted = yield self.sysadm("--url", other_endpoint, "identify")
        self.assertEqual(accepted.code, 0, accepted.err)
        self.assertIn("Pinned certificate", accepted.err)
        listing = yield self.sysadm("known-hosts", "list")
        self.assertIn(other_endpoint, listing.out)
        self.assertIn(mine, listing.out)

    @defer.inlineCallbacks
    def test_explicit_fingerprint_mismatch_is_exit_3(self):
        result = yield self.sysadm("--url", self.url, "--fingerprint", "00" * 32, "identify")
        self.assertEqual(result.code, 3)
        self.assertIn("does not match --fingerprint", result.err)
        self.assertIsNone(self.known_hosts().lookup(self.endpoint))

    @defer.inlineCallbacks
    def test_query_with_password_login(self):
        result = yield self.sysadm("--url", self.url, "--user", "root", "call", "rpc", "query", SYSADM_PASSWORD="pw")
        self.assertEqual(result.code, 0, result.err)
        self.assertEqual(json.loads(result.out).get("rpc/settings"), "read/write")
        table = yield self.sysadm("--url", self.url, "--user", "root", "query", SYSADM_PASSWORD="pw")
        self.assertIn("rpc/settings", table.out)
        self.assertTrue(table.out.startswith("API"))

    @defer.inlineCallbacks
    def test_wrong_password_is_exit_5_and_no_password_is_exit_2(self):
        wrong = yield self.sysadm("--url", self.url, "--user", "root", "query", SYSADM_PASSWORD="nope")
        self.assertEqual(wrong.code, 5)
        self.assertIn("login as root refused", wrong.err)
        missing = yield self.sysadm("--url", self.url, "--user", "root", "query")
        self.assertEqual(missing.code, 2)
        self.assertIn("SYSADM_PASSWORD", missing.err)

    @defer.inlineCallbacks
    def test_key_login(self):
        key_path = os.path.join(self.home, "id.pem")
        with open(key_path, "wb") as f:
            f.write(crypto.private_pem(private_key("cli")))
        refused = yield self.sysadm("--url", self.url, "--key", key_path, "query")
        self.assertEqual(refused.code, 5, refused.err)
        register(self.running, "root", "cli")
        result = yield self.sysadm("--url", self.url, "--key", key_path, "call", "rpc", "query")
        self.assertEqual(result.code, 0, result.err)
        self.assertIn("rpc/dispatcher", json.loads(result.out))

    @defer.inlineCallbacks
    def test_error_replies_exit_1_with_code_message_detail(self):
        no_login = yield self.sysadm("--url", self.url, "call", "rpc", "query")
        self.assertEqual(no_login.code, 1)
        self.assertIn("error 401 Unauthorized", no_login.err)
        self.assertIn("--user", no_login.err)
        bad = yield self.sysadm("--url", self.url, "--user", "root", "--json", "call", "rpc", "settings",
                                '{"action":"nope"}', SYSADM_PASSWORD="pw")
        self.assertEqual(bad.code, 1)
        self.assertIn("error 400 Bad Request: unknown action 'nope'", bad.err)
        envelope = json.loads(bad.out)
        self.assertEqual(envelope["name"], "error")
        self.assertEqual(envelope["args"]["code"], "400")

    @defer.inlineCallbacks
    def test_invalid_json_names_the_position(self):
        result = yield self.sysadm("--url", self.url, "call", "rpc", "settings", '{"action": list}')
        self.assertEqual(result.code, 2)
        self.assertIn("not valid JSON", result.err)
        self.assertIn("line 1, column 12", result.err)

    @defer.inlineCallbacks
    def test_connection_refused_is_readable_exit_4(self):
        result = yield self.sysadm("--url", f"127.0.0.1:{_closed_port()}", "identify")
        self.assertEqual(result.code, 4)
        self.assertIn("connection refused; is sysadmd running?", result.err)
        self.assertNotIn("Traceback", result.err)


class LocalSocketTests(CliTestCase):
    def setUp(self):
        if Rights(("wheel", "sudo"), ()).for_uid(os.getuid()) is None:
            raise unittest.SkipTest("the test user has no full access through the local socket")
        return super().setUp()

    @defer.inlineCallbacks
    def test_call_over_socket_without_login(self):
        result = yield self.local("call", "rpc", "dispatcher", "-", stdin=b'{"action":"list"}')
        self.assertEqual(result.code, 0, result.err)
        self.assertIn("jobs", json.loads(result.out))

    @defer.inlineCallbacks
    def test_default_socket_comes_from_the_environment(self):
        result = yield self.sysadm("identify", SYSADM_SOCKET=self.running.config.socket)
        self.assertEqual(result.code, 0, result.err)
        missing = yield self.sysadm("identify", SYSADM_SOCKET=os.path.join(self.home, "none.sock"))
        self.assertEqual(missing.code, 4)
        self.assertIn("no such socket; is sysadmd running?", missing.err)

    @defer.inlineCallbacks
    def test_events_count(self):
        result = yield self.local("events", "system-state", "--count", "1")
        self.assertEqual(result.code, 0, result.err)
        lines = result.out.splitlines()
        self.assertEqual(len(lines), 1)
        event = json.loads(lines[0])
        self.assertEqual((event["namespace"], event["name"], event["id"]), ("events", "system-state", ""))
        self.assertIn("hostname", event["args"])


class RunTests(CliTestCase):
    def setUp(self):
        if Rights(("wheel", "sudo"), ()).for_uid(os.getuid()) is None:
            raise unittest.SkipTest("the test user has no full access through the local socket")
        return super().setUp()

    @defer.inlineCallbacks
    def test_output_streams_live(self):
        code = "import time; [print(i, flush=True) or time.sleep(0.5) for i in range(4)]"
        result = yield self.local("run", f'{sys.executable} -c "{code}"')
        self.assertEqual(result.code, 0, result.err)
        self.assertEqual(result.out, "0\n1\n2\n3\n")
        first = next(t for t, text in result.chunks if "0" in text)
        # The job runs for about 2 s; the first line must arrive long before the client ends.
        self.assertGreater(result.ended - first, 1.0, result.chunks)
        self.assertGreater(len(result.chunks), 1)

    @defer.inlineCallbacks
    def test_chain_exit_code_and_progress(self):
        result = yield self.local("run", "--id", "chain-1", "echo one", 'sh -c "echo two; exit 7"', "echo three")
        self.assertEqual(result.code, 7, result.err)
        self.assertEqual(result.out, "one\ntwo\n")
        self.assertIn("[1/3] echo one", result.err)
        self.assertIn('[2/3] sh -c "echo two; exit 7"', result.err)
        self.assertNotIn("[3/3]", result.err)
        self.assertIn("1 command(s) not run", result.err)
        history = yield self.local("--json", "jobs", "--state", "finished")
        finished = json.loads(history.out)
        self.assertIn("chain-1", [job["dispatcher_id"] for job in finished])

    @defer.inlineCallbacks
    def test_command_that_cannot_start_is_255(self):
        result = yield self.local("run", "no-such-program-xyz")
        self.assertEqual(result.code, 255)
        self.assertIn("could not start or was killed", result.err)

    @defer.inlineCallbacks
    def test_interrupt_without_a_terminal_detaches_and_leaves_the_job_running(self):
        def started(proto, text):
            if "started" in text and not getattr(proto, "interrupted", False):
                proto.interrupted = True
                proto.interrupt()

        result = yield self.local("run", "--id", "sleeper", 'sh -c "echo started; sleep 30"', on_out=started)
        self.assertEqual(result.code, 130, result.err)
        self.assertIn("detached from job sleeper", result.err)
        self.assertIn("sysadm kill sleeper", result.err)
        self.assertNotIn("Traceback", result.err)
        listing = yield self.local("--json", "jobs", "--state", "active")
        running = {job["dispatcher_id"]: job for job in json.loads(listing.out)}
        self.assertEqual(running["sleeper"]["state"], "RUNNING")
        yield self.local("kill", "sleeper")

    @defer.inlineCallbacks
    def test_sigterm_while_streaming_exits_143_quietly(self):
        def started(proto, text):
            if "started" in text and not getattr(proto, "terminated", False):
                proto.terminated = True
                proto.transport.signalProcess(signal.SIGTERM)

        result = yield self.local("run", "--id", "termed", 'sh -c "echo started; sleep 30"', on_out=started)
        self.assertEqual(result.code, 143, result.err)
        self.assertNotIn("Traceback", result.err)
        self.assertNotIn("connection", result.err)
        events = yield self.local("events", "system-state", on_out=lambda p, t: (
            t and not getattr(p, "t", False) and (setattr(p, "t", True) or p.transport.signalProcess(signal.SIGTERM))))
        self.assertEqual(events.code, 143, events.err)
        self.assertEqual(events.err, "")
        yield self.local("kill", "termed")

    @defer.inlineCallbacks
    def test_closed_stdout_ends_quietly_like_other_unix_tools(self):
        # `sysadm run 'seq 1 100000' | head -1`: the reader goes away early.
        out = os.path.join(self.home, "head.txt")
        cmd = (f"{sys.executable} -c {json.dumps(LAUNCH)} --socket {self.running.config.socket} "
               f"run 'seq 1 100000' | head -1 > {out}; echo ${{PIPESTATUS[0]}}")
        proto = CliProcess(None)
        reactor.spawnProcess(proto, "/bin/bash", ["/bin/bash", "-c", cmd], env=cli_env(self.home), path=self.home)
        result = yield proto.done
        with open(out) as f:
            self.assertEqual(f.read(), "1\n")
        self.assertNotIn("Traceback", result.err)
        self.assertNotIn("BrokenPipe", result.err)
        self.assertEqual(result.out.strip(), str(128 + signal.SIGPIPE))

    @defer.inlineCallbacks
    def test_jobs_and_kill(self):
        client = yield self.running.connect_unix()
        self.addCleanup(client.close)
        reply = yield client.call("rpc", "dispatcher", {"action": "run", "long-job": "sleep 30"})
        self.assertEqual(reply["args"]["started"], ["long-job"])
        listing = yield self.local("jobs")
        self.assertEqual(listing.code, 0, listing.err)
        self.assertIn("long-job", listing.out)
        self.assertIn("sleep 30", listing.out)
        killed = yield self.local("kill", "long-job", "not-a-job")
        self.assertEqual(killed.code, 1)
        self.assertIn("killed long-job", killed.out)
        self.assertIn("no pending or running job not-a-job", killed.err)
        for _ in range(50):
            state = yield client.call("rpc", "dispatcher", {"action": "list"})
            if "long-job" not in json.dumps(state["args"]):
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertNotIn("long-job", json.dumps(state["args"]))


class KeyAndSettingsTests(CliTestCase):
    def setUp(self):
        if Rights(("wheel", "sudo"), ()).for_uid(os.getuid()) is None:
            raise unittest.SkipTest("the test user has no full access through the local socket")
        return super().setUp()

    @defer.inlineCallbacks
    def test_keys_add_list_revoke(self):
        pub = os.path.join(self.home, "laptop.pub")
        with open(pub, "w") as f:
            f.write(crypto.public_pem(private_key("laptop")))
        added = yield self.local("keys", "add", pub, "--email", "me@example.org")
        self.assertEqual(added.code, 0, added.err)
        md5 = crypto.md5_checksum(crypto.public_pem(private_key("laptop")))
        self.assertIn(md5, added.out)
        listing = yield self.local("keys", "list")
        self.assertIn("laptop", listing.out)
        self.assertIn("me@example.org", listing.out)
        sums = yield self.local("keys", "checksums")
        self.assertEqual(sums.out.split(), [md5])
        revoked = yield self.local("keys", "revoke", "laptop")
        self.assertEqual(revoked.code, 0, revoked.err)
        self.assertEqual(self.running.daemon.keys.list(), [])
        again = yield self.local("keys", "revoke", "laptop")
        self.assertEqual(again.code, 1)
        self.assertIn("no registered key matches", again.err)

    @defer.inlineCallbacks
    def test_bridges_add_list_remove(self):
        if "list_bridges" not in self.running.daemon.settings:
            raise unittest.SkipTest("this daemon has no bridge-link settings actions")
        added = yield self.local("bridges", "add", "relay1", f"127.0.0.1:{_closed_port()}")
        self.assertEqual(added.code, 0, added.err)
        listing = yield self.local("bridges", "list")
        self.assertIn("relay1", listing.out)
        self.assertIn("wss://127.0.0.1:", listing.out)
        removed = yield self.local("bridges", "remove", "relay1")
        self.assertEqual(removed.code, 0, removed.err)
        empty = yield self.local("bridges", "list")
        self.assertIn("no bridge links", empty.out)
