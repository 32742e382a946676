"""REST against cross-site requests from browsers (issue 7, item 14): treq over real HTTPS.

A page on another site could make a browser send a ``text/plain`` POST carrying cached
Basic credentials, and it ran a root command.  Bodies must now be JSON with its type,
foreign web origins are refused, and browsers are never offered Basic credentials.
"""

from __future__ import annotations

import base64
import json
import os

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from sysadmd import config as configmod
from sysadmd.client.wsclient import connect
from sysadmd.runtime.configfile import ConfigError
from tests.support import FakePasswords, http_client, make_config, short_tempdir, start_daemon

BASIC = "Basic " + base64.b64encode(b"root:pw").decode()
ALLOWED = "https://admin.example.org:8443"


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


class RestBrowserTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.passwords = FakePasswords({"root": "pw"})
        self.tmp = short_tempdir(self, "csrf")
        cfg = make_config(os.path.join(self.tmp, "state"), REST_ALLOWED_ORIGINS=f"{ALLOWED}, https://Other.Example.org:443")
        self.running = yield start_daemon(self, cfg, passwords=self.passwords)
        self.http = http_client(self, self.running, persistent=False)
        self.own = f"https://127.0.0.1:{self.running.port}"  # treq sends Host: 127.0.0.1:<port>

    @defer.inlineCallbacks
    def call(self, method, path, body=b"", headers=None):
        """``(response, parsed body or None)``."""
        response = yield self.http.request(method, self.own + path, data=body, headers=headers or {})
        text = yield response.text("utf-8")
        return response, (json.loads(text) if text else None)

    def run_body(self, job_id: str, marker: str) -> bytes:
        return json.dumps({"action": "run", job_id: f"touch {marker}"}).encode()

    @defer.inlineCallbacks
    def assertNothingRan(self, job_id: str, marker: str):
        yield sleep(0.3)  # a job that had been started would have touched the file by now
        self.assertFalse(os.path.exists(marker))
        dispatcher = self.running.daemon.dispatcher
        self.assertEqual(dispatcher.history([job_id]), [])

    @defer.inlineCallbacks
    def test_text_plain_cross_origin_post_with_basic_credentials_runs_nothing(self):
        # What a page on evil.example can make a browser send without a preflight: a
        # "simple" request (text/plain body) with the Basic credentials it has cached.
        marker = os.path.join(self.tmp, "csrf-ran")
        headers = {"Authorization": BASIC, "Content-Type": "text/plain;charset=UTF-8", "Origin": "https://evil.example",
                   "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "User-Agent": "Mozilla/5.0"}
        response, body = yield self.call("POST", "/rpc/dispatcher", self.run_body("csrf", marker), headers)
        self.assertEqual(response.code, 403)
        self.assertEqual(body["args"]["code"], "403")
        self.assertIn("web origin 'https://evil.example' are refused", body["args"]["detail"])
        self.assertIn("REST_ALLOWED_ORIGINS", body["args"]["detail"])
        self.assertEqual(self.passwords.calls, 0)  # refused before any password check
        yield self.assertNothingRan("csrf", marker)

        # Without the Origin (an old browser, or a form from the same host on another
        # port...): the text/plain body alone is refused, again before anything runs.
        del headers["Origin"], headers["Sec-Fetch-Site"]
        response, body = yield self.call("POST", "/rpc/dispatcher", self.run_body("csrf", marker), headers)
        self.assertEqual(response.code, 415)
        self.assertEqual(body["args"]["message"], "Unsupported Media Type")
        self.assertIn("Content-Type 'text/plain;charset=UTF-8' is not application/json", body["args"]["detail"])
        self.assertEqual(self.passwords.calls, 0)
        yield self.assertNothingRan("csrf", marker)

        # The same call as JSON from the server's own origin, and from a script (no
        # Origin), runs.
        for job_id, origin in (("same-origin", {"Origin": self.own}), ("script", {})):
            target = os.path.join(self.tmp, job_id)
            response, body = yield self.call("POST", "/rpc/dispatcher", self.run_body(job_id, target),
                                             {"Authorization": BASIC, "Content-Type": "application/json", **origin})
            self.assertEqual(response.code, 200, body)
            self.assertEqual(body, {"args": {"started": [job_id]}})
            for _ in range(100):
                if os.path.exists(target):
                    break
                yield sleep(0.05)
            self.assertTrue(os.path.exists(target), job_id)

    @defer.inlineCallbacks
    def test_body_types(self):
        for ctype in ("application/json", "Application/JSON; charset=UTF-8", 'application/json;charset="utf-8"'):
            response, body = yield self.call("POST", "/rpc/identify", b"{}", {"Content-Type": ctype})
            self.assertEqual(response.code, 200, (ctype, body))
        for ctype, words in (("text/plain", "is not application/json"),
                             ("application/x-www-form-urlencoded", "is not application/json"),
                             ("multipart/form-data; boundary=x", "is not application/json"),
                             ("application/json; charset=latin-1", "charset 'latin-1' is not supported"),
                             (None, "has no Content-Type")):
            headers = {"Content-Type": ctype} if ctype else {}
            response, body = yield self.call("PUT", "/rpc/identify", b"{}", headers)
            self.assertEqual(response.code, 415, ctype)
            self.assertIn(words, body["args"]["detail"])
            self.assertIn("Content-Type: application/json", body["args"]["detail"])
        # An empty body needs no type (curl -X POST without -d).
        for method in ("GET", "POST", "PUT"):
            response, body = yield self.call(method, "/rpc/identify", b"")
            self.assertEqual(response.code, 200, method)
            self.assertEqual(body["args"]["type"], "server")

    @defer.inlineCallbacks
    def test_origins(self):
        port = self.running.port
        accepted = (self.own, f"HTTPS://127.0.0.1:{port}", "sysadm-client", "sysadm-server", ALLOWED,
                    "https://other.example.org")
        for origin in accepted:
            response, body = yield self.call("POST", "/rpc/identify", b"{}", {"Origin": origin, "Content-Type": "application/json"})
            self.assertEqual(response.code, 200, (origin, body))
        refused = (("https://evil.example", "web origin"), (f"http://127.0.0.1:{port}", "web origin"),
                   (f"https://127.0.0.1:{port + 1}", "web origin"), ("https://admin.example.org", "web origin"),
                   ("null", "Origin: null"), ("https://bad host/", "malformed Origin"))
        for origin, words in refused:
            response, body = yield self.call("GET", "/rpc/identify", b"", {"Origin": origin})
            self.assertEqual(response.code, 403, origin)
            self.assertIn(words, body["args"]["detail"])
        # A cross-site navigation or image load carries no Origin, but Sec-Fetch-Site says it.
        for site, code in (("cross-site", 403), ("same-site", 403), ("same-origin", 200), ("none", 200)):
            response, body = yield self.call("GET", "/rpc/identify", b"", {"Sec-Fetch-Site": site})
            self.assertEqual(response.code, code, site)

    @defer.inlineCallbacks
    def test_configured_origin_gets_cors_without_credentials(self):
        response, _ = yield self.call("OPTIONS", "/rpc/dispatcher", b"", {
            "Origin": ALLOWED, "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "authorization,content-type"})
        self.assertEqual(response.code, 200)
        h = response.headers
        self.assertEqual(h.getRawHeaders("access-control-allow-origin"), [ALLOWED])
        self.assertEqual(h.getRawHeaders("access-control-allow-methods"), ["GET, POST, PUT"])
        self.assertEqual(h.getRawHeaders("access-control-allow-headers"), ["Authorization, Content-Type"])
        self.assertIsNone(h.getRawHeaders("access-control-allow-credentials"))
        response, body = yield self.call("PUT", "/rpc/dispatcher", b'{"action":"list"}', {
            "Origin": ALLOWED, "Authorization": BASIC, "Content-Type": "application/json"})
        self.assertEqual(response.code, 200, body)
        self.assertEqual(response.headers.getRawHeaders("access-control-allow-origin"), [ALLOWED])
        self.assertEqual(response.headers.getRawHeaders("vary"), ["Origin"])
        # Others' preflights get no CORS grant (403), the server's own origin needs none.
        response, _ = yield self.call("OPTIONS", "/rpc/dispatcher", b"", {
            "Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"})
        self.assertEqual(response.code, 403)
        self.assertIsNone(response.headers.getRawHeaders("access-control-allow-origin"))
        response, _ = yield self.call("GET", "/rpc/identify", b"", {"Origin": self.own})
        self.assertIsNone(response.headers.getRawHeaders("access-control-allow-origin"))

    @defer.inlineCallbacks
    def test_browsers_are_not_offered_basic(self):
        response, _ = yield self.call("GET", "/rpc/query")
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders("www-authenticate"), ['Basic realm="sysadmd"'])
        for headers in ({"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}, {"Sec-Fetch-Mode": "navigate"},
                        {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"}, {"Origin": self.own},
                        {"Sec-Fetch-Dest": "document"}):
            response, body = yield self.call("GET", "/rpc/query", b"", headers)
            self.assertEqual(response.code, 401, headers)
            self.assertEqual(response.headers.getRawHeaders("www-authenticate"), ['Bearer realm="sysadmd"'], headers)
            self.assertEqual(body["args"]["code"], "401")
        # A wrong Basic login from a browser is answered the same way (no prompt either).
        response, _ = yield self.call("GET", "/rpc/query", b"", {"Authorization": "Basic " + base64.b64encode(b"root:x").decode(),
                                                                 "User-Agent": "Mozilla/5.0"})
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders("www-authenticate"), ['Bearer realm="sysadmd"'])

    @defer.inlineCallbacks
    def test_websocket_on_the_same_port_accepts_any_origin(self):
        client = yield connect(reactor, f"wss://127.0.0.1:{self.running.port}/", timeout=10, origin="https://evil.example")
        self.addCleanup(client.close)
        reply = yield client.call("rpc", "identify", "")
        self.assertEqual(reply["args"]["type"], "server")


class AllowedOriginsConfigTests(unittest.TestCase):
    def test_values_are_normalized_and_checked(self):
        cfg = configmod.load(None, {"REST_ALLOWED_ORIGINS": "HTTPS://A.example:443, http://b.example:8080/ ,https://[::1]:9"})
        self.assertEqual(cfg.rest_allowed_origins, ("https://a.example", "http://b.example:8080", "https://[::1]:9"))
        self.assertEqual(configmod.load(None, {}).rest_allowed_origins, ())
        for bad in ("null", "ftp://x.example", "https://x.example/path", "x.example", "https://u:p@x.example", "*"):
            with self.assertRaises(ConfigError) as caught:
                configmod.load(None, {"REST_ALLOWED_ORIGINS": bad})
            self.assertTrue(str(caught.exception).startswith("REST_ALLOWED_ORIGINS: "), str(caught.exception))
