"""SIGHUP reloads the configuration (issue 8, item 8): a real ``twistd -n sysadmd`` and the
same reload in-process, where its effect on every live key can be observed directly."""

from __future__ import annotations

import pytest
import io
import os
import re
import signal
import sys

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from sysadmd import config as configmod
from sysadmd.admin.main import main as admin_main
from sysadmd.client.wsclient import connect
from sysadmd.reload import SYSADMD_LIVE_KEYS, sysadmd_appliers
from sysadmd.runtime.reload import ConfigReloader, reload_settings
from tests.keys_support import key_login, pem_of
from tests.support import FakePasswords, open_client, short_tempdir, start_daemon
from tests.test_twistd import LISTENING, ROOT, TWISTD, DaemonProcess, child_env


class InProcessReloadTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.dir = short_tempdir(self, "rl")
        self.path = os.path.join(self.dir, "sysadmd.conf")
        self.overrides = {"PORT": "tcp:0:interface=127.0.0.1", "STATE_DIR": os.path.join(self.dir, "state")}
        self.write("TOKEN_TTL=900\nJOB_KILL_GRACE=5\n")
        cfg = configmod.load(self.path, self.overrides)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        server = self.running.server
        self.reloader = ConfigReloader(reactor, server.config, configmod.Config, lambda: self.path, self.overrides,
                                       SYSADMD_LIVE_KEYS, sysadmd_appliers(self.running.daemon))
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text)

    def log_text(self) -> str:
        from twisted.logger import formatEvent

        return "\n".join(formatEvent(e) for e in self.logged)

    @defer.inlineCallbacks
    def ttl_of_a_new_login(self):
        client = yield open_client(self, self.running)
        reply = yield client.call("rpc", "auth", {"username": "root", "password": "pw"})
        yield client.close()
        return reply["args"][1]

    @defer.inlineCallbacks
    def test_live_keys_apply_and_restart_keys_stay(self):
        server = self.running.server
        self.assertEqual((yield self.ttl_of_a_new_login()), 900)
        self.write("TOKEN_TTL=60\nJOB_KILL_GRACE=0.5\nBLACKLIST_AUTH_FAIL_LIMIT=2\nFULL_ACCESS_GROUPS=wheel\n"
                   "STATE_DISK_WARN=50\nREST_ALLOWED_ORIGINS=https://ui.example.org\nLOG_RETENTION_DAYS=3\n"
                   "SOCKET=/tmp/elsewhere.sock\nMAX_MESSAGE_BYTES=4096\nJOB_RETENTION_DAYS=5\n")
        applied, restart = self.reloader.reload()
        # JOB_RETENTION_DAYS is only read at start: a key not known to be live waits too.
        self.assertEqual(sorted(restart), ["JOB_RETENTION_DAYS", "MAX_MESSAGE_BYTES", "SOCKET"])
        self.assertEqual(sorted(applied), sorted(["TOKEN_TTL", "JOB_KILL_GRACE", "BLACKLIST_AUTH_FAIL_LIMIT",
                                                  "FULL_ACCESS_GROUPS", "STATE_DISK_WARN", "REST_ALLOWED_ORIGINS",
                                                  "LOG_RETENTION_DAYS"]))
        self.assertEqual((yield self.ttl_of_a_new_login()), 60)
        self.assertEqual(server.tokens.ttl, 60)
        self.assertEqual(self.running.daemon.dispatcher.config.job_kill_grace, 0.5)  # read at use time
        self.assertEqual(server.blacklist.limit, 2)
        self.assertEqual(server.rights.full_groups, {"wheel"})
        self.assertEqual(self.running.daemon.system_state.thresholds.disk_warn, 50)
        self.assertEqual(server.config.rest_allowed_origins, ("https://ui.example.org",))
        self.assertEqual(server.getServiceNamed("log-retention").days, 3)
        # Keys only a restart can change keep their running value.
        self.assertEqual(server.config.socket, os.path.join(self.dir, "state", "sysadmd.sock"))
        self.assertEqual(server.config.max_message_bytes, 16 * 1024 * 1024)
        self.assertEqual(server.config.job_retention_days, 30)
        text = self.log_text()
        self.assertIn("TOKEN_TTL changed from 900 to 60 (applied)", text)
        self.assertIn("SOCKET changed from", text)
        self.assertIn("needs a restart", text)

        # The same file again: nothing more to apply; the restart keys are still pending.
        applied, restart = self.reloader.reload()
        self.assertEqual((applied, sorted(restart)), ([], ["JOB_RETENTION_DAYS", "MAX_MESSAGE_BYTES", "SOCKET"]))
        self.write("TOKEN_TTL=60\nJOB_KILL_GRACE=0.5\n")
        self.reloader.reload()  # back to no change for the restart keys
        self.logged.clear()
        self.assertEqual(self.reloader.reload(), ([], []))
        self.assertIn("configuration reload: nothing changed", self.log_text())

    @defer.inlineCallbacks
    def test_bad_file_keeps_the_running_configuration(self):
        before = self.running.server.config.as_dict()
        for text in ("TOKEN_TTL=x\n", "JOB_KILL_GRACE=nan\n", "NO_SUCH_KEY=1\n", "STATE_LOAD_WARN=5\nSTATE_LOAD_CRIT=1\n"):
            self.write("TOKEN_TTL=60\n" + text)
            self.assertIsNone(self.reloader.reload())
            self.assertEqual(self.running.server.config.as_dict(), before)
        self.assertIn("configuration reload failed, the running configuration stays in effect: TOKEN_TTL: expected a whole number",
                      self.log_text())
        os.unlink(self.path)
        self.assertIsNone(self.reloader.reload())
        self.assertEqual((yield self.ttl_of_a_new_login()), 900)

    def test_reload_settings_refuses_nothing_half_way(self):
        cfg = configmod.load(None, {"STATE_DIR": "/tmp/x"})
        with open(self.path, "w") as f:
            f.write("TOKEN_TTL=30\nIDLE_TIMEOUT=5\n")  # the second line is below the minimum
        with self.assertRaises(configmod.ConfigError):
            reload_settings(cfg, configmod.Config, self.path, {"STATE_DIR": "/tmp/x"}, SYSADMD_LIVE_KEYS, {})
        self.assertEqual(cfg.token_ttl, 900)


