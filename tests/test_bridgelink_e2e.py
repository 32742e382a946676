"""End to end with the real bridge: ``twistd -n sysadm-bridge`` as a child process, an
in-process sysadmd linking to it, and a scripted Qt-style client behind the bridge."""

import pytest
import base64
import json
import os
import re
import signal
import sys

from twisted.internet import defer, protocol, reactor, utils
from twisted.trial import unittest

from sysadmd.runtime import crypto
from sysadmd.bridgelink import key as bridgekey
from sysadmd.client.wsclient import connect
from sysadmd.wire.envelope import encode
from tests import keys_support as ks
from tests.support import FakePasswords, make_config, short_tempdir, start_daemon
from tests.test_bridgelink_link import wait_until

# Starts real daemons or child processes: skipped by ./scripts/test.sh -m "not slow".
pytestmark = pytest.mark.slow


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)


class Watch(protocol.ProcessProtocol):
    def __init__(self, pattern):
        self.output = ""
        self.pattern = pattern
        self.matched = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output += data.decode("utf-8", "replace")
        match = re.search(self.pattern, self.output)
        if match and not self.matched.called:
            self.matched.callback(match)

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(None)


class RealBridgeTests(unittest.TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def bridge_admin(self, state, *args):
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, ["-m", "bridge.admin", "--state-dir", state, *args], env=ENV, path=ROOT)
        self.assertEqual(code, 0, err)

    @defer.inlineCallbacks
    def test_link_authenticates_and_pairs_with_a_client(self):
        base = short_tempdir(self)
        bridge_state, server_state = os.path.join(base, "b"), os.path.join(base, "s")
        server_key = os.path.join(base, "server.key")
        with open(server_key, "w") as f:
            f.write(bridgekey.public_key_pem(server_state))
        client_bridge_key = os.path.join(base, "client-to-bridge.key")
        with open(client_bridge_key, "w") as f:
            f.write(ks.pem_of("to-bridge"))
        yield self.bridge_admin(bridge_state, "import_ssl_file", "office", server_key)
        client_server_key = os.path.join(base, "client-to-server.key")
        with open(client_server_key, "w") as f:
            f.write(ks.pem_of("c1"))
        # Two client keys, as the Qt GUI has: the bridge pairs on the one the client
        # proves, so the administrator vouches for the other one.
        yield self.bridge_admin(bridge_state, "import_ssl_file", "laptop", client_bridge_key, "--pairs-with", client_server_key)

        watch = Watch(r"listening on \S+ port (\d+)")
        transport = reactor.spawnProcess(
            watch, sys.executable,
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "sysadm-bridge", "--port", "tcp:0:interface=127.0.0.1", "--state-dir", bridge_state],
            env=ENV, path=ROOT)

        def stop_bridge():
            if not watch.ended.called:
                transport.signalProcess(signal.SIGTERM)
            return watch.ended

        self.addCleanup(stop_bridge)
        port = int((yield watch.matched.addTimeout(30, reactor)).group(1))

        running = yield start_daemon(self, make_config(server_state), passwords=FakePasswords({}))
        ks.register(running, "root", "c1")
        links = running.daemon.bridge_links
        links.store.add("office", f"127.0.0.1:{port}")
        links.sync()
        link = links.links["office"]
        yield wait_until(lambda: link.is_authenticated, 15, "the link to authenticate to the real bridge")

        # The scripted client: identify as client, key login to the bridge, report the
        # checksum of its client->server key, then talk to the server it is paired with.
        client = yield connect(reactor, f"wss://127.0.0.1:{port}")
        self.addCleanup(client.close)
        texts = []
        client.unsolicited_listeners.append(texts.append)
        client.event_listeners.append(lambda m: texts.append(encode(m)))
        yield wait_until(lambda: any("sysadm_bridge_request_ident" in t for t in texts), 10, "the bridge's identify")
        client.send_text(encode({"args": {"hostname": "laptop", "type": "client"}, "id": "sysadm_bridge_request_ident",
                                 "name": "response", "namespace": "rpc"}))
        stage1 = yield client.call("rpc", "auth_ssl", "", request_id="sysadm-client-auth-auto")
        signed = crypto.sign_challenge(ks.private_key("to-bridge"), stage1["args"]["test_string"])
        stage2 = yield client.call("rpc", "auth_ssl", {"encrypted_string": signed}, request_id="sysadm-client-auth-auto")
        self.assertEqual(stage2["name"], "response", stage2)
        yield wait_until(lambda: any("list_ssl_checksums" in t for t in texts), 10, "the key list request")
        client.send_text(encode({"args": {"md5_keys": [ks.md5_of("c1")]}, "id": "bridge_request_list_keys",
                                 "name": "response", "namespace": "rpc"}))

        def announced():
            for t in texts:
                if t.startswith("{") and '"available_connections"' in t:
                    ids = json.loads(t)["args"]["available_connections"]
                    if ids:
                        return ids
            return None

        server_ids = yield wait_until(announced, 10, "the server to be announced to the client")
        self.assertEqual(len(server_ids), 1)
        server_id = server_ids[0]
        yield wait_until(lambda: len(link.clients or []) == 1, 10, "the server to see the client")

        def frame():
            for i, t in enumerate(texts):
                if t.startswith(server_id + "\n"):
                    del texts[i]
                    return t[len(server_id) + 1:]
            return None

        client.send_text(f"{server_id}\n" + encode({"args": {"md5_key": ks.md5_of("c1")}, "id": "sysadm-client-auth-auto",
                                                     "name": "auth_ssl", "namespace": "rpc"}))
        reply = json.loads((yield wait_until(frame, 10, "the md5_key stage-1 reply")))
        challenge = base64.b64decode(reply["args"]["test_string"]).decode()
        body = encode({"args": {"encrypted_string": crypto.sign_challenge(ks.private_key("c1"), challenge)},
                       "id": "sysadm-client-auth-auto", "name": "auth_ssl", "namespace": "rpc"})
        client.send_text(f"{server_id}\n" + base64.b64encode(body.encode()).decode())
        login = json.loads(base64.b64decode((yield wait_until(frame, 10, "the stage-2 reply"))))
        self.assertEqual(login["name"], "response", login)
        body = encode({"args": "", "id": "q1", "name": "query", "namespace": "rpc"})
        client.send_text(f"{server_id}\n" + base64.b64encode(body.encode()).decode())
        query = json.loads(base64.b64decode((yield wait_until(frame, 10, "the query reply"))))
        self.assertEqual((query["id"], query["name"]), ("q1", "response"))
        self.assertIn("rpc/dispatcher", query["args"])
        self.assertEqual(links.status()["office"]["peers"], link.clients.ids())
