"""The seed's supervisor wire (sysadmd/supervisor/seedwire.py) and the peer uid lookup
(peercred.py), against a small supervisor with the core's ``handle`` signature: the pure
parser/serializer, the framing on a string transport with a Clock, and real loopback
TCP and Unix sockets with plain blocking clients (as root, and as a real unprivileged
user created for the test)."""

from __future__ import annotations

import base64
import json
import os
import pwd
import socket
import stat
import subprocess
import uuid
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import defer, reactor, task, threads
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from sysadmd.auth.rights import Rights
from sysadmd.supervisor import peercred, seedwire
from sysadmd.supervisor.seedwire import Peer, Query, SeedWireFactory, WireError, parse_query, response_bytes
from tests.support import short_tempdir


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


@dataclass(frozen=True)
class Reply:
    status: str
    error: str = ""
    data: Any = None
    job: str = ""


class FakeSupervisor:
    """The core's ``handle`` contract over a dict; ``hold`` keeps answers pending."""

    def __init__(self):
        self.programs = {}
        self.running = set()
        self.calls = []
        self.hold = False
        self.pending = []

    def handle(self, verb, name, data, *, full_access, actor):
        self.calls.append((verb, name, data, full_access, actor))
        if self.hold:
            d = defer.Deferred()
            self.pending.append(d)
            return d
        if verb == "boom":
            raise RuntimeError("core crashed")
        if not full_access and verb not in ("status", "list", "pull"):
            return defer.succeed(Reply("fail", error=f"{verb}: needs full access"))
        if verb == "list":
            return defer.succeed(Reply("list", data=sorted(self.programs)))
        if verb == "restart":
            return defer.succeed(Reply("success"))
        if verb == "push":
            self.programs[name] = data
            return defer.succeed(Reply("success"))
        if name not in self.programs:
            return defer.succeed(Reply("fail", error="Invalid job name."))
        if verb == "start":
            if name in self.running:
                return defer.succeed(Reply("redundant"))
            self.running.add(name)
            return defer.succeed(Reply("success"))
        if verb in ("kill", "stop"):
            self.running.discard(name)
            return defer.succeed(Reply("success"))
        if verb == "status":
            return defer.succeed(Reply("status", data={"name": name, "state": "RUNNING" if name in self.running
                                                       else "STOPPED"}))
        if verb == "pull":
            return defer.succeed(Reply("file", job=name, data=self.programs[name]))
        if verb == "delete":
            del self.programs[name]
            return defer.succeed(Reply("success"))
        return defer.succeed(Reply("success"))


