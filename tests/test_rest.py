"""The REST transport end to end: treq over real HTTPS against an in-process daemon."""

from __future__ import annotations

import base64
import json

from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.trial import unittest
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from tests.support import (FakePasswords, PinnedPolicy, http_client, make_config, open_client, server_cert,
                           short_tempdir, start_daemon)


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@implementer(IBodyProducer)
class ChunkedBody:
    """A body of unknown length, so it goes out with chunked transfer encoding."""

    length = UNKNOWN_LENGTH

    def __init__(self, data: bytes):
        self.data = data

    def startProducing(self, consumer):
        for i in range(0, len(self.data), 4096):
            consumer.write(self.data[i : i + 4096])
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class RestBase(unittest.TestCase):
    timeout = 30
    config_overrides: dict = {}

    @defer.inlineCallbacks
    def setUp(self):
        self.passwords = FakePasswords({"root": "pw"})
        cfg = make_config(short_tempdir(self), **self.config_overrides)
        self.running = yield start_daemon(self, cfg, passwords=self.passwords)
        self.http = http_client(self, self.running)
        self.base = f"https://127.0.0.1:{self.running.port}"

    @defer.inlineCallbacks
    def request(self, method: str, path: str, body=None, headers=None, base=None):
        """``(response, body text)``."""
        if isinstance(body, str):
            body = body.encode("utf-8")
        if body is not None and not any(k.lower() == "content-type" for k in (headers or {})):
            headers = {**(headers or {}), "Content-Type": "application/json"}
        response = yield self.http.request(method, (base or self.base) + path, data=body, headers=headers)
        text = yield response.text("utf-8")
        return response, text

    @defer.inlineCallbacks
    def json_request(self, method: str, path: str, body=None, headers=None, base=None):
        """``(status, parsed body)`` and checks the JSON content type and compact form."""
        response, text = yield self.request(method, path, body, headers, base)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json; charset=utf-8"])
        parsed = json.loads(text)
        self.assertEqual(text, json.dumps(parsed, separators=(",", ":"), sort_keys=True, ensure_ascii=False))
        return response.code, parsed

    def assertError(self, body: dict, code: str, message: str):
        self.assertEqual(set(body), {"args"})
        self.assertEqual(body["args"]["code"], code)
        self.assertEqual(body["args"]["message"], message)
        self.assertIsInstance(body["args"]["detail"], str)
        self.assertTrue(body["args"]["detail"])


