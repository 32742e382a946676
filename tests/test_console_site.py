"""The web console's files on the daemon's HTTPS listener (issue 14 items 1 and 7): served
at ``/`` and ``/console/…`` with a strict Content-Security-Policy and no inline code, beside
REST and the WebSocket on the same port; ``CONSOLE=false`` turns it off; shipped in the
package, no CDN, under 400 KB gzipped."""

from __future__ import annotations

import gzip
import json
import os
import re
from html.parser import HTMLParser

from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.console import site as console_site
from tests.support import FakePasswords, http_client, make_config, open_client, short_tempdir, start_daemon

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATIC = console_site.STATIC_DIR


class Inline(HTMLParser):
    """Collects what a strict policy would refuse: inline scripts, style elements and
    attributes, event-handler attributes, and any URL that is not this origin's."""

    def __init__(self):
        super().__init__()
        self.problems = []
        self.scripts = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts.append(attrs.get("src"))
            self._in_script = True
            if not attrs.get("src"):
                self.problems.append("a <script> without src")
        if tag == "style":
            self.problems.append("a <style> element")
        for name, value in attrs.items():
            if name == "style" or name.startswith("on"):
                self.problems.append(f"<{tag} {name}=…>")
            if name in ("src", "href") and value and not value.startswith(("/console/", "#")):
                self.problems.append(f"<{tag} {name}={value!r}> is not one of the console's files")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.problems.append("script text inside a <script>")


class ConsoleFiles(unittest.TestCase):
    config_overrides: dict = {}

    @defer.inlineCallbacks
    def setUp(self):
        cfg = make_config(short_tempdir(self), **self.config_overrides)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.http = http_client(self, self.running)
        self.base = f"https://127.0.0.1:{self.running.port}"

    @defer.inlineCallbacks
    def get(self, path, method="GET", headers=None):
        response = yield self.http.request(method, self.base + path, headers=headers)
        body = yield response.content()
        return response, body

    def header(self, response, name):
        values = response.headers.getRawHeaders(name) or []
        return values[0] if values else None


class ServedConsole(ConsoleFiles):
    @defer.inlineCallbacks
    def test_the_page_has_a_strict_policy_and_no_inline_code(self):
        response, body = yield self.get("/")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "content-type"), "text/html; charset=utf-8")
        csp = self.header(response, "content-security-policy")
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        self.assertEqual(directives["default-src"], "'none'")
        self.assertEqual(directives["script-src"], "'self'")
        self.assertEqual(directives["style-src"], "'self'")
        self.assertEqual(directives["frame-ancestors"], "'none'")
        self.assertEqual(directives["connect-src"], f"'self' wss://127.0.0.1:{self.running.port}")
        self.assertNotIn("unsafe", csp)
        self.assertEqual(self.header(response, "x-content-type-options"), "nosniff")
        self.assertEqual(self.header(response, "x-frame-options"), "DENY")
        self.assertIsNone(self.header(response, "set-cookie"))
        parser = Inline()
        parser.feed(body.decode("utf-8"))
        self.assertEqual(parser.problems, [])
        self.assertEqual(parser.scripts, ["/console/app.js"])

    @defer.inlineCallbacks
    def test_a_host_header_that_is_not_a_plain_host_stays_out_of_the_policy(self):
        for host in ("evil.example'; script-src *", "a b", "x" * 300):
            response, _ = yield self.get("/", headers={"Host": host})
            csp = self.header(response, "content-security-policy")
            self.assertIn("connect-src 'self';", csp, host)
            self.assertNotIn("*", csp)

    @defer.inlineCallbacks
    def test_every_file_is_served_with_its_type_and_the_policy(self):
        names = sorted(n for n in os.listdir(STATIC) if os.path.isfile(os.path.join(STATIC, n)))
        self.assertIn("app.js", names)
        for name in names:
            if name == "index.html":
                continue
            response, body = yield self.get(f"/console/{name}")
            self.assertEqual(response.code, 200, name)
            with open(os.path.join(STATIC, name), "rb") as f:
                self.assertEqual(body, f.read(), name)
            kind = console_site.TYPES[os.path.splitext(name)[1]]
            self.assertEqual(self.header(response, "content-type"), kind, name)
            self.assertIsNotNone(self.header(response, "content-security-policy"), name)
            self.assertEqual(self.header(response, "x-content-type-options"), "nosniff", name)
            etag = self.header(response, "etag")
            again, body = yield self.get(f"/console/{name}", headers={"If-None-Match": etag})
            self.assertEqual((again.code, body), (304, b""), name)

    @defer.inlineCallbacks
    def test_unknown_paths_and_other_methods_are_refused(self):
        for path in ("/console/nope.js", "/console/../config.py", "/console/%2e%2e/site.py",
                     "/console/", "/console/index.html", "/console//app.js"):
            response, body = yield self.get(path)
            self.assertEqual(response.code, 404, path)
            self.assertNotIn(b"import", body)
        response, body = yield self.get("/", method="POST")
        self.assertEqual(response.code, 405)
        self.assertEqual(self.header(response, "allow"), "GET, HEAD")
        response, body = yield self.get("/console/app.js", method="HEAD")
        self.assertEqual((response.code, body), (200, b""))

    @defer.inlineCallbacks
    def test_rest_and_the_websocket_keep_working_on_the_same_port(self):
        response, body = yield self.get("/rpc/identify")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["args"]["type"], "server")
        response, body = yield self.get("/a/b/c")  # not namespace/name: REST's 404, as before
        self.assertEqual(response.code, 404)
        self.assertEqual(self.header(response, "content-type"), "application/json; charset=utf-8")
        client = yield open_client(self, self.running)  # upgrades on "/" still reach the API
        reply = yield client.call("rpc", "identify", {})
        self.assertEqual(reply["args"]["type"], "server")