class ParserTests(unittest.TestCase):
    def test_the_seeds_sample_queries_parse(self):
        self.assertEqual(parse_query(b'{"command":"kill","job":"bmdpbng="}'), Query("kill", "nginx"))
        # the seed's document shows it with whitespace; that parses the same
        self.assertEqual(parse_query(b'{\n\t"command" : "kill",\n\t"job" : "bmdpbng="\n}'), Query("kill", "nginx"))
        definition = {"name": "nginx", "command": ["/usr/sbin/nginx", "-g", "daemon off;"]}
        pushed = json.dumps({"command": "push", "job": b64("nginx"), "data": b64(json.dumps(definition))})
        self.assertEqual(parse_query(pushed.encode()), Query("push", "nginx", definition))
        self.assertEqual(parse_query(b'{"command":"list"}'), Query("list"))
        self.assertEqual(parse_query(b'{"command":"restart"}'), Query("restart"))

    def test_the_seeds_responses_byte_for_byte(self):
        self.assertEqual(response_bytes("fail", error="Invalid job name."),
                         b'{"response":"fail","error":"SW52YWxpZCBqb2IgbmFtZS4="};;')
        self.assertEqual(response_bytes("success"), b'{"response":"success"};;')
        self.assertEqual(response_bytes("redundant"), b'{"response":"redundant"};;')
        listed = response_bytes("list", data=["nginx", "apache2"])
        self.assertTrue(listed.startswith(b'{"response":"list","list":"') and listed.endswith(b'"};;'))
        self.assertEqual(unb64(json.loads(listed[:-2])["list"]), '{"jobs":[{"name":"nginx"},{"name":"apache2"}]}')
        filed = json.loads(response_bytes("file", job="nginx", data={"name": "nginx", "command": ["a b"]})[:-2])
        self.assertEqual(list(filed), ["response", "job", "data"])
        self.assertEqual(filed["job"], "bmdpbng=")
        self.assertEqual(unb64(filed["data"]), '{"name":"nginx","command":["a b"]}')
        status = json.loads(response_bytes("status", data={"state": "RUNNING", "pid": 7})[:-2])
        self.assertEqual(unb64(status["data"]), '{"state":"RUNNING","pid":7}')
        for kind in ("success", "fail", "status", "file", "list", "redundant"):
            self.assertNotRegex(response_bytes(kind, data={"a b": "c d"}, job="x y", error="e f"), rb"\s")
        with self.assertRaises(ValueError):
            response_bytes("maybe")

    def assertWireError(self, raw: bytes, response: str, *words: str):
        with self.assertRaises(WireError) as caught:
            parse_query(raw)
        self.assertEqual(caught.exception.response, response, caught.exception.reason)
        for word in words:
            self.assertIn(word, caught.exception.reason)

    def test_no_query_is_invalid_with_the_reason(self):
        self.assertWireError(b'{"command":"kill"', "invalid", "not JSON")
        self.assertWireError(b"\xff\xfe", "invalid", "UTF-8")
        self.assertWireError(b'["kill"]', "invalid", "JSON object")
        self.assertWireError(b'{"job":"bmdpbng="}', "invalid", "command: missing")
        self.assertWireError(b'{"command":"explode","job":"bmdpbng="}', "invalid", "unknown 'explode'", "start")
        self.assertWireError(b'{"command":7}', "invalid", "command")
        self.assertWireError(b"[" * 100000 + b"]" * 100000, "invalid", "nested too deeply")
        self.assertWireError(b'{"command":"list","x":NaN}', "invalid", "NaN")
        self.assertWireError(b"", "invalid", "not JSON")

    def test_unusable_fields_fail_naming_the_field(self):
        self.assertWireError(b'{"command":"kill"}', "fail", "job: missing")
        self.assertWireError(b'{"command":"kill","job":"bmdpbng"}', "fail", "job: not valid base64")
        self.assertWireError(b'{"command":"kill","job":"bm*pbng="}', "fail", "job: not valid base64")
        self.assertWireError(b'{"command":"kill","job":"//79"}', "fail", "job:", "UTF-8")
        self.assertWireError(b'{"command":"kill","job":5}', "fail", "job: expected a base64 string")
        self.assertWireError(b'{"command":"push","job":"bmdpbng="}', "fail", "data: missing")
        bad = json.dumps({"command": "push", "job": "bmdpbng=", "data": b64("{name: nginx}")}).encode()
        self.assertWireError(bad, "fail", "data: the definition is not JSON")
        listed = json.dumps({"command": "push", "job": "bmdpbng=", "data": b64("[1]")}).encode()
        self.assertWireError(listed, "fail", "data: the definition must be a JSON object")


class GivenPeerFactory(SeedWireFactory):
    """The protocol on a string transport: the peer is given, not looked up."""

    def __init__(self, supervisor, clock, peer, **kwargs):
        super().__init__(supervisor, lambda uid: True, clock, where="test", unix=False, **kwargs)
        self.peer = peer

    def identify(self, transport):
        return defer.succeed(self.peer)


FULL = Peer(1000, True, "uid 1000 via 127.0.0.1:7777")


