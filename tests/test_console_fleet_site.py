"""Issue 14 item 6: the console's policy lets the fleet view connect to bridges, and only
to the ones this server links to plus CONSOLE_CONNECT_SRC (wss:// origins, checked at load),
never to any wss: host; the vendored cipher library ships with its licence and pinned version."""

from __future__ import annotations

import gzip
import os
import re

from twisted.internet import defer
from twisted.trial import unittest

from sysadmd import config as configmod
from sysadmd.console import site as console_site
from tests.support import FakePasswords, http_client, make_config, short_tempdir, start_daemon

STATIC = console_site.STATIC_DIR
VENDOR = os.path.join(STATIC, "vendor")


def connect_src(csp: str) -> list:
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    return directives["connect-src"].split()


class FleetConnectSources(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        cfg = make_config(short_tempdir(self),
                          CONSOLE_CONNECT_SRC="wss://Relay.Example.org:12149  wss://[::1]:9443 wss://relay.example.org:12149")
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.http = http_client(self, self.running)
        self.base = f"https://127.0.0.1:{self.running.port}"

    @defer.inlineCallbacks
    def policy(self, path="/"):
        response = yield self.http.request("GET", self.base + path)
        yield response.content()
        return response.headers.getRawHeaders("content-security-policy")[0]

    @defer.inlineCallbacks
    def test_linked_bridges_and_configured_origins_only(self):
        sources = connect_src((yield self.policy()))
        self.assertEqual(sources, ["'self'", f"wss://127.0.0.1:{self.running.port}",
                                   "wss://relay.example.org:12149", "wss://[::1]:9443"])
        # A bridge linked while the daemon runs is allowed at the next request, by origin (no path).
        store = self.running.daemon.bridge_links.store
        store.add("lab", "127.0.0.1:12777/some/path", "none")
        store.add("edge", "wss://edge.example.net", "none")
        for path in ("/", "/console/app.js"):
            sources = connect_src((yield self.policy(path)))
            self.assertIn("wss://127.0.0.1:12777", sources)
            self.assertIn("wss://edge.example.net:12149", sources)
            self.assertNotIn("wss:", sources)
            self.assertFalse([s for s in sources if "*" in s or s in ("wss:", "https:", "ws:")], sources)
        store.remove("lab")
        self.assertNotIn("wss://127.0.0.1:12777", connect_src((yield self.policy())))


class ConnectSourceSetting(unittest.TestCase):
    def test_only_wss_origins_are_accepted(self):
        for bad in ("wss:", "wss://*", "wss://*.example.org", "https://relay.example.org", "ws://relay",
                    "wss://relay/path", "wss://user@relay", "wss://relay:99999", "'self'", "*", "wss://relay;script-src"):
            with self.assertRaises(configmod.ConfigError) as caught:
                make_config(short_tempdir(self), CONSOLE_CONNECT_SRC=f"wss://ok.example.org {bad}")
            self.assertIn("CONSOLE_CONNECT_SRC", str(caught.exception))
            self.assertIn("wss://", str(caught.exception))
        cfg = make_config(short_tempdir(self), CONSOLE_CONNECT_SRC="wss://A.example.org:443 wss://b.example.org")
        self.assertEqual(cfg.console_connect_src, "wss://a.example.org wss://b.example.org")

    def test_the_policy_never_takes_what_is_not_a_wss_origin(self):
        csp = console_site.content_security_policy(b"127.0.0.1:1", ["wss:", "wss://a b", "wss://x;", "wss://ok.example"])
        self.assertEqual(connect_src(csp), ["'self'", "wss://127.0.0.1:1", "wss://ok.example"])
        self.assertEqual(console_site.bridge_origin("wss://h.example:12149/x"), "wss://h.example:12149")
        self.assertIsNone(console_site.bridge_origin("https://h.example"))


class VendoredCiphers(unittest.TestCase):
    def test_vendored_files_are_pinned_licensed_and_small(self):
        with open(os.path.join(VENDOR, "VENDORED.md")) as f:
            note = f.read()
        total = 0
        for root, _dirs, names in os.walk(STATIC):
            for name in names:
                with open(os.path.join(root, name), "rb") as f:
                    total += len(gzip.compress(f.read(), 9))
        self.assertLess(total, 400 * 1024)
        for package in ("noble-ciphers", "noble-hashes"):
            folder = os.path.join(VENDOR, package)
            self.assertTrue(os.path.exists(os.path.join(folder, "LICENSE")), package)
            version = re.search(rf"@noble/{package[6:]} +([0-9]+\.[0-9]+\.[0-9]+)", note)
            self.assertIsNotNone(version, f"VENDORED.md names no pinned version of {package}")
            for name in os.listdir(folder):
                if not name.endswith(".js"):
                    continue
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    text = f.read()
                # Relative imports only: the browser loads nothing from another site.
                for target in re.findall(r'^\s*(?:import|export)\b[^;]*?from\s+"([^"]+)"', text, re.M):
                    self.assertTrue(target.startswith("./") and os.path.exists(os.path.join(folder, target)),
                                    f"{package}/{name} imports {target}")
        served = console_site.load_files()
        self.assertIn(b"/console/vendor/noble-ciphers/chacha.js", served)
        self.assertNotIn(b"/console/vendor/noble-ciphers/LICENSE", served)
