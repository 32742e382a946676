"""Issue 7 item 3 on sysadm-bridge: the blacklist is asked at every auth_ssl, and a
block closes every open connection of the address (real TLS WebSockets on loopback)."""

from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.runtime import crypto
from tests.test_bridge_wss import connect_peer, private_key, register, start_bridge


class BridgeBlocksOpenConnections(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_10_preopened_connections_get_at_most_3_checks(self):
        daemon = yield start_bridge(self, BLACKLIST_EXEMPT_LOOPBACK="false", BLACKLIST_AUTH_FAIL_LIMIT=3)
        register(daemon, "srv", private_key("server"), "server")
        verified = []
        real_verify = daemon.bridge.keys.verify

        def counting_verify(*args, **kwargs):
            verified.append(args)
            return real_verify(*args, **kwargs)

        daemon.bridge.keys.verify = counting_verify
        peers = []
        for _ in range(10):
            peers.append((yield connect_peer(self, daemon, role="server")))
        # Every connection fetches a challenge first, then all answer with a stranger's key.
        challenges = []
        for i, peer in enumerate(peers):
            start = len(peer.frames)
            peer.send_json({"args": "", "id": f"s{i}", "name": "auth_ssl", "namespace": "rpc"})
            challenges.append((yield peer.wait_reply(f"s{i}", start))["args"]["test_string"])
        for i, (peer, challenge) in enumerate(zip(peers, challenges)):
            peer.send_json({"args": {"encrypted_string": crypto.sign_challenge(private_key("stranger"), challenge)},
                            "id": f"s{i}", "name": "auth_ssl", "namespace": "rpc"})
        closes = yield defer.gatherResults([p.closed for p in peers])
        self.assertEqual(len(verified), 3)
        self.assertEqual({code for code, _ in closes}, {1008})
        self.assertTrue(all("blocked" in reason for _, reason in closes))
        self.assertEqual(len(daemon.bridge.directory), 0)