class ProtocolTests(unittest.TestCase):
    def connect(self, peer=FULL, **kwargs):
        self.clock = task.Clock()
        self.core = FakeSupervisor()
        factory = GivenPeerFactory(self.core, self.clock, peer, **kwargs)
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        proto.makeConnection(transport)
        return proto, transport

    def answers(self, transport):
        out = transport.value()
        transport.clear()
        self.assertTrue(out.endswith(b";;") or not out, out)
        return [json.loads(part) for part in out.split(b";;")[:-1]]

    def test_queries_split_anywhere_and_pipelined_are_answered_in_order(self):
        proto, transport = self.connect()
        stream = (b'{"command":"push","job":"bmdpbng=","data":"' + b64('{"name":"nginx"}').encode() + b'"};;'
                  b'{"command":"start","job":"bmdpbng="};;{"command":"start","job":"bmdpbng="};;\n'
                  b'{"command":"kill","job":"bmdpbng="};;')
        for i in range(len(stream)):
            proto.dataReceived(stream[i:i + 1])
        self.assertEqual([a["response"] for a in self.answers(transport)],
                         ["success", "success", "redundant", "success"])
        self.assertEqual([c[0] for c in self.core.calls], ["push", "start", "start", "kill"])
        self.assertEqual(self.core.calls[0][2], {"name": "nginx"})
        self.assertEqual(self.core.calls[1][3:], (True, "uid 1000 via 127.0.0.1:7777"))

    def test_garbage_is_answered_and_the_connection_goes_on(self):
        proto, transport = self.connect()
        proto.dataReceived(b'not json;;{"command":"nope"};;{"command":"kill","job":"!!"};;{"command":"list"};;')
        got = self.answers(transport)
        self.assertEqual([a["response"] for a in got], ["invalid", "invalid", "fail", "list"])
        self.assertIn("not JSON", unb64(got[0]["error"]))
        self.assertIn("job: not valid base64", unb64(got[2]["error"]))
        self.assertFalse(transport.disconnecting)

    def test_a_garbage_flood_is_answered_but_not_logged_line_by_line(self):
        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        proto, transport = self.connect()
        proto.dataReceived(b"junk;;" * 500)
        self.assertEqual(len(self.answers(transport)), 500)
        proto.connectionLost(None)
        lines = [e for e in seen if "supervisor wire" in (e.get("log_format") or "")]
        self.assertEqual(len(lines), seedwire.LOGGED_BAD_QUERIES + 1)
        self.assertEqual(lines[-1]["n"], 500)

    def test_a_query_without_terminator_past_the_limit_is_skipped_to_its_end(self):
        proto, transport = self.connect(max_message=4096)
        proto.dataReceived(b"x" * 3000)
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(b"y" * 3000)  # now past 4096 without ';;'
        got = self.answers(transport)
        self.assertEqual([a["response"] for a in got], ["invalid"])
        self.assertIn("no ';;' within 4096 bytes", unb64(got[0]["error"]))
        for _ in range(100):  # 1 MB more of the same query: dropped, not buffered
            proto.dataReceived(b"z" * 10000 + b";")
        self.assertLess(len(proto.buffer), 2)
        proto.dataReceived(b';{"command":"list"};;')  # its ';;' straddles two reads
        self.assertEqual([a["response"] for a in self.answers(transport)], ["list"])
        # a whole query over the limit that arrives in one read is refused too
        proto.dataReceived(b'{"command":"list","pad":"' + b"p" * 5000 + b'"};;{"command":"list"};;')
        self.assertEqual([a["response"] for a in self.answers(transport)], ["invalid", "list"])

    def test_pipelining_is_bounded_by_pausing_the_reads(self):
        proto, transport = self.connect()
        self.core.hold = True
        proto.dataReceived(b'{"command":"list"};;' * (seedwire.MAX_PIPELINE + 5))
        self.assertEqual(len(self.core.calls), 1)  # one at a time
        self.assertEqual(transport.producerState, "paused")
        for _ in range(seedwire.MAX_PIPELINE + 5):
            self.core.pending.pop(0).callback(Reply("list", data=[]))
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(len(self.answers(transport)), seedwire.MAX_PIPELINE + 5)

    def test_a_peer_that_does_not_read_stops_the_answering(self):
        proto, transport = self.connect()
        proto.pauseProducing()  # what the transport does when its send buffer is full
        proto.dataReceived(b'{"command":"list"};;' * 3)
        self.assertEqual(transport.value(), b"")
        proto.resumeProducing()
        self.assertEqual(len(self.answers(transport)), 3)

    def test_idle_connections_close_busy_ones_do_not(self):
        proto, transport = self.connect(idle_timeout=30)
        self.clock.advance(29)
        proto.dataReceived(b'{"command":"list"};;')
        self.clock.advance(29)
        self.assertFalse(transport.disconnecting)
        self.core.hold = True
        proto.dataReceived(b'{"command":"list"};;')
        self.clock.advance(100)  # waiting for the core is not idleness
        self.assertFalse(transport.disconnecting)
        self.core.pending.pop().callback(Reply("list", data=[]))
        self.clock.advance(31)
        self.assertTrue(transport.disconnecting)

    def test_queries_wait_until_the_peer_is_known(self):
        later = defer.Deferred()
        core = self.core = FakeSupervisor()
        factory = GivenPeerFactory(core, task.Clock(), FULL)
        factory.identify = lambda transport: later  # the /proc lookup still running in its thread
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b'{"command":"list"};;nonsense;;')
        self.assertEqual((transport.value(), core.calls), (b"", []))
        later.callback(FULL)
        self.assertEqual([a["response"] for a in self.answers(transport)], ["list", "invalid"])

    def test_rights_per_peer(self):
        limited = Peer(1001, False, "uid 1001 via 127.0.0.1:7777")
        proto, transport = self.connect(limited)
        self.core.programs["nginx"] = {"name": "nginx"}
        proto.dataReceived(b'{"command":"start","job":"bmdpbng="};;{"command":"status","job":"bmdpbng="};;'
                           b'{"command":"pull","job":"bmdpbng="};;{"command":"list"};;')
        got = self.answers(transport)
        self.assertEqual([a["response"] for a in got], ["fail", "status", "file", "list"])
        self.assertIn("start: needs full access; uid 1001", unb64(got[0]["error"]))
        self.assertEqual([c[0] for c in self.core.calls], ["status", "pull", "list"])  # start never reached it
        self.assertTrue(all(c[3] is False for c in self.core.calls))
        for peer, words in ((Peer(1002, None, "uid 1002 via x"), "uid 1002"),
                            (Peer(None, None, "unknown peer via x", "gone"), "cannot be identified (gone)")):
            proto, transport = self.connect(peer)
            proto.dataReceived(b'{"command":"list"};;')
            got = self.answers(transport)
            self.assertEqual(got[0]["response"], "fail")
            self.assertIn(words, unb64(got[0]["error"]))
            self.assertEqual(self.core.calls, [])

    def test_a_core_that_raises_or_answers_nonsense_gets_fail(self):
        proto, transport = self.connect()
        self.core.hold = True
        proto.dataReceived(b'{"command":"list"};;{"command":"list"};;{"command":"list"};;')
        self.core.pending.pop(0).errback(RuntimeError("core crashed"))
        self.core.pending.pop(0).callback(Reply("weird"))
        self.core.pending.pop(0).callback(Reply("list", data=["a"]))
        got = self.answers(transport)
        self.assertEqual([a["response"] for a in got], ["fail", "fail", "list"])
        self.assertIn("internal error", unb64(got[0]["error"]))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_answers_after_the_peer_left_are_dropped(self):
        proto, transport = self.connect()
        self.core.hold = True
        proto.dataReceived(b'{"command":"list"};;{"command":"list"};;')
        proto.connectionLost(None)
        self.core.pending.pop(0).callback(Reply("list", data=[]))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(len(self.core.calls), 1)