class ConsoleOff(ConsoleFiles):
    config_overrides = {"console": "false"}

    @defer.inlineCallbacks
    def test_console_false_leaves_rest_answering_slash(self):
        # "/" is no REST path (404); "/console/app.js" is one (namespace/name), unknown and
        # asked without a login (401): both are REST's JSON, not the console's files.
        for path, code in (("/", 404), ("/console/app.js", 401)):
            response, body = yield self.get(path)
            self.assertEqual(response.code, code, path)
            self.assertEqual(self.header(response, "content-type"), "application/json; charset=utf-8")
            self.assertIsNone(self.header(response, "content-security-policy"))
            self.assertEqual(json.loads(body)["args"]["code"], str(code))


class ShippedFiles(unittest.TestCase):
    def test_assets_are_small_local_and_in_the_package(self):
        total = 0
        with open(os.path.join(ROOT, "setup.py")) as f:
            setup_text = f.read()
        for name in sorted(n for n in os.listdir(STATIC) if os.path.isfile(os.path.join(STATIC, n))):
            with open(os.path.join(STATIC, name), "rb") as f:
                data = f.read()
            total += len(gzip.compress(data, 9))
            self.assertIn(f'"static/*{os.path.splitext(name)[1]}"', setup_text, f"{name} is not in package_data")
            text = data.decode("utf-8")
            urls = [u for u in re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}[^\s\"')]*", text)
                    if u != "http://www.w3.org/2000/svg"]
            self.assertEqual(urls, [], f"{name} refers to another site")
            if name.endswith(".js"):
                self.assertNotIn("innerHTML", text, name)
                self.assertNotIn("eval(", text, name)
                self.assertNotIn("document.cookie", text, name)
                self.assertNotIn("localStorage", text, name)
        self.assertLess(total, 400 * 1024)

    def test_a_missing_index_is_said_at_build_time(self):
        empty = short_tempdir(self)
        with self.assertRaises(FileNotFoundError) as caught:
            console_site.ConsoleResource(empty)
        self.assertIn("index.html", str(caught.exception))


class SystemStateForTheCharts(unittest.TestCase):
    """The dashboard's CPU and network charts read ``cpu`` and ``network`` in system-state."""

    def test_a_reading_has_cpu_and_network_figures_and_the_event_carries_them(self):
        from sysadmd.events import systemstate

        sample = systemstate.sample_host()
        self.assertIsInstance(sample.cpu_percent, float)
        self.assertTrue(0 <= sample.cpu_percent <= 100)
        self.assertEqual(set(sample.network), {"bytes_recv", "bytes_sent"})
        args = systemstate.state_args(sample, {}, 0, [], False)
        self.assertEqual(args["cpu"], {"percent": sample.cpu_percent})
        self.assertEqual(args["network"], sample.network)
        json.dumps(args)  # plain JSON numbers

    def test_loopback_traffic_is_left_out(self):
        from unittest import mock

        from sysadmd.events import systemstate

        class Nic:
            def __init__(self, received, sent):
                self.bytes_recv, self.bytes_sent = received, sent

        with mock.patch.object(systemstate.psutil, "net_io_counters",
                               return_value={"lo": Nic(10**9, 10**9), "eth0": Nic(5, 7), "wlan0": Nic(1, 2)}):
            self.assertEqual(systemstate._network(), {"bytes_recv": 6, "bytes_sent": 9})
        with mock.patch.object(systemstate.psutil, "net_io_counters", side_effect=OSError("no /proc/net/dev")):
            self.assertEqual(systemstate._network(), {})
