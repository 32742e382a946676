"""The envelope (docs/protocol.md §1) and the request pipeline, without a transport."""

from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from sysadmd.wire import envelope
from sysadmd.api import NO_REPLY, Api, require_full_access
from sysadmd.auth.tokens import TokenStore
from sysadmd.wire.envelope import ApiError, EnvelopeError
from sysadmd.rpc import basic
from sysadmd.session import Identity, Session

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
names = st.text(min_size=1, max_size=20)


class ParseTests(unittest.TestCase):
    def test_full_request(self):
        r = envelope.parse('{"namespace":"sysadm","name":"systemmanager","id":"abc123","args":{"action":"systeminfo"}}')
        self.assertEqual((r.namespace, r.name, r.id, r.args), ("sysadm", "systemmanager", "abc123", {"action": "systeminfo"}))

    def test_text_must_begin_with_a_brace(self):
        for text in ("hello", ' {"namespace":"rpc","name":"identify"}', "", "[1,2]", "\n{}"):
            with self.assertRaises(EnvelopeError) as caught:
                envelope.parse(text)
            self.assertEqual(caught.exception.code, "400")
            self.assertIn("{", caught.exception.detail)

    def test_trailing_newlines_are_stripped(self):
        r = envelope.parse('{"namespace":"rpc","name":"identify","id":"1"}\n\r\n\n')
        self.assertEqual(r.name, "identify")

    def test_invalid_json_and_non_objects(self):
        for text in ("{not json", '{"a":1', "{}}"):
            with self.assertRaises(EnvelopeError) as caught:
                envelope.parse(text)
            self.assertIn("JSON", caught.exception.detail)

    def test_deep_nesting_is_a_400_not_a_crash(self):
        with self.assertRaises(EnvelopeError):
            envelope.parse('{"args":' + "[" * 100000 + "]" * 100000 + "}")

    def test_missing_namespace_or_name(self):
        with self.assertRaises(EnvelopeError) as caught:
            envelope.parse('{"name":"query","id":"q1"}')
        self.assertIn("namespace", caught.exception.detail)
        self.assertEqual(caught.exception.request_id, "q1")
        with self.assertRaises(EnvelopeError) as caught:
            envelope.parse('{"namespace":"rpc","name":"","id":"q2"}')
        self.assertIn("name", caught.exception.detail)
        self.assertEqual(caught.exception.request_id, "q2")
        with self.assertRaises(EnvelopeError):
            envelope.parse('{"namespace":5,"name":"query"}')

    def test_non_string_id_becomes_empty_and_reply_echoes_the_name(self):
        for raw_id in ("7", "null", "[1]", '{"a":1}', "true"):
            r = envelope.parse('{"namespace":"rpc","name":"identify","id":%s,"args":{}}' % raw_id)
            self.assertEqual(r.id, "")
            reply = envelope.reply(r, {"x": 1})
            self.assertEqual(reply["name"], "identify")
            self.assertEqual(reply["id"], "")
        r = envelope.parse('{"namespace":"rpc","name":"identify"}')
        self.assertEqual(envelope.reply(r, {})["name"], "identify")

    def test_missing_args_makes_the_whole_object_the_args(self):
        text = '{"namespace":"sysadm","name":"fs","id":"1","action":"dirlist","dir":"/"}'
        r = envelope.parse(text)
        self.assertEqual(r.args, json.loads(text))
        # Present but null is kept as null.
        self.assertIsNone(envelope.parse('{"namespace":"a","name":"b","args":null}').args)

    def test_args_may_be_any_json_value(self):
        for raw, value in (('""', ""), ("[1,2]", [1, 2]), ("3", 3), ('"x"', "x")):
            self.assertEqual(envelope.parse('{"namespace":"a","name":"b","args":%s}' % raw).args, value)

    def test_route_is_case_insensitive_and_reply_echoes_the_spelling(self):
        r = envelope.parse('{"namespace":"RPC","name":"Query","id":"1"}')
        self.assertEqual(r.route, ("rpc", "query"))
        self.assertEqual(envelope.reply(r, {})["namespace"], "RPC")