class ProcTableTests(unittest.TestCase):
    def test_rows_are_decoded_from_host_order(self):
        if peercred.sys.byteorder != "little":
            raise unittest.SkipTest("the sample rows are from a little-endian host")
        ip = peercred.ipaddress.ip_address
        self.assertEqual(peercred._decode_address("0100007F:1E61"), (ip("127.0.0.1"), 7777))
        self.assertEqual(peercred._decode_address("00000000000000000000000001000000:0016"), (ip("::1"), 22))
        self.assertEqual(peercred._decode_address("0000000000000000FFFF00000100007F:0050"),
                         (ip("::ffff:127.0.0.1"), 80))

    def test_a_real_loopback_peer_is_found_and_a_stranger_is_not(self):
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            server = socket.socket(family)
            server.bind((host, 0))
            server.listen()
            client = socket.create_connection(server.getsockname()[:2])
            accepted, peer = server.accept()
            try:
                self.assertEqual(peercred.tcp_peer_uid(peer[:2], accepted.getsockname()[:2]), os.getuid())
                with self.assertRaises(peercred.PeerUnknown):  # nobody connected from that port
                    peercred.tcp_peer_uid((host, 1), accepted.getsockname()[:2])
            finally:
                for s in (client, accepted, server):
                    s.close()
        with self.assertRaises(peercred.PeerUnknown) as caught:
            peercred.tcp_peer_uid(("192.0.2.1", 4000), ("127.0.0.1", 7777))
        self.assertIn("not a loopback address", str(caught.exception))

    def test_reads_are_bounded(self):
        path = os.path.join(short_tempdir(self), "tcp")
        row = "   0: 0100007F:1E61 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  {uid}        0 {inode} 1\n"
        with open(path, "w") as f:
            f.write("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n")
            f.write(row.format(uid=1000, inode=0) * 5000)  # inode 0: owns nothing
            f.write(row.format(uid=1234, inode=99))
        found = peercred.tcp_peer_uid(("127.0.0.1", 7777), ("127.0.0.1", 0x9C40), tables=(path,))
        self.assertEqual(found, 1234)
        with self.assertRaises(peercred.PeerUnknown) as caught:
            peercred.tcp_peer_uid(("127.0.0.1", 7777), ("127.0.0.1", 0x9C40), tables=(path,), limit=100000)
        self.assertIn("longer than 100000 bytes", str(caught.exception))
        with open(path, "wb") as f:
            f.write(b"x" * 10_000_000)  # one endless line: read in bounded pieces
        with self.assertRaises(peercred.PeerUnknown):
            peercred.tcp_peer_uid(("127.0.0.1", 7777), ("127.0.0.1", 1), tables=(path,), limit=1_000_000)


