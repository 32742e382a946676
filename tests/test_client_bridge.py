"""``sysadm --bridge``: the real client in a child process, a real bridge, a real sysadmd
that dials the bridge through its bridge link, all on loopback."""

import json
import os
import shutil
import tempfile

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from bridge import config as bridge_config
from bridge.service import build as build_bridge
from sysadmd import crypto
from sysadmd.auth import bound
from sysadmd.bridgelink import key as bridgekey
from tests.keys_support import pem_of, private_key, register
from tests.support import short_tempdir, start_daemon
from tests.test_client_cli import run_cli


@defer.inlineCallbacks
def start_bridge(testcase):
    state = tempfile.mkdtemp(prefix="br", dir="/tmp")
    testcase.addCleanup(shutil.rmtree, state, True)
    daemon = build_bridge(bridge_config.load(None, {"PORT": "tcp:0:interface=127.0.0.1", "STATE_DIR": state}), reactor)
    daemon.startService()
    testcase.addCleanup(daemon.stopService)
    yield daemon.listener.ready
    daemon.endpoint = f"127.0.0.1:{daemon.listener.port.getHost().port}"
    return daemon


@defer.inlineCallbacks
def wait_until(predicate, timeout=15.0, what="condition"):
    deadline = reactor.seconds() + timeout
    while True:
        value = yield defer.maybeDeferred(predicate)
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        yield task.deferLater(reactor, 0.1, lambda: None)


class BridgedClientTests(unittest.TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self):
        self.home = short_tempdir(self, "clb")
        self.bridge = yield start_bridge(self)
        self.running = yield start_daemon(self)
        keys = self.bridge.bridge.keys
        keys.import_key("server1", bridgekey.public_key_pem(self.running.config.state_dir), role="server")
        keys.import_key("laptop", pem_of("bridged-client"), role="client")
        register(self.running, "root", "bridged-client")
        self.key_path = os.path.join(self.home, "id.pem")
        with open(self.key_path, "wb") as f:
            f.write(crypto.private_pem(private_key("bridged-client")))
        client = yield self.running.connect_unix()
        self.addCleanup(client.close)
        added = yield client.call("rpc", "settings", {"action": "add_bridge", "nickname": "relay",
                                                      "url": f"wss://{self.bridge.endpoint}", "verify": "pin"})
        self.assertEqual(added["name"], "response", added)

        @defer.inlineCallbacks
        def link_up():
            reply = yield client.call("rpc", "settings", {"action": "list_bridges"})
            return reply["args"]["bridges"]["relay"]["authenticated"]

        yield wait_until(link_up, what="the server's bridge link to authenticate")

    def sysadm(self, *argv, **kw):
        return run_cli(self.home, "--bridge", self.bridge.endpoint, "--key", self.key_path, *argv, **kw)

    @defer.inlineCallbacks
    def test_peers_then_call_and_run_through_the_bridge(self):
        listing = yield self.sysadm("--json", "peers")
        self.assertEqual(listing.code, 0, listing.err)
        self.assertIn(f"Pinned certificate for {self.bridge.endpoint}", listing.err)
        rows = json.loads(listing.out)
        self.assertEqual(len(rows), 1, rows)
        # Not pinned yet: listed with its proven key, but not logged in to.
        server_fp = bound.display_fingerprint(bound.fingerprint(bridgekey.load_or_create(self.running.config.state_dir)[0]))
        self.assertEqual((rows[0]["authorized"], rows[0]["pinned_as"], rows[0]["fingerprint"], rows[0]["hostname_verified"]),
                         (None, None, server_fp, False), rows)
        self.assertTrue(rows[0]["id"].startswith("::{"))
        server_id = rows[0]["id"]
        hostname = rows[0]["hostname"]

        # First use by the host name it claims (exactly one server claims it): pinned.
        first = yield self.sysadm("--server", hostname, "identify")
        self.assertEqual(first.code, 0, first.err)
        self.assertIn(f"Pinned server {hostname} key {server_fp}", first.err)
        table = yield self.sysadm("peers")
        self.assertIn(server_id, table.out)
        self.assertIn("yes", table.out)
        rows = json.loads((yield self.sysadm("--json", "peers")).out)
        self.assertEqual((rows[0]["authorized"], rows[0]["pinned_as"]), (True, hostname), rows)

        query = yield self.sysadm("--server", server_id, "call", "rpc", "query")
        self.assertEqual(query.code, 0, query.err)
        self.assertIn("rpc/dispatcher", json.loads(query.out))

        job = yield self.sysadm("--server", server_id, "run", "echo through the bridge", 'sh -c "exit 4"')
        self.assertEqual(job.code, 4, job.err)
        self.assertEqual(job.out, "through the bridge\n")
        self.assertIn("[2/2]", job.err)

        by_name = yield self.sysadm("--server", rows[0]["hostname"], "identify")
        self.assertEqual(by_name.code, 0, by_name.err)
        self.assertIn(f"hostname: {rows[0]['hostname']}", by_name.out)

        error = yield self.sysadm("--server", server_id, "call", "rpc", "settings", '{"action":"nope"}')
        self.assertEqual(error.code, 1)
        self.assertIn("error 400", error.err)

    @defer.inlineCallbacks
    def test_unknown_bridge_key_is_refused(self):
        other = os.path.join(self.home, "other.pem")
        with open(other, "wb") as f:
            f.write(crypto.private_pem(private_key("stranger")))
        result = yield self.sysadm("--bridge-key", other, "peers")
        self.assertEqual(result.code, 5, result.err)
        self.assertIn("refused key", result.err)
        self.assertNotIn("Traceback", result.err)

    @defer.inlineCallbacks
    def test_server_name_that_is_not_offered(self):
        result = yield self.sysadm("--server", "no-such-host", "identify")
        self.assertEqual(result.code, 2, result.err)
        self.assertIn("offers no server 'no-such-host'", result.err)