@pytest.mark.slow  # real daemons or child processes
class TwistdSighupTests(unittest.TestCase):
    """The real daemon: SIGHUP used to kill it."""

    timeout = 90

    def setUp(self):
        self.dir = short_tempdir(self, "hup")
        self.state_dir = os.path.join(self.dir, "state")
        self.config_path = os.path.join(self.dir, "sysadmd.conf")
        self.write("TOKEN_TTL=900\n")

    def write(self, text: str) -> None:
        with open(self.config_path, "w") as f:
            f.write(text)

    def start(self) -> DaemonProcess:
        proto = DaemonProcess()
        args = TWISTD + ["sysadmd", "--config", self.config_path, "--port", "tcp:0:interface=127.0.0.1",
                         "--state-dir", self.state_dir, "--socket", "none"]
        proto.transport = reactor.spawnProcess(proto, sys.executable, args, env=child_env(), path=ROOT)

        def kill_if_running():
            if not proto.ended.called:
                proto.transport.signalProcess("KILL")
                return proto.ended
            return None

        self.addCleanup(kill_if_running)
        return proto

    @defer.inlineCallbacks
    def ttl_of_a_key_login(self, port: int):
        client = yield connect(reactor, f"wss://127.0.0.1:{port}/")
        self.addCleanup(client.close)
        reply = yield key_login(client, "alice")
        yield client.close()
        self.assertEqual(reply["name"], "response", reply)
        return reply["args"][1]

    @defer.inlineCallbacks
    def test_sighup_reloads_and_sigterm_still_stops(self):
        daemon = self.start()
        port = int((yield daemon.wait_for(LISTENING)).group(1))
        yield daemon.wait_for(re.compile(r"SIGHUP re-reads the configuration"))  # the handler is in place
        key_file = os.path.join(self.dir, "alice.pub")
        with open(key_file, "w") as f:
            f.write(pem_of("alice"))
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(admin_main(["import_ssl_file", "root", key_file, "alice", "--state-dir", self.state_dir], out, err),
                         0, err.getvalue())
        self.assertEqual((yield self.ttl_of_a_key_login(port)), 900)

        self.write("TOKEN_TTL=60\nLISTEN_INTERFACE=127.0.0.1\n")
        daemon.transport.signalProcess("HUP")
        yield daemon.wait_for(re.compile(r"configuration reload done"))
        self.assertIn("TOKEN_TTL changed from 900 to 60 (applied)", daemon.output)
        self.assertRegex(daemon.output, r"LISTEN_INTERFACE changed from :: to 127\.0\.0\.1; needs a restart")
        self.assertEqual((yield self.ttl_of_a_key_login(port)), 60)

        # A broken file is logged and changes nothing.
        self.write("TOKEN_TTL=soon\n")
        daemon.transport.signalProcess("HUP")
        yield daemon.wait_for(re.compile(r"configuration reload failed.*TOKEN_TTL: expected a whole number"))
        self.assertEqual((yield self.ttl_of_a_key_login(port)), 60)
        self.assertFalse(daemon.ended.called)

        daemon.transport.signalProcess("TERM")
        yield daemon.ended
        self.assertIn((daemon.exit_code, daemon.exit_signal), ((0, None), (None, signal.SIGTERM)), daemon.output)
        self.assertIn("Server Shut Down", daemon.output)
        self.assertNotIn("Traceback", daemon.output)


