"""``sysadm --bridge``: the real client in a child process, a real bridge, a real sysadmd
that dials the bridge through its bridge link, all on loopback."""

import pytest
import base64
import json
import os
import shutil
import tempfile

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from bridge import config as bridge_config
from bridge.service import build as build_bridge
from sysadmd.runtime import crypto
from sysadmd.wire import bound
from sysadmd.bridgelink import key as bridgekey
from tests.keys_support import pem_of, private_key, register
from tests.support import short_tempdir, start_daemon
from tests.test_client_cli import run_cli


# Starts real daemons or child processes: skipped by ./scripts/test.sh -m "not slow".
pytestmark = pytest.mark.slow


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


class BridgedCli:
    """Set-up for tests of `sysadm --bridge … --key …`: a real bridge, a sysadmd linked to it
    and the client's key registered on both; :meth:`sysadm` runs the real CLI through them."""

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


class BridgedClientTests(BridgedCli, unittest.TestCase):
    timeout = 90

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


# --- servers that are not what they claim ---------------------------------------------------
class FakeServer:
    """A server peer on the bridge, scripted: it claims a host name and answers stage 1
    with no proof (``upstream``) or a proof made with its own key (``own-key``); it
    records every stage-2 signature it is sent."""

    def __init__(self, peer, claimed, mode, key_name):
        self.peer, self.claimed, self.mode = peer, claimed, mode
        self.key = private_key(key_name)
        self.signatures = []
        self.own_id = None
        peer.on_frame = self.frame

    def frame(self, text):
        source, newline, body = text.partition("\n")
        if not newline or not source.startswith("::"):
            return
        message = json.loads(body if body.startswith("{") else base64.b64decode(body))
        args = message.get("args")
        if message.get("name") == "identify":
            self.reply(source, message, {"hostname": self.claimed, "type": "server"})
        elif message.get("name") == "e2e":  # what upstream answers an unknown call before a login
            self.peer.send(f"{source}\n" + json.dumps({"args": {"code": "401", "message": "Unauthorized"},
                                                       "id": message["id"], "name": "error", "namespace": "error"}))
        elif message.get("name") == "auth_ssl" and isinstance(args, dict) and "encrypted_string" in args:
            self.signatures.append(args)
            self.reply(source, message, ["token-" + "x" * 20, 900], encode64=True)
        elif message.get("name") == "auth_ssl":
            challenge = "T" * 40
            reply = {"new_ssl_key": base64.b64encode(crypto.public_pem(self.key).encode()).decode(),
                     "test_string": base64.b64encode(challenge.encode()).decode()}
            if self.mode == "own-key":
                reply.update(bound.server_proof(self.key, args["client_nonce"], challenge, args["md5_key"], self.own_id))
            self.reply(source, message, reply)
        else:
            self.reply(source, message, {}, encode64=True)

    def reply(self, dest, message, args, encode64=False):
        text = json.dumps({"args": args, "id": message["id"], "name": "response", "namespace": message["namespace"]})
        self.peer.send(f"{dest}\n" + (base64.b64encode(text.encode()).decode() if encode64 else text))