# --- real sockets ---------------------------------------------------------------------------
CLIENT = r"""
import socket, sys
kind, where, payload, count = sys.argv[1], sys.argv[2], sys.argv[3].encode(), int(sys.argv[4])
if kind == "tcp":
    s = socket.create_connection(("127.0.0.1", int(where)), timeout=10)
else:
    s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(where)
s.sendall(payload)
got = b""
while got.count(b";;") < count:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
sys.stdout.write(got.decode())
"""


def plain_exchange(kind: str, where: Any, payload: bytes, count: int, uid: Optional[int] = None) -> bytes:
    """Run a stdlib-only client in a child process (as *uid*): send, read *count* answers."""
    def drop():
        if uid is not None:
            entry = pwd.getpwuid(uid)
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(uid)

    done = subprocess.run(["/usr/bin/python3", "-c", CLIENT, kind, str(where), payload.decode(), str(count)],
                          capture_output=True, timeout=20, preexec_fn=drop, cwd="/")
    if done.returncode != 0:
        raise AssertionError(done.stderr.decode())
    return done.stdout


def split_answers(raw: bytes):
    return [json.loads(part) for part in raw.split(b";;")[:-1]]


class UnprivilegedUser:
    """A real account for the test (useradd), removed afterwards."""

    def __init__(self, testcase):
        if os.geteuid() != 0:
            raise unittest.SkipTest("creating a user needs root")
        self.name = "sw" + uuid.uuid4().hex[:8]
        subprocess.run(["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", self.name],
                       check=True, capture_output=True)
        testcase.addCleanup(subprocess.run, ["userdel", self.name], capture_output=True)
        self.uid = pwd.getpwnam(self.name).pw_uid