@pytest.mark.slow  # real daemons or child processes
class BridgeSighupTests(unittest.TestCase):
    """``twistd -n sysadm-bridge`` survives SIGHUP and re-reads its file the same way."""

    timeout = 60

    @defer.inlineCallbacks
    def test_sighup_reloads_the_bridge(self):
        base = short_tempdir(self, "bhup")
        path = os.path.join(base, "bridge.conf")
        with open(path, "w") as f:
            f.write("BLACKLIST_AUTH_FAIL_LIMIT=2\n")
        proto = DaemonProcess()
        args = TWISTD + ["sysadm-bridge", "--config", path, "--port", "tcp:0:interface=127.0.0.1",
                         "--state-dir", os.path.join(base, "state")]
        proto.transport = reactor.spawnProcess(proto, sys.executable, args, env=child_env(), path=ROOT)
        self.addCleanup(lambda: None if proto.ended.called else (proto.transport.signalProcess("KILL"), proto.ended)[1])
        port = int((yield proto.wait_for(re.compile(r"sysadm-bridge wss listening on 127\.0\.0\.1 port (\d+)"))).group(1))
        yield proto.wait_for(re.compile(r"SIGHUP re-reads the configuration"))  # the handler is in place

        with open(path, "w") as f:
            f.write("BLACKLIST_AUTH_FAIL_LIMIT=7\nCHALLENGE_TTL=10\nPING_INTERVAL=0\n")
        proto.transport.signalProcess("HUP")
        yield proto.wait_for(re.compile(r"configuration reload done"))
        self.assertIn("BLACKLIST_AUTH_FAIL_LIMIT changed from 2 to 7 (applied)", proto.output)
        self.assertIn("CHALLENGE_TTL changed from 30.0 to 10.0 (applied)", proto.output)
        self.assertIn("PING_INTERVAL changed from 30.0 to 0.0; needs a restart", proto.output)
        client = yield connect(reactor, f"wss://127.0.0.1:{port}/")  # still serving
        yield client.close()

        proto.transport.signalProcess("TERM")
        yield proto.ended
        self.assertIn((proto.exit_code, proto.exit_signal), ((0, None), (None, signal.SIGTERM)), proto.output)
        self.assertNotIn("Traceback", proto.output)