class RestCallTests(RestBase):
    @defer.inlineCallbacks
    def test_identify_needs_no_auth(self):
        for method in ("GET", "POST", "PUT"):
            status, body = yield self.json_request(method, "/rpc/identify")
            self.assertEqual(status, 200)
            self.assertEqual(body["args"]["type"], "server")
            self.assertIsInstance(body["args"]["hostname"], str)

    @defer.inlineCallbacks
    def test_query_without_credentials_is_401_with_challenge(self):
        response, text = yield self.request("GET", "/rpc/query")
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders("www-authenticate"), ['Basic realm="sysadmd"'])
        self.assertError(json.loads(text), "401", "Unauthorized")

    @defer.inlineCallbacks
    def test_basic_auth_runs_the_request(self):
        status, body = yield self.json_request("GET", "/rpc/query", headers=basic("root", "pw"))
        self.assertEqual(status, 200)
        self.assertIsInstance(body["args"], dict)
        # Namespace matching is case-insensitive, as on the WebSocket.
        status, _ = yield self.json_request("GET", "/RPC/query", headers=basic("root", "pw"))
        self.assertEqual(status, 200)
        # Every request is its own session, closed when it is answered.
        self.assertEqual(len(self.running.server.sessions), 0)
        self.assertEqual(len(self.running.server.tokens), 0)

    @defer.inlineCallbacks
    def test_wrong_password_is_401(self):
        status, body = yield self.json_request("GET", "/rpc/query", headers=basic("root", "nope"))
        self.assertEqual(status, 401)
        self.assertError(body, "401", "Unauthorized")
        status, body = yield self.json_request("GET", "/rpc/query", headers={"Authorization": "Basic !!!"})
        self.assertEqual(status, 401)
        self.assertIn("base64", body["args"]["detail"])
        status, body = yield self.json_request("GET", "/rpc/query", headers={"Authorization": "Digest x"})
        self.assertEqual(status, 401)
        self.assertIn("Bearer", body["args"]["detail"])
        self.assertEqual(self.passwords.calls, 1)

    @defer.inlineCallbacks
    def test_auth_gives_a_bearer_token_that_outlives_the_request(self):
        status, body = yield self.json_request("POST", "/rpc/auth", json.dumps({"username": "root", "password": "pw"}))
        self.assertEqual(status, 200)
        token, ttl = body["args"]
        self.assertGreaterEqual(len(token), 20)
        self.assertEqual(ttl, 900)
        bearer = {"Authorization": f"Bearer {token}"}
        for _ in range(2):
            status, body = yield self.json_request("GET", "/rpc/query", headers=bearer)
            self.assertEqual(status, 200)
        self.assertEqual(len(self.running.server.sessions), 0)
        # auth_clear sends no reply (204) and ends the token.
        response, text = yield self.request("POST", "/rpc/auth_clear", headers=bearer)
        self.assertEqual(response.code, 204)
        self.assertEqual(text, "")
        status, body = yield self.json_request("GET", "/rpc/query", headers=bearer)
        self.assertEqual(status, 401)
        self.assertIn("Bearer", body["args"]["detail"])

    @defer.inlineCallbacks
    def test_token_from_a_websocket_login_works_as_bearer(self):
        client = yield open_client(self, self.running)
        auth = yield client.call("rpc", "auth", {"username": "root", "password": "pw"})
        token = auth["args"][0]
        status, _ = yield self.json_request("GET", "/rpc/query", headers={"Authorization": f"Bearer {token}"})
        self.assertEqual(status, 200)
        self.assertEqual(self.passwords.calls, 1)

    @defer.inlineCallbacks
    def test_whole_envelope_body_uses_its_args_and_the_uri_route(self):
        envelope = {"namespace": "sysadm", "name": "nothing", "id": "e1", "args": {"username": "root", "password": "pw"}}
        status, body = yield self.json_request("PUT", "/rpc/auth", json.dumps(envelope))
        self.assertEqual(status, 200)
        self.assertEqual(len(body["args"]), 2)
        # Without "args" the object is the args itself.
        status, body = yield self.json_request("PUT", "/rpc/auth", json.dumps({"id": "x", "username": "root", "password": "bad"}))
        self.assertEqual(status, 401)

    @defer.inlineCallbacks
    def test_bad_bodies_are_400(self):
        status, body = yield self.json_request("POST", "/rpc/identify", b"{not json")
        self.assertEqual(status, 400)
        self.assertError(body, "400", "Bad Request")
        self.assertIn("JSON", body["args"]["detail"])
        status, body = yield self.json_request("POST", "/rpc/identify", b'{"a":"\xff"}')
        self.assertEqual(status, 400)
        self.assertIn("UTF-8", body["args"]["detail"])

    @defer.inlineCallbacks
    def test_events_need_a_connection(self):
        status, body = yield self.json_request("POST", "/events/subscribe", json.dumps(["dispatcher"]), headers=basic("root", "pw"))
        self.assertEqual(status, 400)
        self.assertEqual(body["args"]["detail"], "events need a WebSocket or the local socket")
        # auth_ssl's challenge belongs to one connection, so it cannot span two requests.
        status, body = yield self.json_request("POST", "/rpc/auth_ssl", b"")
        self.assertEqual(status, 400)
        self.assertIn("WebSocket", body["args"]["detail"])
        self.assertEqual(len(self.running.server.sessions), 0)

    @defer.inlineCallbacks
    def test_paths_other_than_namespace_name_are_404(self):
        # "/" is the web console's page (CONSOLE=false gives REST's 404 there: test_console_site)
        for path in ("/rpc", "/rpc/", "/rpc/query/extra", "//query", "/rpc//"):
            status, body = yield self.json_request("GET", path)
            self.assertEqual(status, 404, path)
            self.assertError(body, "404", "Not Found")
            self.assertIn("/<namespace>/<name>", body["args"]["detail"])
        # A well-formed path to an API that does not exist is the pipeline's 404.
        status, body = yield self.json_request("GET", "/sysadm/nosuchclass", headers=basic("root", "pw"))
        self.assertEqual(status, 404)
        self.assertIn("sysadm/nosuchclass", body["args"]["detail"])

    @defer.inlineCallbacks
    def test_other_verbs_are_405_and_options_lists_them(self):
        for method in ("DELETE", "PATCH", "HEAD"):
            response, _ = yield self.request(method, "/rpc/identify")
            self.assertEqual(response.code, 405, method)
            self.assertEqual(response.headers.getRawHeaders("allow"), ["GET, POST, PUT, OPTIONS"])
        status, body = yield self.json_request("DELETE", "/rpc/identify")
        self.assertError(body, "405", "Method Not Allowed")
        response, text = yield self.request("OPTIONS", "/rpc/identify")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("allow"), ["GET, POST, PUT, OPTIONS"])
        self.assertEqual(text, "")

    @defer.inlineCallbacks
    def test_handler_crash_is_500_and_logged(self):
        def boom(session, request):
            raise RuntimeError("handler bug")

        self.running.server.api.add("test", "boom", boom, public=True)
        status, body = yield self.json_request("GET", "/test/boom")
        self.assertEqual(status, 500)
        self.assertIn("internal error", body["args"]["detail"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.running.server.sessions), 0)
        status, _ = yield self.json_request("GET", "/rpc/identify")
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_error_shaped_204_has_no_body(self):
        from sysadmd.wire.envelope import ApiError

        def empty(session, request):
            raise ApiError("204", "nothing found")

        self.running.server.api.add("test", "empty", empty, public=True)
        response, text = yield self.request("GET", "/test/empty")
        self.assertEqual(response.code, 204)
        self.assertEqual(text, "")


