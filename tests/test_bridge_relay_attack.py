"""Issue 7 item 2, the challenge relay, replayed against real processes on loopback:
``twistd -n sysadm-bridge``, ``twistd -n sysadmd`` linked to it, the ``sysadm`` CLI as
the victim, and the attacker's two bridge connections scripted frame by frame.

The attacker holds only keys of its own (registered on the bridge without a role, as
upstream's verbs do) and the victim's *public* key: M logs in as a server and claims
the real server's host name and the victim's checksum, M' logs in as a client and
claims the victim's checksum too.
"""

from __future__ import annotations

import pytest
import base64
import json
import os

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from sysadmd.runtime import crypto
from sysadmd.wire import bound
from sysadmd.bridgelink import key as bridgekey
from tests import keys_support as ks
from tests.bridge_processes import Cluster, available, bridge_login, bridge_reply, compact, reply_from


# Starts real daemons or child processes: skipped by ./scripts/test.sh -m "not slow".
pytestmark = pytest.mark.slow


def pause(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def own_id(peer):
    """Our bridge tells an authenticated peer its connection ID (rpc/identify)."""
    mark = len(peer.frames)
    peer.send(compact({"args": "", "id": "whoami", "name": "identify", "namespace": "rpc"}))
    reply, _ = yield peer.wait_for(bridge_reply("whoami"), "the bridge's identify reply", start=mark)
    return reply["args"]["connection_id"]


class RelayAttackTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_challenge_relay_is_stopped_at_the_bridge_the_client_and_the_server(self):
        cluster = Cluster(self)
        yield cluster.start("victim")
        # Mallory: an ordinary (non-admin) account on the server with a key of its own,
        # and two keys on the bridge imported without a role.
        yield cluster.sysadmd_admin("import_ssl_file", "nobody", cluster.public_file("mallory-cli"), "mallory")
        yield cluster.bridge_admin("import_ssl_file", "mallory-srv", cluster.public_file("mallory-srv"))
        yield cluster.bridge_admin("import_ssl_pubkey", "mallory-cli", ks.pem_of("mallory-cli"))
        server_fp = bound.fingerprint(bridgekey.load_or_create(cluster.server_state)[0])

        # The victim has used its server before: the server's key is pinned under its name.
        listing = yield cluster.bridged("victim", "--json", "peers")
        self.assertEqual(listing.exit_code, 0, listing.output)
        [row] = json.loads(listing.out)
        real_id, hostname = row["id"], row["hostname"]
        first = yield cluster.bridged("victim", "--server", hostname, "identify")
        self.assertEqual(first.exit_code, 0, first.output)
        self.assertIn(f"Pinned server {hostname} key {bound.display_fingerprint(server_fp)}", first.err)

        # --- 1. the bridge: M' claiming the victim's checksum is not paired with the server
        m = yield cluster.peer()
        yield bridge_login(m, "mallory-srv", ["victim"], hostname=hostname, role="server")
        m_id = yield own_id(m)
        m2 = yield cluster.peer()
        ids = yield bridge_login(m2, "mallory-cli", ["victim"])
        self.assertNotIn(real_id, ids)
        self.assertEqual(ids, [])
        mark = len(m2.frames)
        m2.send(f"{real_id}\n" + compact({"args": "", "id": "sneak", "name": "identify", "namespace": "rpc"}))
        yield m2.wait_for(available, "the bridge's fresh list after the dropped frame", start=mark)
        yield pause(0.5)
        self.assertEqual([f for f in m2.frames if f.startswith(real_id)], [])
        keys, _ = yield cluster.bridge_admin("list_ssl")
        roles = {line.split()[0]: line.split()[1] for line in keys.splitlines()[1:]}
        self.assertEqual((roles["mallory-srv"], roles["mallory-cli"]), ("server", "client"))  # bound on first use

        # --- 2. even if paired (M' reports its own key, registered on the server for
        # "nobody"), M relaying the real server's answers gets no signature from the victim.
        mark = len(m2.frames)
        m2.send(compact({"args": {"md5_keys": [ks.md5_of("victim"), ks.md5_of("mallory-cli")]},
                         "id": "bridge_request_list_keys", "name": "response", "namespace": "rpc"}))
        ids, _ = yield m2.wait_for(lambda f: (available(f) or None) if real_id in (available(f) or []) else None,
                                   "M' paired with the real server on its own key", start=mark)
        victims = []
        to_m = []

        def m_frame(frame):  # M: pass everything from the victim through M' to the server
            source, newline, body = frame.partition("\n")
            if newline and source.startswith("::"):
                if source not in victims:
                    victims.append(source)
                to_m.append(body)
                m2.send(f"{real_id}\n{body}")

        def m2_frame(frame):  # M': pass the server's answers back through M
            source, newline, body = frame.partition("\n")
            if newline and source == real_id and victims:
                m.send(f"{victims[-1]}\n{body}")

        m.on_frame, m2.on_frame = m_frame, m2_frame

        fooled = yield cluster.bridged("victim", "--server", m_id, "call", "rpc", "query")
        self.assertEqual(fooled.exit_code, 3, fooled.output)
        self.assertIn("relaying", fooled.err)
        self.assertIn("Refusing to sign", fooled.err)
        # M did get the first step (the E2E hello; the bound stage 1 with --no-e2e)...
        self.assertTrue(any('"client_nonce"' in body or '"step":"hello"' in body for body in to_m), to_m)
        self.assertFalse(any("encrypted_string" in _decoded(body) for body in to_m), to_m)  # ...and no signature

        both = yield cluster.bridged("victim", "--json", "peers")
        self.assertEqual(both.exit_code, 0, both.output)
        rows = {r["id"]: r for r in json.loads(both.out)}
        self.assertEqual(set(rows), {real_id, m_id})
        self.assertEqual((rows[real_id]["pinned_as"], rows[real_id]["authorized"]), (hostname, True))
        self.assertEqual(rows[m_id]["hostname"], hostname)  # it claims the name (relayed), unverified
        self.assertEqual((rows[m_id]["pinned_as"], rows[m_id]["fingerprint"], rows[m_id]["authorized"]), (None, None, None))
        self.assertFalse(any("encrypted_string" in _decoded(body) for body in to_m))

        # The pinned name picks the real server, not the impostor that claims it too.
        real = yield cluster.bridged("victim", "--server", hostname, "call", "rpc", "query")
        self.assertEqual(real.exit_code, 0, real.output)
        self.assertFalse(any("encrypted_string" in _decoded(body) for body in to_m))
        m.on_frame = m2.on_frame = None

        # --- 3. the server refuses signatures bound to another server or connection,
        # and a raw (upstream) signature once the session asked for a proof.
        victim_key = ks.private_key("victim")
        other_fp = bound.fingerprint(ks.private_key("mallory-srv"))

        @defer.inlineCallbacks
        def stage1():
            mark = len(m2.frames)
            m2.send(f"{real_id}\n" + compact({"args": {"md5_key": ks.md5_of("victim"), "client_nonce": bound.new_nonce()},
                                              "id": "s1", "name": "auth_ssl", "namespace": "rpc"}))
            reply, _ = yield m2.wait_for(reply_from(real_id, "s1"), "stage 1 from the server", start=mark)
            self.assertEqual(reply["args"]["server_connection_id"], real_id)
            return base64.b64decode(reply["args"]["test_string"]).decode("latin-1")

        @defer.inlineCallbacks
        def stage2(args):
            mark = len(m2.frames)
            body = compact({"args": args, "id": "s2", "name": "auth_ssl", "namespace": "rpc"})
            m2.send(f"{real_id}\n" + base64.b64encode(body.encode()).decode())
            reply, _ = yield m2.wait_for(reply_from(real_id, "s2"), "stage 2 verdict", start=mark)
            return reply

        challenge = yield stage1()
        meant_for_other = bound.sign_bound_login(victim_key, other_fp, real_id, challenge)
        refused = yield stage2({"encrypted_string": meant_for_other, "bound": 1})
        self.assertEqual(refused["name"], "error", refused)
        self.assertEqual(refused["args"]["code"], "401")

        challenge = yield stage1()
        via_m = bound.sign_bound_login(victim_key, server_fp, m_id, challenge)  # what M could have got
        refused = yield stage2({"encrypted_string": via_m, "bound": 1})
        self.assertEqual(refused["args"]["code"], "401", refused)

        challenge = yield stage1()
        raw = crypto.sign_challenge(victim_key, challenge)
        refused = yield stage2({"encrypted_string": raw})
        self.assertEqual(refused["args"]["code"], "401", refused)
        self.assertIn("client_nonce", refused["args"]["detail"])

        # Control: the one signature that works is the victim's own, bound to this server
        # and this connection (which only the victim's key can make).
        challenge = yield stage1()
        good = bound.sign_bound_login(victim_key, server_fp, real_id, challenge)
        accepted = yield stage2({"encrypted_string": good, "bound": 1})
        self.assertEqual(accepted["name"], "response", accepted)


def _decoded(body):
    if body.startswith("{"):
        return body
    try:
        return base64.b64decode(body).decode("utf-8", "replace")
    except ValueError:
        return body


class UpstreamClientsSwitchTests(unittest.TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def test_bridge_upstream_clients_false_refuses_raw_logins_only(self):
        from tests.bridge_processes import server_login

        cluster = Cluster(self)
        cluster.server_config = os.path.join(cluster.base, "sysadmd.conf")
        with open(cluster.server_config, "w") as f:
            f.write("BRIDGE_UPSTREAM_CLIENTS=false\n")
        yield cluster.start("victim")
        peer = yield cluster.peer()
        [server_id] = yield bridge_login(peer, "victim", ["victim"])
        with self.assertRaises(AssertionError) as caught:  # the upstream (raw) flow, as a Qt client does it
            yield server_login(peer, server_id, "victim")
        self.assertIn("BRIDGE_UPSTREAM_CLIENTS=false", str(caught.exception))
        # A bad client_nonce is refused at stage 1, before any challenge is issued.
        mark = len(peer.frames)
        peer.send(f"{server_id}\n" + compact({"args": {"md5_key": ks.md5_of("victim"), "client_nonce": "short"},
                                              "id": "n1", "name": "auth_ssl", "namespace": "rpc"}))
        reply, _ = yield peer.wait_for(reply_from(server_id, "n1"), "the refusal of a bad nonce", start=mark)
        self.assertEqual(reply["args"]["code"], "400", reply)
        self.assertIn("client_nonce", reply["args"]["detail"])
        # Our client signs bound logins: it still gets in.
        result = yield cluster.bridged("victim", "--server", server_id, "call", "rpc", "query")
        self.assertEqual(result.exit_code, 0, result.output)
        self.assertIn("rpc/dispatcher", json.loads(result.out))
