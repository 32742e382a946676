"""Three real processes on loopback: ``twistd -n sysadm-bridge``, ``twistd -n sysadmd``
linked to it by the admin commands, and a client behind the bridge (the ``sysadm`` CLI
as a child, or a peer scripted frame by frame in the test).

Each test starts its own bridge and server (about a second each) and kills whatever is
still running at cleanup; see :mod:`tests.bridge_processes` for the wiring.
"""

from __future__ import annotations

import pytest
import base64
import hashlib
import json
import sys
import time

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from sysadmd.runtime import crypto
from tests import keys_support as ks
from tests.bridge_processes import (IDENT_REQUEST, Cluster, available, body_from, bridge_login, bridge_reply,
                                    compact, decode_body, server_call, server_login)


# Starts real daemons or child processes: skipped by ./scripts/test.sh -m "not slow".
pytestmark = pytest.mark.slow


def pause(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


def raw_body(server_id, request_id):
    """The payload, as sent, of a relayed reply from *server_id* with id *request_id*."""
    read = body_from(server_id)

    def match(frame):
        body = read(frame)
        return body if body is not None and decode_body(body).get("id") == request_id else None
    return match


def server_id_of(ids):
    assert len(ids) == 1, ids
    assert ids[0].startswith("::{") and ids[0].endswith("}"), ids
    return ids[0]


class BridgedClientTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_cli_calls_and_runs_a_job_through_the_bridge(self):
        cluster = Cluster(self)
        yield cluster.start("laptop")
        listing = yield cluster.bridged("laptop", "--json", "peers")
        self.assertEqual(listing.exit_code, 0, listing.output)
        [row] = json.loads(listing.out)
        self.assertIsNone(row["authorized"], row)  # not pinned yet: listed, not logged in to
        server_id = server_id_of([row["id"]])
        pinned = yield cluster.bridged("laptop", "--server", server_id, "identify")  # first use pins it
        self.assertEqual(pinned.exit_code, 0, pinned.output)
        self.assertIn("Pinned server", pinned.err)
        link = yield cluster.link_status()
        self.assertTrue(link["authenticated"], link)

        query = yield cluster.bridged("laptop", "--server", server_id, "call", "rpc", "query")
        self.assertEqual(query.exit_code, 0, query.output)
        self.assertIn("rpc/dispatcher", json.loads(query.out))

        # A second client, scripted, subscribes to dispatcher events on the same server
        # before the job starts: it must see the job's progress relayed too.
        watcher = yield cluster.peer()
        ids = yield bridge_login(watcher, "laptop", ["laptop"])
        self.assertEqual(ids, [server_id])
        yield server_login(watcher, server_id, "laptop")
        subscribed = yield server_call(watcher, server_id, "events", "subscribe", "dispatcher", "sub1")
        self.assertEqual(subscribed["name"], "response", subscribed)

        ticker = f"{sys.executable} -c \"import time; [print(i, flush=True) or time.sleep(0.4) for i in range(4)]\""
        job = yield cluster.bridged("laptop", "--server", server_id, "run", "--id", "e2e-job", ticker, 'sh -c "exit 4"')
        self.assertEqual(job.exit_code, 4, job.output)
        self.assertEqual(job.out, "0\n1\n2\n3\n")
        self.assertIn("[2/2]", job.err)
        # Live: the job runs ~1.6 s, and its first line reached the terminal long before the end.
        first = next(t for t, text in job.chunks if "0" in text)
        self.assertGreater(job.chunks[-1][0] - first, 0.8, job.chunks)

        def finished(frame):
            body = body_from(server_id)(frame)
            if body is None:
                return None
            message = decode_body(body)
            args = message.get("args") or {}
            if message.get("name") == "dispatcher" and args.get("process_id") == "e2e-job" and args.get("state") == "finished":
                return message
            return None

        event, _ = yield watcher.wait_for(finished, "the job's finished event at the watcher")
        self.assertEqual(event["namespace"], "events")
        self.assertEqual(event["args"][ticker], "0\n1\n2\n3\n")
        self.assertEqual(event["args"]['return_codes/sh -c "exit 4"'], "4")
        relayed = [decode_body(b) for b in map(body_from(server_id), watcher.frames) if b is not None]
        states = [m["args"].get("state") for m in relayed if m.get("name") == "dispatcher" and m["args"].get("process_id") == "e2e-job"]
        self.assertIn("running", states)

    @defer.inlineCallbacks
    def test_client_with_a_key_unknown_to_the_server_is_not_paired(self):
        cluster = Cluster(self)
        yield cluster.start("laptop")
        yield cluster.register_on_bridge("stranger")  # the bridge lets it in; the server does not know it
        friend = yield cluster.peer()
        server_id = server_id_of((yield bridge_login(friend, "laptop", ["laptop"])))
        yield cluster.wait_link(lambda link: len(link["peers"]) == 1, "the server to see the paired client")

        stranger = yield cluster.peer()
        ids = yield bridge_login(stranger, "stranger", ["stranger"])
        self.assertEqual(ids, [])
        mark = len(stranger.frames)
        stranger.send(f"{server_id}\n" + compact({"args": "", "id": "sneak", "name": "identify", "namespace": "rpc"}))
        again, _ = yield stranger.wait_for(available, "a fresh available_connections after the dropped frame", start=mark)
        self.assertEqual(again, [])
        yield pause(0.5)  # time for a wrongly relayed answer to come back: none may
        self.assertEqual([f for f in stranger.frames if f.startswith(server_id)], [])
        self.assertEqual(stranger.available_lists(), [[], []])
        link = yield cluster.link_status()
        self.assertEqual(len(link["peers"]), 1, link)  # only the friend; the stranger never reached it

        # The CLI with the stranger's key agrees: no server on offer, and asking for one fails.
        listing = yield cluster.bridged("stranger", "peers")
        self.assertEqual(listing.exit_code, 0, listing.output)
        self.assertIn("the bridge offers no servers for this key", listing.out)
        refused = yield cluster.bridged("stranger", "--server", server_id, "call", "rpc", "query")
        self.assertEqual(refused.exit_code, 2, refused.output)
        self.assertNotIn("Traceback", refused.output)

    @defer.inlineCallbacks
    def test_upstream_client_byte_for_byte(self):
        """A Qt-style client, every frame written out as docs/protocol.md §8.1/§8.3 shows.

        Like the Qt client it has two keys: one the bridge knows, one the server knows.
        """
        cluster = Cluster(self)
        yield cluster.start(bridge_only=("qt-bridge",), server_only=("qt-server",))
        # The bridge pairs a client only on keys it proved; the administrator vouches for
        # the Qt GUI's second (client-to-server) key when importing its bridge key.
        yield cluster.bridge_admin("import_ssl_file", "qt-bridge", cluster.public_file("qt-bridge"), "--role", "client",
                                   "--pairs-with", cluster.public_file("qt-server"))
        bridge_key, server_key = ks.private_key("qt-bridge"), ks.private_key("qt-server")
        md5 = base64.b64encode(hashlib.md5(crypto.public_pem(server_key).encode()).digest()).decode()
        self.assertEqual(len(md5), 24)

        qt = yield cluster.peer()
        yield qt.wait_for(lambda f: f if f == IDENT_REQUEST else None, "the bridge's identify request")
        qt.send('{"args":{"hostname":"qt-laptop","type":"client"},"id":"sysadm_bridge_request_ident","name":"response","namespace":"rpc"}')
        qt.send('{"args":"","id":"sysadm-client-auth-auto","name":"auth_ssl","namespace":"rpc"}')
        stage1, _ = yield qt.wait_for(bridge_reply("sysadm-client-auth-auto"), "the bridge's challenge")
        test_string = stage1["args"]["test_string"]
        self.assertRegex(test_string, r"^[A-Za-z0-9]{40}$")
        mark = len(qt.frames)
        signed = crypto.sign_challenge(bridge_key, test_string)
        qt.send('{"args":{"encrypted_string":"%s"},"id":"sysadm-client-auth-auto","name":"auth_ssl","namespace":"rpc"}' % signed)
        token, _ = yield qt.wait_for(bridge_reply("sysadm-client-auth-auto"), "the bridge's token", start=mark)
        self.assertEqual(token["name"], "response", token)
        self.assertEqual(len(token["args"][0]), 40)
        self.assertEqual(token["args"][1], 0)
        request, _ = yield qt.wait_for(lambda f: f if '"list_ssl_checksums"' in f else None, "list_ssl_checksums", start=mark)
        self.assertEqual(json.loads(request), {"args": {"action": "list_ssl_checksums"}, "id": "bridge_request_list_keys",
                                               "name": "settings", "namespace": "rpc"})
        qt.send('{"args":{"md5_keys":["%s"]},"id":"bridge_request_list_keys","name":"response","namespace":"rpc"}' % md5)
        server_id = server_id_of((yield qt.wait_for(lambda f: available(f) or None, "the server's ID", start=mark))[0])

        mark = len(qt.frames)
        qt.send(server_id + '\n{"args":"","id":"sysadm_client_identify","name":"identify","namespace":"rpc"}')
        qt.send(server_id + '\n{"args":{"md5_key":"%s"},"id":"sysadm-client-auth-auto","name":"auth_ssl","namespace":"rpc"}' % md5)
        ident, _ = yield qt.wait_for(raw_body(server_id, "sysadm_client_identify"), "the identify reply", start=mark)
        self.assertTrue(ident.startswith("{"), ident)  # plain JSON before the key exchange
        self.assertEqual(json.loads(ident)["args"]["type"], "server")
        plain, _ = yield qt.wait_for(raw_body(server_id, "sysadm-client-auth-auto"), "the stage-1 reply", start=mark)
        self.assertTrue(plain.startswith("{"), plain)  # the stage-1 reply is plain too (§3.3 step 2)
        stage1 = json.loads(plain)
        self.assertEqual(stage1["name"], "response", stage1)
        challenge = base64.b64decode(stage1["args"]["test_string"]).decode("latin-1")
        new_key = stage1["args"]["new_ssl_key"]
        new_key = base64.b64decode("".join(new_key) if isinstance(new_key, list) else new_key).decode()
        self.assertIn(" PUBLIC KEY--", new_key)  # what switches a Qt client to base64 mode

        mark = len(qt.frames)
        signed = crypto.sign_challenge(server_key, challenge)
        stage2 = '{"args":{"encrypted_string":"%s"},"id":"sysadm-client-auth-auto","name":"auth_ssl","namespace":"rpc"}' % signed
        qt.send(server_id + "\n" + base64.b64encode(stage2.encode()).decode())
        body, _ = yield qt.wait_for(raw_body(server_id, "sysadm-client-auth-auto"), "the token reply", start=mark)
        self.assertFalse(body.startswith("{"), body)
        login = json.loads(base64.b64decode(body))
        self.assertEqual((login["id"], login["name"], login["namespace"]), ("sysadm-client-auth-auto", "response", "rpc"))
        self.assertIsInstance(login["args"][0], str)

        mark = len(qt.frames)
        query = '{"args":"","id":"sysadm_client_ping","name":"query","namespace":"rpc"}'
        qt.send(server_id + "\n" + base64.b64encode(query.encode()).decode())
        body, _ = yield qt.wait_for(raw_body(server_id, "sysadm_client_ping"), "the query reply", start=mark)
        reply = json.loads(base64.b64decode(body))
        self.assertEqual((reply["id"], reply["name"]), ("sysadm_client_ping", "response"), reply)
        self.assertIn("rpc/dispatcher", reply["args"])
        self.assertEqual(reply["args"]["rpc/dispatcher"], "read/write")  # root: full access


class FailureTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def paired_client(self, cluster):
        peer = yield cluster.peer()
        server_id = server_id_of((yield bridge_login(peer, "laptop", ["laptop"])))
        yield server_login(peer, server_id, "laptop")
        return peer, server_id

    @defer.inlineCallbacks
    def test_killed_server_leaves_the_clients_list_within_2_s(self):
        cluster = Cluster(self)
        yield cluster.start("laptop")
        peer, server_id = yield self.paired_client(cluster)
        mark = len(peer.frames)
        killed_at = time.monotonic()
        cluster.server.signal("KILL")
        ids, index = yield peer.wait_for(available, "available_connections after the kill", start=mark, timeout=5)
        elapsed = peer.times[index] - killed_at
        self.assertEqual(ids, [])
        self.assertLess(elapsed, 2.0)
        yield cluster.server.ended
        self.assertFalse(peer.closed.called)  # the client itself stays connected to the bridge
        self.log_timing("server SIGKILL -> client's available_connections", elapsed)

    @defer.inlineCallbacks
    def test_bridge_restart_server_relinks_by_itself(self):
        cluster = Cluster(self)
        yield cluster.start("laptop")
        peer, old_id = yield self.paired_client(cluster)
        port = cluster.port
        yield cluster.stop_bridge()
        close_code, _ = yield peer.closed.addTimeout(5, reactor)
        # 1001 "going away": the bridge waits for its close frames before it exits.
        self.assertEqual(close_code, 1001)
        yield cluster.wait_link(lambda link: not link["connected"], "the server to notice the bridge is gone", timeout=5)

        yield cluster.start_bridge(port)  # same port, same state dir (certificate, keys)
        up = time.monotonic()
        self.assertEqual(cluster.port, port)
        client = yield cluster.peer()
        first = yield bridge_login(client, "laptop", ["laptop"])
        ids = first
        if not ids:
            ids, index = yield client.wait_for(lambda f: available(f) or None, "the server to come back", timeout=10)
            seen = client.times[index] - up
        else:
            seen = time.monotonic() - up
        new_id = server_id_of(ids)
        self.assertNotEqual(new_id, old_id)  # IDs are per connection
        self.assertLess(seen, 10.0)
        link = yield cluster.link_status()
        self.assertTrue(link["authenticated"], link)
        # And it works: a login and a query through the new bridge process.
        yield server_login(client, new_id, "laptop")
        reply = yield server_call(client, new_id, "rpc", "query", "", "q")
        self.assertEqual(reply["name"], "response", reply)
        self.log_timing("bridge up -> server back in a client's available_connections", seen)

    @defer.inlineCallbacks
    def test_key_removal_on_the_bridge_drops_live_peers(self):
        cluster = Cluster(self)
        yield cluster.start("laptop", "desk")
        laptop, server_id = yield self.paired_client(cluster)
        desk = yield cluster.peer()
        yield bridge_login(desk, "desk", ["desk"])
        yield cluster.wait_link(lambda link: len(link["peers"]) == 2, "the server to see both clients")

        # A client's key: that client is closed, the server's list loses it.
        removed_at = time.monotonic()
        yield cluster.bridge_admin("remove_ssl", "laptop")
        code, reason = yield laptop.closed.addTimeout(5, reactor)
        self.assertEqual(code, 1008)
        self.assertIn("revoked", reason)
        yield cluster.wait_link(lambda link: len(link["peers"]) == 1, "the server's list to drop the client", timeout=5)
        elapsed = time.monotonic() - removed_at  # includes starting the admin command
        self.assertLess(elapsed, 4.0)
        self.assertFalse(desk.closed.called)

        # The server's key: the server's link is closed and the remaining client hears of it.
        mark = len(desk.frames)
        yield cluster.bridge_admin("remove_ssl", "office")
        ids, _ = yield desk.wait_for(available, "available_connections without the server", start=mark, timeout=5)
        self.assertEqual(ids, [])
        yield cluster.wait_link(lambda link: not link["authenticated"], "the server's link to be dropped", timeout=5)
        self.assertFalse(desk.closed.called)
        self.log_timing("remove_ssl (command start) -> server's peer list updated", elapsed)

    def log_timing(self, what, seconds):
        # Shown with pytest -s; the assertion above is what counts.
        print(f"\n[bridge e2e] {what}: {seconds * 1000:.0f} ms")


# The same tests with the bridge's listener on Twisted's TLS over pyOpenSSL (the classes
# above run on the default engine, the standard library's ssl).
class BridgedClientTestsPyOpenSSL(BridgedClientTests):
    tls_engine = "pyopenssl"


class FailureTestsPyOpenSSL(FailureTests):
    tls_engine = "pyopenssl"