class ImpostorTests(BridgedCli, unittest.TestCase):
    """Issue 7 item 2 (client side) and issue 8 item 4, with scripted fake servers."""
    timeout = 90

    @defer.inlineCallbacks
    def fake_server(self, claimed, mode="own-key"):
        from tests.bridge_processes import RawPeer, bridge_login
        from autobahn.twisted.websocket import WebSocketClientFactory, connectWS
        from sysadmd.client.wsclient import insecure_client_tls

        name = f"fake-{len(self.fakes)}"
        self.bridge.bridge.keys.import_key(name, crypto.public_pem(private_key(name)), role="server")
        factory = WebSocketClientFactory(f"wss://{self.bridge.endpoint}/", reactor=reactor)
        factory.protocol, factory.noisy, factory.opened = RawPeer, False, defer.Deferred()
        connectWS(factory, insecure_client_tls(), timeout=10)
        peer = yield factory.opened.addTimeout(15, reactor)
        self.addCleanup(peer.abort)
        yield bridge_login(peer, name, [], role="server")
        peer.key_list = None
        peer.send(json.dumps({"args": {"md5_keys": [crypto.md5_checksum(pem_of("bridged-client"))]},
                              "id": "bridge_request_list_keys", "name": "response", "namespace": "rpc"}))
        peer.send(json.dumps({"args": "", "id": "me", "name": "identify", "namespace": "rpc"}))
        reply, _ = yield peer.wait_for(lambda f: json.loads(f) if f.startswith("{") and '"me"' in f else None, "own id")
        fake = FakeServer(peer, claimed, mode, name)
        fake.own_id = reply["args"]["connection_id"]
        self.fakes.append(fake)
        return fake

    @defer.inlineCallbacks
    def real_identity(self):
        rows = json.loads((yield self.sysadm("--json", "peers")).out)
        [row] = [r for r in rows if r["fingerprint"] and r["id"] not in {f.own_id for f in self.fakes}]
        return row

    @defer.inlineCallbacks
    def test_impostor_with_its_own_key_claiming_a_pinned_name_is_refused(self):
        self.fakes = []
        real = yield self.real_identity()
        pinned = yield self.sysadm("--server", real["hostname"], "identify")
        self.assertEqual(pinned.code, 0, pinned.err)
        fake = yield self.fake_server(real["hostname"])
        refused = yield self.sysadm("--server", fake.own_id, "call", "rpc", "query")
        self.assertEqual(refused.code, 3, refused.err)
        self.assertIn(f"claims to be {real['hostname']}, but its key is not the one pinned", refused.err)
        # The pinned name still means the real server, whoever else claims it.
        ok = yield self.sysadm("--server", real["hostname"], "call", "rpc", "query")
        self.assertEqual(ok.code, 0, ok.err)
        listing = json.loads((yield self.sysadm("--json", "peers")).out)
        impostor = next(r for r in listing if r["id"] == fake.own_id)
        self.assertEqual((impostor["pinned_as"], impostor["authorized"], impostor["hostname_verified"]), (None, None, False))
        self.assertEqual(fake.signatures, [])  # nothing was ever signed for it

    @defer.inlineCallbacks
    def test_server_without_proof_needs_the_explicit_opt_in(self):
        self.fakes = []
        fake = yield self.fake_server("ghost", mode="upstream")
        refused = yield self.sysadm("--server", "ghost", "call", "rpc", "query")
        self.assertEqual(refused.code, 3, refused.err)
        self.assertIn("did not prove its identity", refused.err)
        self.assertIn("--allow-upstream-server", refused.err)
        self.assertEqual(fake.signatures, [])
        allowed = yield self.sysadm("--server", "ghost", "--allow-upstream-server", "call", "rpc", "query")
        self.assertEqual(allowed.code, 0, allowed.err)
        self.assertIn("warning", allowed.err)
        self.assertEqual(len(fake.signatures), 1)
        self.assertNotIn("bound", fake.signatures[0])  # the upstream (raw) form, as asked

    @defer.inlineCallbacks
    def test_ambiguous_name_is_refused_with_the_candidates(self):
        self.fakes = []
        a = yield self.fake_server("twin")
        b = yield self.fake_server("twin")
        refused = yield self.sysadm("--server", "twin", "identify")
        self.assertEqual(refused.code, 2, refused.err)
        self.assertIn("2 servers claim the host name 'twin'", refused.err)
        for fake in (a, b):
            self.assertIn(fake.own_id, refused.err)
            self.assertIn(bound.display_fingerprint(bound.fingerprint(fake.key)), refused.err)
            self.assertEqual(fake.signatures, [])
        # Named by ID, one of them is pinned (TOFU under its claimed name) and used.
        chosen = yield self.sysadm("--server", a.own_id, "identify")
        self.assertEqual(chosen.code, 0, chosen.err)
        self.assertIn("Pinned server twin key", chosen.err)
        self.assertEqual(len(a.signatures), 1)
        self.assertEqual(a.signatures[0]["bound"], 1)
        # Now "twin" means the pinned key: the other twin is no longer a candidate.
        again = yield self.sysadm("--server", "twin", "identify")
        self.assertEqual(again.code, 0, again.err)
        self.assertEqual((len(a.signatures), b.signatures), (2, []))
