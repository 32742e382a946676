"""The opening handshake and message limits against real listeners of both daemons.

* upstream's captured handshakes (``Origin: sysadm-client`` / ``sysadm-server``) get
  101 on the sysadmd TLS listener, its local socket and the bridge, and the captured
  exchange that follows works (issue 8 item 1);
* the 101 reply says ``Server: sysadm-server`` / ``sysadm-bridge`` (issue 8 item 2);
* a header line over 16 KiB is answered 431 (issue 7 item 17);
* before login a message over MAX_UNAUTH_MESSAGE_BYTES is refused with 1009 as soon as
  its header declares the length (issue 7 item 16), and an authenticated message with
  too many JSON values gets a 400 while the connection stays;
* lone surrogates get a 400 and the connection stays (issue 7 item 11).
"""

from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st
from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.wire import envelope, frames
from tests.sec_wire_support import (captured_frames, captured_handshake, handshake, open_raw, open_ws,
                                    client_frame, text)
from tests.support import FakePasswords, make_config, short_tempdir, start_daemon
from tests.test_bridge_wss import start_bridge

QT_SERVER_LOG = "qt-client-to-upstream-server.log"
QT_BRIDGE_LOG = "qt-client-to-upstream-bridge.log"
SERVER_BRIDGE_LOG = "upstream-server-to-upstream-bridge.log"


def login_frame() -> bytes:
    return text(json.dumps({"namespace": "rpc", "name": "auth", "id": "login",
                            "args": {"username": "root", "password": "pw"}}))


class HandshakeTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        cfg = make_config(short_tempdir(self), SOCKET=short_tempdir(self) + "/s.sock")
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.port = self.running.port

    @defer.inlineCallbacks
    def test_qt_client_handshake_reaches_sysadmd_tls(self):
        request = captured_handshake(QT_SERVER_LOG, f"127.0.0.1:{self.port}")
        self.assertIn(b"Origin: sysadm-client\r\n", request)
        client = yield open_ws(self, self.port, request=request)
        self.assertEqual(client.header("Server"), "sysadm-server")
        identify = captured_frames(QT_SERVER_LOG)[0]
        self.assertIn('"name":"identify"', identify)
        client.send(text(identify))
        yield client.wait(client.text_matching("sysadm_client_identify"), what="identify reply")
        reply = json.loads(client.texts()[-1])
        self.assertEqual(reply["name"], "response")
        self.assertEqual(reply["args"]["type"], "server")
        # then the captured password login (our fake checker knows root/pw)
        client.send(login_frame())
        yield client.wait(client.text_matching('"id":"login"'), what="login reply")
        self.assertEqual(json.loads(client.texts()[-1])["name"], "response")

    @defer.inlineCallbacks
    def test_qt_client_handshake_reaches_the_local_socket(self):
        request = captured_handshake(QT_SERVER_LOG, "localhost")
        client = yield open_ws(self, unix=self.running.config.socket, request=request)
        self.assertEqual(client.header("Server"), "sysadm-server")
        client.send(text(captured_frames(QT_SERVER_LOG)[0]))
        yield client.wait(client.text_matching("sysadm_client_identify"), what="identify reply")

    @defer.inlineCallbacks
    def test_null_and_foreign_origins_are_accepted(self):
        for origin in ("null", "https://elsewhere.example", "sysadm-client", ""):
            client = yield open_ws(self, self.port, request=handshake(origin=origin))
            client.send(text('{"namespace":"rpc","name":"identify","id":"i","args":""}'))
            yield client.wait(client.text_matching('"id":"i"'), what=f"identify reply (Origin {origin!r})")
            client.abort()

    def test_origin_lines_are_taken_out_of_the_head(self):
        from sysadmd.wire.wsbase import take_origin

        head = b"GET / HTTP/1.1\r\nHost: x\r\norigin:  sysadm-client \r\nSec-WebSocket-Origin: y\r\nUpgrade: websocket\r\n"
        stripped, origin = take_origin(head)
        self.assertEqual(origin, "sysadm-client")
        self.assertEqual(stripped, b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")

    @defer.inlineCallbacks
    def test_long_header_line_gets_431_on_the_site(self):
        client = yield open_raw(self, self.port)
        client.send(handshake(extra="X-Long: " + "a" * (17 * 1024) + "\r\n"))
        yield client.wait(lambda: client.is_lost, what="connection closed")
        self.assertEqual(client.status, 431, client.raw[:200])

    @defer.inlineCallbacks
    def test_long_header_line_gets_431_on_the_local_socket(self):
        client = yield open_raw(self, unix=self.running.config.socket)
        client.send(handshake(extra="X-Long: " + "a" * (17 * 1024) + "\r\n"))
        yield client.wait(lambda: client.is_lost, what="connection closed")
        self.assertEqual(client.status, 431, client.raw[:200])

    @defer.inlineCallbacks
    def test_a_header_line_that_never_ends_gets_431(self):
        client = yield open_raw(self, unix=self.running.config.socket)
        client.send(b"GET / HTTP/1.1\r\nX-Endless: " + b"b" * (20 * 1024))
        yield client.wait(lambda: client.is_lost, what="connection closed")
        self.assertEqual(client.status, 431, client.raw[:200])


class BridgeHandshakeTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.bridge = yield start_bridge(self)
        self.port = self.bridge.listener.port.getHost().port

    @defer.inlineCallbacks
    def test_upstream_server_handshake_reaches_the_bridge(self):
        request = captured_handshake(SERVER_BRIDGE_LOG, f"127.0.0.1:{self.port}")
        self.assertIn(b"Origin: sysadm-server\r\n", request)
        client = yield open_ws(self, self.port, request=request)
        self.assertEqual(client.header("Server"), "sysadm-bridge")
        yield client.wait(client.text_matching("sysadm_bridge_request_ident"), what="the bridge's identify")
        # the captured server's first message: auth_ssl stage 1 gets a test string
        first = captured_frames(SERVER_BRIDGE_LOG)[0]
        self.assertIn("auth_ssl", first)
        client.send(text(first))
        yield client.wait(client.text_matching("test_string"), what="auth_ssl challenge")

    @defer.inlineCallbacks
    def test_qt_client_handshake_reaches_the_bridge(self):
        request = captured_handshake(QT_BRIDGE_LOG, f"127.0.0.1:{self.port}")
        client = yield open_ws(self, self.port, request=request)
        self.assertEqual(client.header("Server"), "sysadm-bridge")
        client.send(text(captured_frames(QT_BRIDGE_LOG)[0]))
        yield client.wait(client.text_matching('"type":"bridge"'), what="identify reply")

    @defer.inlineCallbacks
    def test_lone_surrogate_in_an_echoed_id_keeps_the_connection(self):
        client = yield open_ws(self, self.port)
        client.send(text('{"namespace":"rpc","name":"identify","id":"\\ud800x","args":""}'))
        yield client.wait(client.text_matching('"type":"bridge"'), what="identify reply")
        reply = json.loads(client.texts()[-1])
        self.assertEqual(reply["id"], "\ufffdx")
        client.send(text('{"namespace":"rpc","name":"identify","id":"after","args":""}'))
        yield client.wait(client.text_matching('"id":"after"'), what="the connection still serves")

    @defer.inlineCallbacks
    def test_long_header_line_gets_431_on_the_bridge(self):
        client = yield open_raw(self, self.port)
        client.send(handshake(extra="X-Long: " + "a" * (17 * 1024) + "\r\n"))
        yield client.wait(lambda: client.is_lost, what="connection closed")
        self.assertEqual(client.status, 431, client.raw[:200])


class MessageLimitTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        cfg = make_config(short_tempdir(self), MAX_UNAUTH_MESSAGE_BYTES=65536, SOCKET="none")
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.port = self.running.port

    @defer.inlineCallbacks
    def test_anonymous_16_mib_message_is_refused_from_its_header(self):
        client = yield open_ws(self, self.port)
        # Only the header and 1 KiB of the declared 16 MiB are ever sent.
        size = 16 * 1024 * 1024
        client.send(frames.frame_header(frames.TEXT, size, mask=b"abcd") + b"x" * 1024)
        yield client.wait(lambda: client.close_code() is not None, what="close frame")
        self.assertEqual(client.close_code(), 1009)

    @defer.inlineCallbacks
    def test_anonymous_limit_counts_fragments_together(self):
        client = yield open_ws(self, self.port)
        client.send(client_frame(frames.TEXT, b"{" + b" " * 40000, fin=False))
        client.send(client_frame(frames.CONTINUATION, b" " * 40000, fin=True))
        yield client.wait(lambda: client.close_code() is not None, what="close frame")
        self.assertEqual(client.close_code(), 1009)

    @defer.inlineCallbacks
    def test_after_login_large_messages_pass(self):
        client = yield open_ws(self, self.port)
        client.send(login_frame())
        yield client.wait(client.text_matching('"id":"login"'), what="login reply")
        big = json.dumps({"namespace": "rpc", "name": "identify", "id": "big", "args": {"pad": "p" * 300_000}})
        client.send(text(big))
        yield client.wait(client.text_matching('"id":"big"'), what="reply to a 300 KB message")
        self.assertEqual(json.loads(client.texts()[-1])["name"], "response")

    @defer.inlineCallbacks
    def test_too_many_json_values_get_400_and_the_connection_stays(self):
        client = yield open_ws(self, self.port)
        client.send(login_frame())
        yield client.wait(client.text_matching('"id":"login"'), what="login reply")
        many = json.dumps({"namespace": "rpc", "name": "identify", "id": "many", "args": [{}] * 150_000},
                          separators=(",", ":"))
        client.send(text(many))
        yield client.wait(client.text_matching("JSON values"), what="400 for too many values")
        reply = json.loads(client.texts()[-1])
        self.assertEqual(reply["args"]["code"], "400")
        client.send(text('{"namespace":"rpc","name":"identify","id":"after","args":""}'))
        yield client.wait(client.text_matching('"id":"after"'), what="the connection still serves")

    @defer.inlineCallbacks
    def test_lone_surrogate_from_an_anonymous_client_gets_400(self):
        client = yield open_ws(self, self.port)
        for message in ('{"namespace":"rpc","name":"identify","id":"\\ud800","args":""}',
                        '{"namespace":"rpc","name":"auth","id":"s2","args":{"username":"\\udc00x","password":"p"}}',
                        '{"namespace":"rpc","name":"identify","id":"s3","args":{"\\ud800":1}}'):
            client.send(text(message))
        yield client.wait(lambda: len(client.texts()) >= 3, what="three replies")
        for reply in client.texts():
            args = json.loads(reply)["args"]
            self.assertEqual(args["code"], "400")
            self.assertIn("surrogate", args["detail"])
        self.assertEqual(json.loads(client.texts()[1])["id"], "s2")
        client.send(text('{"namespace":"rpc","name":"identify","id":"after","args":""}'))
        yield client.wait(client.text_matching('"id":"after"'), what="the connection still serves")
        self.assertFalse(client.is_lost)


# --- the envelope on its own (hypothesis) ------------------------------------------

_lone = st.integers(min_value=0xD800, max_value=0xDFFF).map(lambda c: f"\\u{c:04x}")
_plain = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


def _escape_text(parts):
    return "".join(parts)


class EnvelopeSurrogateProperties(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.one_of(_plain.map(lambda s: json.dumps(s)[1:-1]), _lone), min_size=1, max_size=6),
           st.sampled_from(["id", "name", "args", "key", "nested"]))
    def test_parse_refuses_exactly_the_unencodable(self, parts, where):
        body = _escape_text(parts)
        if where == "key":
            doc = '{"namespace":"rpc","name":"q","id":"i","args":{"%s":1}}' % body
        elif where == "nested":
            doc = '{"namespace":"rpc","name":"q","id":"i","args":{"a":[1,{"b":"%s"}]}}' % body
        elif where == "args":
            doc = '{"namespace":"rpc","name":"q","id":"i","args":"%s"}' % body
        else:
            doc = '{"namespace":"rpc","name":"%s","id":"%s","args":{}}' % (("q", body) if where == "id" else (body or "q", "i"))
        decoded = json.loads(doc)
        try:
            json.dumps(decoded, ensure_ascii=False).encode("utf-8")
            encodable = True
        except UnicodeEncodeError:
            encodable = False
        try:
            request = envelope.parse(doc)
        except envelope.EnvelopeError as e:
            self.assertFalse(encodable, f"refused an encodable message: {e.detail}")
            self.assertIn("surrogate", e.detail)
            # the error reply itself can always be sent
            envelope.encode(envelope.error(e.code, e.detail, e.request_id)).encode("utf-8")
            return
        self.assertTrue(encodable, "a lone surrogate got through the envelope")
        envelope.encode(envelope.reply(request, request.args)).encode("utf-8")

    @settings(max_examples=100, deadline=None)
    @given(st.text(max_size=40))
    def test_any_parsed_request_can_be_answered(self, s):
        doc = json.dumps({"namespace": "rpc", "name": "q", "id": s, "args": {s: [s]}})
        try:
            request = envelope.parse(doc)
        except envelope.EnvelopeError:
            return
        envelope.encode(envelope.reply(request, request.args)).encode("utf-8")
