"""The bridge as operators run it: config, the sysadm-bridge command, twistd, revocation."""

import pytest
import io
import os
import re
import signal
import sys

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from bridge import admin, relayscan
from bridge import config as configmod
from bridge.tap import Options, makeService
from sysadmd.runtime import crypto
from sysadmd.runtime.configfile import ConfigError
from tests.test_bridge_wss import bridge_config, connect_peer, paired_peers, private_key, start_bridge

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_admin(state_dir, *argv):
    out, err = io.StringIO(), io.StringIO()
    code = admin.main(["--state-dir", state_dir, *argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


class ChildProcess(protocol.ProcessProtocol):
    """Collects a child's output; ``ended`` fires with the exit code."""

    def __init__(self, watch=None):
        self.output = ""
        self.ended = defer.Deferred()
        self.watch = watch  # (regex, Deferred) fired with the first match

    def outReceived(self, data):
        self._add(data)

    def errReceived(self, data):
        self._add(data)

    def _add(self, data):
        self.output += data.decode("utf-8", "replace")
        if self.watch is not None:
            pattern, d = self.watch
            match = re.search(pattern, self.output)
            if match and not d.called:
                d.callback(match)

    def processEnded(self, reason):
        code = getattr(reason.value, "exitCode", None)
        self.signal = getattr(reason.value, "signal", None)
        self.ended.callback(code)


def spawn(args, watch=None):
    proto = ChildProcess(watch)
    env = dict(os.environ, PYTHONPATH=ROOT)
    transport = reactor.spawnProcess(proto, sys.executable, [sys.executable, *args], env=env, path=ROOT)
    return proto, transport


class ConfigTests(unittest.TestCase):
    def test_sample_file_matches_keys(self):
        with open(os.path.join(ROOT, "conf", "sysadm-bridge.conf"), encoding="utf-8") as f:
            self.assertEqual(f.read().rstrip("\n"), configmod.sample().rstrip("\n"))

    def test_defaults(self):
        cfg = configmod.load(None, {"STATE_DIR": "/tmp/x"})
        self.assertEqual((cfg.port, cfg.listen_interface, cfg.blacklist_auth_fail_limit), ("12149", "::", 2))
        self.assertEqual((cfg.auth_timeout, cfg.challenge_ttl, cfg.max_message_bytes), (30, 30, 16 * 1024 * 1024))

    def test_bad_value_is_one_line_naming_the_key(self):
        options = Options()
        options.parseOptions(["--port", "http:80", "--state-dir", "/nonexistent/never-created"])
        with self.assertRaises(SystemExit) as caught:
            makeService(options)
        message = str(caught.exception)
        self.assertIn("PORT", message)
        self.assertNotIn("\n", message)
        with self.assertRaises(ConfigError):
            configmod.load(None, {"PING_INTERVAL": "-1"})
        with self.assertRaises(ConfigError):
            configmod.load(None, {"NO_SUCH_KEY": "1"})


class AdminTests(unittest.TestCase):
    def setUp(self):
        self.state = bridge_config(self).state_dir

    def write_key(self, name, text):
        path = os.path.join(self.state, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_import_list_remove(self):
        key = private_key("server")
        pem = crypto.public_pem(key)
        path = self.write_key("exported-by-server.pem", pem)  # any file name works
        code, out, _ = run_admin(self.state, "import_ssl_file", "office", path, "--role", "server")
        self.assertEqual(code, 0)
        self.assertIn(crypto.md5_checksum(pem), out)
        code, out, _ = run_admin(self.state, "import_ssl_pubkey", "laptop", crypto.public_pem(private_key("client")))
        self.assertEqual(code, 0)
        code, out, _ = run_admin(self.state, "list-keys")
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["NICKNAME", "ROLE", "MD5", "REGISTERED", "PAIRS_WITH"])
        self.assertEqual([line.split()[:3] for line in lines[1:]],
                         [["laptop", "unbound", crypto.md5_checksum(crypto.public_pem(private_key("client")))],
                          ["office", "server", crypto.md5_checksum(pem)]])
        code, out, _ = run_admin(self.state, "import-key", "office", self.write_key("other.crt", crypto.public_pem(private_key("client"))))
        self.assertIn("replaced", out)
        code, out, _ = run_admin(self.state, "remove_ssl", "office")
        self.assertEqual(code, 0)
        code, out, _ = run_admin(self.state, "list_ssl")
        self.assertNotIn("office", out)
        code, _, err = run_admin(self.state, "remove-key", "office")
        self.assertEqual(code, 1)
        self.assertIn("no key is registered as 'office'", err)

    def test_stored_form_and_bad_input(self):
        pem = crypto.public_pem(private_key("client"))
        code, out, _ = run_admin(self.state, "import_ssl_pubkey", "b64", crypto.stored_form(pem))
        self.assertEqual(code, 0)
        self.assertIn(crypto.md5_checksum(pem), out)
        code, _, err = run_admin(self.state, "import_ssl_file", "bad", self.write_key("junk.key", "not a key"))
        self.assertEqual(code, 1)
        self.assertIn("cannot read the key for 'bad'", err)
        code, _, err = run_admin(self.state, "import_ssl_file", "missing", os.path.join(self.state, "nope"))
        self.assertEqual(code, 1)
        self.assertIn("cannot read", err)

    def test_blacklist_verbs(self):
        code, out, _ = run_admin(self.state, "list_blocked")
        self.assertIn("no blocked addresses", out)
        cfg = configmod.load(None, {"STATE_DIR": self.state})
        from bridge.keys import database_path
        from bridge.service import open_blacklist
        from sysadmd.runtime.db import open_database
        db = open_database(database_path(self.state))
        self.addCleanup(db.close)
        blacklist = open_blacklist(db, reactor, cfg)
        blacklist.failure("203.0.113.7")
        blacklist.failure("203.0.113.7")
        code, out, _ = run_admin(self.state, "list_blocked")
        self.assertIn("203.0.113.7", out)
        self.assertEqual(run_admin(self.state, "unblock", "203.0.113.7")[0], 0)
        self.assertEqual(blacklist.blocked_for("203.0.113.7"), 0)
        self.assertEqual(run_admin(self.state, "unblock", "203.0.113.7")[0], 1)


@pytest.mark.slow  # real daemons or child processes
class RevocationTests(unittest.TestCase):
    timeout = 40

    @defer.inlineCallbacks
    def test_removing_a_key_drops_its_live_peer(self):
        daemon = yield start_bridge(self, REVOCATION_POLL_INTERVAL=0.5)
        server, client, server_id, client_id = yield paired_peers(self, daemon)
        start = len(server.frames)
        proto, _ = spawn(["-m", "bridge.admin", "--state-dir", daemon.bridge.config.state_dir, "remove_ssl", "cli"])
        code = yield proto.ended
        self.assertEqual(code, 0, proto.output)
        removed_at = reactor.seconds()
        close_code, reason = yield client.closed
        self.assertEqual(close_code, 1008)
        self.assertIn("revoked", reason)
        self.assertLess(reactor.seconds() - removed_at, 2.5)
        ids = yield server.wait_available(lambda ids: ids == [], start)
        self.assertEqual(ids, [])
        self.assertEqual(len(daemon.bridge.directory), 1)


    @defer.inlineCallbacks
    def test_changing_what_a_client_key_pairs_with_drops_its_live_peer(self):
        daemon = yield start_bridge(self, REVOCATION_POLL_INTERVAL=0.5)
        server, client, server_id, client_id = yield paired_peers(self, daemon)
        pub = os.path.join(daemon.bridge.config.state_dir, "cli.pub")
        with open(pub, "w") as f:
            f.write(crypto.public_pem(private_key("client")))
        extra = os.path.join(daemon.bridge.config.state_dir, "extra.pub")
        with open(extra, "w") as f:
            f.write(crypto.public_pem(private_key("server")))
        proto, _ = spawn(["-m", "bridge.admin", "--state-dir", daemon.bridge.config.state_dir, "import-key", "cli", pub,
                          "--role", "client", "--pairs-with", extra])
        code = yield proto.ended
        self.assertEqual(code, 0, proto.output)
        self.assertIn("also pairs on", proto.output)
        close_code, reason = yield client.closed
        self.assertEqual(close_code, 1008)  # it was paired on what it proved before; it logs in again
        self.assertFalse(server.closed.called)

@pytest.mark.slow  # real daemons or child processes
class TwistdSmokeTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_twistd_sysadm_bridge(self):
        state = bridge_config(self).state_dir
        listening = defer.Deferred()
        proto, transport = spawn(["-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                                  "sysadm-bridge", "--port", "tcp:0:interface=127.0.0.1", "--state-dir", state],
                                 watch=(r"listening on \S+ port (\d+)", listening))

        def stop():
            if not proto.ended.called:
                transport.signalProcess(signal.SIGKILL)
            return proto.ended

        self.addCleanup(stop)
        match = yield listening.addTimeout(30, reactor)
        self.assertIn("SHA-256 fingerprint", proto.output)
        # the operator is told which relay step runs (bridge/relayscan.py), as this process sees it
        self.assertIn(f"relay step (bridge/relayscan.py): {relayscan.IMPLEMENTATION}", proto.output)
        self.assertTrue(os.path.exists(os.path.join(state, "bridge.crt")))
        self.assertEqual(os.stat(state).st_mode & 0o777, 0o700)

        class Target:
            url = f"wss://127.0.0.1:{match.group(1)}/"

        peer = yield connect_peer(self, Target, role="server")
        first = yield peer.wait_for(lambda t: True)
        self.assertIn('"id":"sysadm_bridge_request_ident"', first)
        peer.send_json({"args": "", "id": "i", "name": "identify", "namespace": "rpc"})
        reply = yield peer.wait_reply("i")
        self.assertEqual(reply["args"]["type"], "bridge")
        yield peer.close()
        with open(os.path.join(state, "bridge.crt"), "rb") as f:
            cert = f.read()
        transport.signalProcess(signal.SIGTERM)
        code = yield proto.ended
        # twistd shuts down cleanly, then re-raises SIGTERM so the exit status names it.
        self.assertIn((code, proto.signal), [(0, None), (None, signal.SIGTERM)], proto.output[-2000:])
        self.assertIn("Server Shut Down", proto.output)
        with open(os.path.join(state, "bridge.crt"), "rb") as f:
            self.assertEqual(f.read(), cert)  # generated once, kept