class ShapeTests(unittest.TestCase):
    def test_success_reply_is_compact_and_sorted(self):
        r = envelope.parse('{"namespace":"sysadm","name":"x","id":"abc123","args":{}}')
        text = envelope.encode(envelope.reply(r, {"b": 1, "a": [1, {"d": 2, "c": 3}]}))
        self.assertEqual(text, '{"args":{"a":[1,{"c":3,"d":2}],"b":1},"id":"abc123","name":"response","namespace":"sysadm"}')

    def test_error_reply_has_the_code_as_a_string(self):
        text = envelope.encode(envelope.error(404, request_id="abc123"))
        self.assertEqual(text, '{"args":{"code":"404","message":"Not Found"},"id":"abc123","name":"error","namespace":"error"}')
        text = envelope.encode(envelope.error("401", "log in first"))
        self.assertEqual(text, '{"args":{"code":"401","detail":"log in first","message":"Unauthorized"},"id":"","name":"error","namespace":"error"}')
        self.assertEqual(envelope.error("400")["args"]["message"], "Bad Request")
        self.assertEqual(envelope.error("403")["args"]["message"], "Forbidden")

    def test_event_shape(self):
        text = envelope.encode(envelope.event("system-state", {"hostname": "h"}))
        self.assertEqual(text, '{"args":{"hostname":"h"},"id":"","name":"system-state","namespace":"events"}')

    def test_non_ascii_is_sent_as_utf8_text(self):
        self.assertEqual(envelope.encode({"a": "é"}), '{"a":"é"}')

    def test_require_helpers(self):
        self.assertEqual(envelope.require_action({"action": "RUN"}), "run")
        with self.assertRaises(ApiError) as caught:
            envelope.require_action([])
        self.assertEqual(caught.exception.code, "400")
        self.assertIn("an array", caught.exception.detail)
        with self.assertRaises(ApiError) as caught:
            envelope.require_action({"action": 3})
        self.assertIn("action", caught.exception.detail)


class ParseProperties(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.text())
    def test_any_text_parses_or_raises_envelope_error(self, text):
        try:
            r = envelope.parse(text)
        except EnvelopeError as e:
            self.assertEqual(e.code, "400")
            self.assertTrue(e.detail)
        else:
            self.assertTrue(r.namespace and r.name)

    @settings(max_examples=300, deadline=None)
    @given(st.binary())
    def test_any_bytes_parse_or_raise_envelope_error(self, data):
        # Transports decode UTF-8 first; whatever survives decoding must be safe to parse.
        for text in (data.decode("latin-1"), data.decode("utf-8", "replace"), "{" + data.decode("latin-1")):
            try:
                envelope.parse(text)
            except EnvelopeError:
                pass

    @settings(max_examples=200, deadline=None)
    @given(names, names, st.text(max_size=10), json_values, st.sampled_from(["", "\n", "\r\n", "\n\n"]))
    def test_valid_requests_round_trip(self, namespace, name, request_id, args, trailer):
        text = envelope.encode({"namespace": namespace, "name": name, "id": request_id, "args": args}) + trailer
        r = envelope.parse(text)
        self.assertEqual((r.namespace, r.name, r.id, r.args), (namespace, name, request_id, args))
        reply = json.loads(envelope.encode(envelope.reply(r, args)))
        self.assertEqual(reply["args"], args)
        self.assertEqual(reply["name"], "response" if request_id else name)

    @settings(max_examples=100, deadline=None)
    @given(names, names, st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("args",)), json_values, max_size=4))
    def test_without_args_the_object_is_the_args(self, namespace, name, extra):
        obj = dict(extra, namespace=namespace, name=name)
        r = envelope.parse(envelope.encode(obj))
        self.assertEqual(r.args, obj)


class FakeChannel:
    def __init__(self):
        self.sent = []
        self.closed = None

    def send_text(self, text):
        self.sent.append(json.loads(text))

    def close(self, code, reason):
        self.closed = (code, reason)


class PipelineTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.tokens = TokenStore(self.clock, 900)
        self.api = Api(self.tokens)
        basic.route(self.api)
        self.channel = FakeChannel()
        self.session = Session("wss", "192.0.2.1", self.channel, self.clock)

    def request(self, namespace, name, args=None, request_id="r1"):
        return envelope.parse(envelope.encode({"namespace": namespace, "name": name, "id": request_id, "args": args or {}}))

    def handle(self, namespace, name, args=None, request_id="r1"):
        results = []
        self.api.handle(self.session, self.request(namespace, name, args, request_id)).addCallback(results.append)
        self.assertEqual(len(results), 1, "handle() did not fire synchronously")
        return results[0]

    def login(self, full=True):
        identity = Identity("alice", full, "password")
        self.session.login(identity, self.tokens.issue(identity))

    def test_identify_is_public(self):
        reply = self.handle("rpc", "identify")
        self.assertEqual(reply["name"], "response")
        self.assertEqual(reply["args"]["type"], "server")

    def test_unknown_api_is_401_before_login_and_404_after(self):
        # Unauthenticated peers must not learn which APIs exist.
        reply = self.handle("sysadm", "nosuch")
        self.assertEqual(reply["args"]["code"], "401")
        self.assertEqual(reply["id"], "r1")
        self.login()
        reply = self.handle("sysadm", "nosuch")
        self.assertEqual(reply["args"]["code"], "404")
        self.assertIn("sysadm/nosuch", reply["args"]["detail"])

    def test_routes_match_case_insensitively(self):
        self.login()
        reply = self.handle("RPC", "QUERY")
        self.assertEqual(reply["name"], "response")
        self.assertEqual(reply["namespace"], "RPC")

    def test_expired_token_logs_the_session_out(self):
        self.login()
        self.assertEqual(self.handle("rpc", "query")["name"], "response")
        self.clock.advance(899)
        self.assertEqual(self.handle("rpc", "query")["name"], "response")  # the TTL slides
        self.clock.advance(901)
        self.assertEqual(self.handle("rpc", "query")["args"]["code"], "401")
        self.assertIsNone(self.session.identity)

    def test_handler_crash_is_500_and_the_session_keeps_working(self):
        def boom(session, request):
            raise RuntimeError("bug")

        self.api.add("test", "boom", boom, public=True)
        reply = self.handle("test", "boom", request_id="b1")
        self.assertEqual(reply["args"]["code"], "500")
        self.assertEqual(reply["args"]["message"], "Internal Server Error")
        self.assertIn("internal error", reply["args"]["detail"])
        self.assertEqual(reply["id"], "b1")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.handle("rpc", "identify")["name"], "response")
        self.assertFalse(self.session.closed)

    def test_failing_deferred_is_500_too(self):
        self.api.add("test", "later", lambda s, r: defer.fail(ValueError("x")), public=True)
        self.assertEqual(self.handle("test", "later")["args"]["code"], "500")
        self.flushLoggedErrors(ValueError)

    def test_api_error_becomes_its_code_and_detail(self):
        def bad(session, request):
            raise ApiError("400", "missing 'action' (a string) in args")

        self.api.add("test", "bad", bad, public=True)
        reply = self.handle("test", "bad")
        self.assertEqual(reply["args"], {"code": "400", "message": "Bad Request", "detail": "missing 'action' (a string) in args"})

    def test_require_full_access_is_403_for_limited_users(self):
        def run(session, request):
            require_full_access(session, "running jobs")
            return {"started": []}

        self.api.add("test", "run", run)
        self.login(full=False)
        reply = self.handle("test", "run")
        self.assertEqual(reply["args"]["code"], "403")
        self.assertIn("running jobs", reply["args"]["detail"])
        self.assertFalse(self.session.closed)  # upstream crashed here; we keep serving
        self.login(full=True)
        self.assertEqual(self.handle("test", "run")["args"], {"started": []})

    def test_query_lists_routes_with_the_callers_access(self):
        self.api.add("test", "reader", lambda s, r: {}, limited="read")
        self.login(full=False)
        self.assertEqual(self.handle("rpc", "query")["args"], {"test/reader": "read"})
        self.login(full=True)
        self.assertEqual(self.handle("rpc", "query")["args"], {"test/reader": "read/write"})

    def test_duplicate_routes_are_refused(self):
        with self.assertRaises(ValueError):
            self.api.add("RPC", "Identify", lambda s, r: {})

    def test_handle_text_sends_replies_and_400s_on_the_channel(self):
        self.api.handle_text(self.session, "{oops")
        self.api.handle_text(self.session, '{"name":"identify","id":"n1"}')
        self.api.handle_text(self.session, '{"namespace":"rpc","name":"identify","id":"i1"}')
        self.assertEqual([m["args"].get("code") for m in self.channel.sent], ["400", "400", None])
        self.assertEqual([m["id"] for m in self.channel.sent], ["", "n1", "i1"])
        self.assertEqual(self.channel.sent[0]["namespace"], "error")

    def test_no_reply_sends_nothing(self):
        self.api.add("test", "quiet", lambda s, r: NO_REPLY, public=True)
        self.api.handle_text(self.session, '{"namespace":"test","name":"quiet","id":"1"}')
        self.assertEqual(self.channel.sent, [])
        self.assertIsNone(self.handle("test", "quiet"))

    def test_requests_wait_for_a_login_in_progress(self):
        gate = defer.Deferred()

        def auth(session, request):
            def done(_):
                session.login(Identity("alice", True, "password"), None)
                return ["t", 900]

            return gate.addCallback(done)

        self.api.add("test", "auth", auth, public=True)
        self.api.handle_text(self.session, '{"namespace":"test","name":"auth","id":"a"}')
        self.api.handle_text(self.session, '{"namespace":"rpc","name":"query","id":"q"}')
        self.assertEqual(self.channel.sent, [])
        gate.callback(None)
        self.assertEqual([m["id"] for m in self.channel.sent], ["a", "q"])
        self.assertEqual(self.channel.sent[1]["name"], "response")  # ran after the login