class RestLimitTests(RestBase):
    config_overrides = {"MAX_MESSAGE_BYTES": 4096, "BLACKLIST_EXEMPT_LOOPBACK": "false", "BLACKLIST_AUTH_FAIL_LIMIT": 2}

    @defer.inlineCallbacks
    def test_body_over_the_limit_is_413(self):
        big = json.dumps({"username": "root", "password": "x" * 5000})
        status, body = yield self.json_request("POST", "/rpc/auth", big)
        self.assertEqual(status, 413)
        self.assertError(body, "413", "Payload Too Large")
        # Refused from Content-Length, before the body was read.
        self.assertIn(f"is {len(big)} bytes; the limit is 4096", body["args"]["detail"])
        self.assertEqual(self.passwords.calls, 0)
        # A body of unknown length (chunked) is cut off the same way.
        response, text = yield self.request("POST", "/rpc/auth", ChunkedBody(big.encode()))
        self.assertEqual(response.code, 413)
        self.assertIn("more than 4096", json.loads(text)["args"]["detail"])
        # Just under the limit is fine.
        status, _ = yield self.json_request("POST", "/rpc/identify", json.dumps({"pad": "y" * 4000}))
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_expect_continue_is_answered_before_the_body(self):
        """A client announcing a large body gets 413 instead of "100 Continue"."""
        received = defer.Deferred()

        class Raw(protocol.Protocol):
            def connectionMade(self):
                self.data = b""
                self.transport.write(
                    b"POST /rpc/auth HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\n"
                    b"Expect: 100-continue\r\n\r\n"
                )

            def dataReceived(self, data):
                self.data += data

            def connectionLost(self, reason):
                received.callback(self.data)

        options = PinnedPolicy(server_cert(self.running)).creatorForNetloc(b"localhost", 0)
        endpoint = endpoints.wrapClientTLS(options, endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.running.port))
        yield endpoint.connect(protocol.Factory.forProtocol(Raw))
        data = yield received
        self.assertTrue(data.startswith(b"HTTP/1.1 413 "), data[:80])
        self.assertNotIn(b"100 Continue", data)
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Type: application/json; charset=utf-8", head)
        self.assertEqual(json.loads(body)["args"]["code"], "413")

    @defer.inlineCallbacks
    def test_blocked_address_is_403(self):
        for _ in range(2):
            status, _ = yield self.json_request("GET", "/rpc/query", headers=basic("root", "wrong"))
            self.assertEqual(status, 401)
        status, body = yield self.json_request("GET", "/rpc/query", headers=basic("root", "pw"))
        self.assertEqual(status, 403)
        self.assertError(body, "403", "Forbidden")
        self.assertIn("blocked", body["args"]["detail"])
        self.assertEqual(self.passwords.calls, 2)
        status, _ = yield self.json_request("GET", "/rpc/identify")
        self.assertEqual(status, 403)

    @defer.inlineCallbacks
    def test_bad_bearer_tokens_count_as_failures(self):
        for _ in range(2):
            status, _ = yield self.json_request("GET", "/rpc/query", headers={"Authorization": "Bearer not-a-token"})
            self.assertEqual(status, 401)
        status, _ = yield self.json_request("GET", "/rpc/identify")
        self.assertEqual(status, 403)


class RestPortTests(RestBase):
    config_overrides = {"PORT_REST": "tcp:0:interface=127.0.0.1"}

    @defer.inlineCallbacks
    def test_rest_listener_and_main_port_answer_the_same(self):
        rest_port = self.running.daemon.listeners["rest"].port.getHost().port
        self.assertNotEqual(rest_port, self.running.port)
        answers = []
        for base in (self.base, f"https://127.0.0.1:{rest_port}"):
            status, body = yield self.json_request("GET", "/rpc/query", headers=basic("root", "pw"), base=base)
            self.assertEqual(status, 200)
            answers.append(body)
            status, body = yield self.json_request("GET", "/nope", base=base)
            self.assertEqual(status, 404)
        self.assertEqual(answers[0], answers[1])
        self.assertEqual(len(self.running.server.sessions), 0)


class RestBusyTests(RestBase):
    config_overrides = {"MAX_CONNECTIONS": 1}

    @defer.inlineCallbacks
    def test_over_max_connections_is_503(self):
        client = yield open_client(self, self.running)
        status, body = yield self.json_request("GET", "/rpc/identify")
        self.assertEqual(status, 503)
        self.assertError(body, "503", "Service Unavailable")
        self.assertIn("MAX_CONNECTIONS=1", body["args"]["detail"])
        yield client.close()
        while len(self.running.server.sessions):
            yield task.deferLater(reactor, 0.02, lambda: None)
        status, _ = yield self.json_request("GET", "/rpc/identify")
        self.assertEqual(status, 200)