class RealSocketTests(unittest.TestCase):
    @defer.inlineCallbacks
    def serve(self, access_for_uid):
        self.core = FakeSupervisor()
        directory = short_tempdir(self)
        os.chmod(directory, 0o755)  # the unprivileged client must reach the socket
        self.path = os.path.join(directory, "supervisor.sock")
        listeners = seedwire.build_listeners(self.core, access_for_uid, reactor, port=0, socket_path=self.path,
                                             max_connections=8, max_message=seedwire.MAX_MESSAGE_BYTES,
                                             idle_timeout=30)
        for _, listener in listeners:
            listener.startService()
            self.addCleanup(listener.stopService)
            yield listener.ready
        self.port = listeners[0][1].port.getHost().port
        self.assertEqual(listeners[0][1].port.getHost().host, "127.0.0.1")

    def exchange(self, kind, payload, count, uid=None):
        where = self.port if kind == "tcp" else self.path
        return threads.deferToThread(plain_exchange, kind, where, payload, count, uid)

    @defer.inlineCallbacks
    def test_root_over_tcp_and_the_socket(self):
        yield self.serve(lambda uid: True if uid == 0 else None)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o666)
        for kind in ("tcp", "unix"):
            self.core.calls.clear()
            raw = yield self.exchange(kind, b'{"command":"kill","job":"bmdpbng="};;garbage;;{"command":"list"};;', 3)
            self.assertEqual(raw, b'{"response":"fail","error":"SW52YWxpZCBqb2IgbmFtZS4="};;'
                                  + response_bytes("invalid", error="the query is not JSON: Expecting value: "
                                                                    "line 1 column 1 (char 0)")
                                  + b'{"response":"list","list":"eyJqb2JzIjpbXX0="};;')
            where = f"127.0.0.1:{self.port}" if kind == "tcp" else self.path
            self.assertEqual(self.core.calls[0][3:], (True, f"uid 0 via {where}"))

    @defer.inlineCallbacks
    def test_a_real_unprivileged_user_by_uid(self):
        user = UnprivilegedUser(self)
        rights = Rights(("wheel", "sudo"), ())  # the user is in neither: no access at all
        yield self.serve(rights.for_uid)
        self.core.programs["nginx"] = {"name": "nginx"}
        for kind in ("tcp", "unix"):
            raw = yield self.exchange(kind, b'{"command":"status","job":"bmdpbng="};;', 1, uid=user.uid)
            [answer] = split_answers(raw)
            self.assertEqual(answer["response"], "fail")
            self.assertIn(f"uid {user.uid} ({user.name}) has no access", unb64(answer["error"]))
        self.assertEqual(self.core.calls, [])
        rights.limited_groups = {user.name}  # its own group (useradd --user-group): limited access
        for kind in ("tcp", "unix"):
            raw = yield self.exchange(kind, b'{"command":"status","job":"bmdpbng="};;'
                                            b'{"command":"kill","job":"bmdpbng="};;', 2, uid=user.uid)
            status, kill = split_answers(raw)
            self.assertEqual(status["response"], "status")
            self.assertEqual(json.loads(unb64(status["data"]))["state"], "STOPPED")
            self.assertEqual(kill["response"], "fail")
            self.assertIn("kill: needs full access", unb64(kill["error"]))
        where = {"tcp": f"127.0.0.1:{self.port}", "unix": self.path}
        self.assertEqual([c[0] for c in self.core.calls], ["status", "status"])
        self.assertEqual([c[4] for c in self.core.calls], [f"uid {user.uid} via {where['tcp']}",
                                                          f"uid {user.uid} via {where['unix']}"])

    @defer.inlineCallbacks
    def test_connections_are_bounded(self):
        yield self.serve(lambda uid: True)
        held = []
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", self.port))
            held.append(s)
            self.addCleanup(s.close)
        extra = socket.create_connection(("127.0.0.1", self.port))
        self.addCleanup(extra.close)
        extra.settimeout(5)
        def ended():
            try:
                return extra.recv(10)
            except ConnectionResetError:
                return b""

        closed = yield threads.deferToThread(ended)
        self.assertEqual(closed, b"")  # the ninth is closed (reset) at once
        held[0].close()
        yield task.deferLater(reactor, 0.1, lambda: None)
        raw = yield self.exchange("tcp", b'{"command":"list"};;', 1)
        self.assertEqual(split_answers(raw)[0]["response"], "list")
