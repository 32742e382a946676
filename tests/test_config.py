"""Configuration: the sample file, the KEY=VALUE rules and the error messages."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from twisted.trial import unittest

from sysadmd import config as configmod
from sysadmd.runtime.configfile import ConfigError, Key, read_file
from tests.support import short_tempdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "conf", "sysadmd.conf")


class SampleFileTests(unittest.TestCase):
    def test_sample_is_the_generated_text(self):
        out = subprocess.run([sys.executable, "-m", "sysadmd.config"], cwd=ROOT, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=ROOT), timeout=60, check=True).stdout
        with open(SAMPLE, encoding="utf-8") as f:
            self.assertEqual(f.read(), out, "conf/sysadmd.conf is stale: python -m sysadmd.config > conf/sysadmd.conf")

    def test_sample_lists_every_key_once_with_its_default(self):
        with open(SAMPLE, encoding="utf-8") as f:
            text = f.read()
        shown = re.findall(r"^#([A-Z_]+)=(.*)$", text, re.MULTILINE)
        self.assertEqual([k for k, _ in shown], configmod.KEY_NAMES)
        doubled = sorted({k for k in configmod.KEY_NAMES if configmod.KEY_NAMES.count(k) > 1})
        self.assertEqual(doubled, [], "keys defined twice in the key table")
        # Uncommenting every key gives exactly the defaults.
        path = os.path.join(short_tempdir(self), "all.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write(re.sub(r"^#([A-Z_]+=)", r"\1", text, flags=re.MULTILINE))
        state = short_tempdir(self)
        uncommented = configmod.load(path, {"STATE_DIR": state}).as_dict()
        defaults = configmod.load(None, {"STATE_DIR": state}).as_dict()
        self.assertEqual(uncommented, defaults)

    def test_the_sample_itself_loads_as_the_defaults(self):
        state = short_tempdir(self)
        self.assertEqual(configmod.load(SAMPLE, {"STATE_DIR": state}).as_dict(), configmod.load(None, {"STATE_DIR": state}).as_dict())

    def test_upstream_keys_and_defaults(self):
        cfg = configmod.load(None, {"STATE_DIR": short_tempdir(self)})
        self.assertEqual(cfg.port, "12150")
        self.assertFalse(cfg.bridge_connections_only)
        self.assertEqual((cfg.blacklist_block_minutes, cfg.blacklist_auth_fail_limit, cfg.blacklist_auth_fail_reset_minutes), (60, 5, 10))
        self.assertEqual((cfg.token_ttl, cfg.auth_timeout, cfg.idle_timeout), (900, 30, 1800))


class ParsingTests(unittest.TestCase):
    def setUp(self):
        self.dir = short_tempdir(self)

    def write(self, text: str) -> str:
        path = os.path.join(self.dir, "sysadmd.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def load(self, text: str, **overrides):
        overrides.setdefault("STATE_DIR", self.dir)
        return configmod.load(self.write(text), overrides)

    def assertConfigError(self, text: str, key: str, *fragments: str, **overrides) -> str:
        with self.assertRaises(ConfigError) as caught:
            self.load(text, **overrides)
        message = str(caught.exception)
        self.assertTrue(message.startswith(key + ":"), message)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_trailing_comments_are_stripped(self):
        # Upstream's own sample has "true #[true/false]", which upstream read as false.
        cfg = self.load("BRIDGE_CONNECTIONS_ONLY = true #[true/false]\nPORT=12345   # main port\n")
        self.assertTrue(cfg.bridge_connections_only)
        self.assertEqual(cfg.port, "12345")

    def test_commented_out_and_blank_lines_are_ignored(self):
        cfg = self.load("\n   \n#PORT=1\n  # BLACKLIST_AUTH_FAIL_LIMIT=2\n")
        self.assertEqual(cfg.port, "12150")
        self.assertEqual(cfg.blacklist_auth_fail_limit, 5)

    def test_last_line_wins_and_keys_are_case_insensitive(self):
        self.assertEqual(self.load("port=1000\nPORT=2000\n").port, "2000")

    def test_command_line_overrides_the_file(self):
        self.assertEqual(self.load("PORT=1000\n", PORT="tcp:0").port, "tcp:0")

    def test_unknown_key_is_named(self):
        self.assertConfigError("PORT=1\nLISTEN_PORT=2\n", "LISTEN_PORT", "unknown configuration key", "sysadmd.conf")

    def test_line_without_equals(self):
        with self.assertRaises(ConfigError) as caught:
            self.load("PORT=1\nthis is not a setting\n")
        self.assertIn("sysadmd.conf:2:", str(caught.exception))
        self.assertIn("KEY=VALUE", str(caught.exception))

    def test_missing_file(self):
        with self.assertRaises(ConfigError) as caught:
            configmod.load(os.path.join(self.dir, "absent.conf"))
        self.assertIn("absent.conf", str(caught.exception))

    def test_bool_values(self):
        for text, value in (("true", True), ("YES", True), ("on", True), ("1", True), ("false", False), ("no", False), ("0", False), ("", False)):
            self.assertEqual(self.load(f"BRIDGE_CONNECTIONS_ONLY={text}\n").bridge_connections_only, value, text)
        self.assertConfigError("ALLOW_PASSWORD_AUTH=maybe\n", "ALLOW_PASSWORD_AUTH", "true or false", "'maybe'")

    def test_int_values(self):
        self.assertEqual(self.load("TOKEN_TTL=60\n").token_ttl, 60)
        self.assertConfigError("TOKEN_TTL=x\n", "TOKEN_TTL", "whole number", "'x'")
        self.assertConfigError("TOKEN_TTL=1.5\n", "TOKEN_TTL", "whole number")
        self.assertConfigError("TOKEN_TTL=5\n", "TOKEN_TTL", "below the minimum 10")
        self.assertConfigError("STATE_DISK_WARN=101\n", "STATE_DISK_WARN", "above the maximum 100")

    def test_float_values(self):
        self.assertEqual(self.load("JOB_KILL_GRACE=0.5\n").job_kill_grace, 0.5)
        self.assertConfigError("JOB_KILL_GRACE=soon\n", "JOB_KILL_GRACE", "a number")

    def test_nan_and_infinity_are_refused_naming_the_key(self):
        # float() reads these; a NaN JOB_KILL_GRACE used to make every kill a 500.
        for text in ("nan", "NaN", "-nan", "inf", "-inf", "Infinity", "+infinity"):
            self.assertConfigError(f"JOB_KILL_GRACE={text}\n", "JOB_KILL_GRACE", "finite number", repr(text))
            self.assertConfigError(f"STATE_MEMORY_WARN={text}\n", "STATE_MEMORY_WARN", "finite number")
        # The bridge reads its file with the same parser.
        from bridge import config as bridge_config

        with self.assertRaises(ConfigError) as caught:
            bridge_config.load(None, {"PING_INTERVAL": "inf"})
        self.assertTrue(str(caught.exception).startswith("PING_INTERVAL:"), str(caught.exception))
        self.assertIn("finite number", str(caught.exception))

    def test_endpoint_values(self):
        for text, value in (("12150", "12150"), ("tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"),
                            ("tcp6:12150", "tcp6:12150"), ("", ""), ("none", "")):
            self.assertEqual(self.load(f"PORT_REST={text}\n").port_rest, value, text)
        self.assertConfigError("PORT=abc\n", "PORT", "endpoint string", "'abc'")
        self.assertConfigError("PORT=70000\n", "PORT", "out of range")
        self.assertConfigError("PORT_REST=http:80\n", "PORT_REST", "'http:80'")

    def test_list_values(self):
        cfg = self.load("FULL_ACCESS_GROUPS = wheel, admins ,,\n")
        self.assertEqual(cfg.full_access_groups, ("wheel", "admins"))

    def test_socket_and_state_dir_defaults(self):
        cfg = self.load("")
        self.assertEqual(cfg.socket, os.path.join(self.dir, "sysadmd.sock"))
        self.assertEqual(self.load("SOCKET=none\n").socket, "")
        self.assertEqual(self.load("SOCKET=/run/s.sock\n").socket, "/run/s.sock")

    def test_the_system_daemon_socket_is_in_run(self):
        from unittest import mock

        with mock.patch.object(configmod.os, "geteuid", return_value=0):
            system = configmod.load(None, {})
            own_dir = configmod.load(None, {"STATE_DIR": self.dir})
        self.assertEqual((system.state_dir, system.socket), ("/var/db/sysadmd", "/run/sysadmd/sysadmd.sock"))
        self.assertEqual(own_dir.socket, os.path.join(self.dir, "sysadmd.sock"))
        with mock.patch.object(configmod.os, "geteuid", return_value=1000):
            user = configmod.load(None, {})
        self.assertEqual(user.socket, os.path.join(user.state_dir, "sysadmd.sock"))

    def test_the_client_finds_the_system_daemon_first(self):
        from unittest import mock

        from sysadmd.client.connect import default_socket
        from sysadmd.runtime import paths

        system = os.path.join(self.dir, "system.sock")
        with mock.patch.dict(os.environ, {"SYSADM_SOCKET": ""}), \
                mock.patch.object(paths, "SYSTEM_SOCKET", system), \
                mock.patch.object(configmod.os, "geteuid", return_value=1000):
            mine = default_socket()
            self.assertTrue(mine.endswith(os.path.join("sysadmd", "sysadmd.sock")), mine)
            with open(system, "w"):
                pass
            self.assertEqual(default_socket(), system)
            with mock.patch.dict(os.environ, {"SYSADM_SOCKET": "/elsewhere.sock"}):
                self.assertEqual(default_socket(), "/elsewhere.sock")

    def test_cross_key_checks_name_a_key(self):
        self.assertConfigError("TLS_CERT=/x.crt\n", "TLS_KEY", "together")
        self.assertConfigError("STATE_LOAD_WARN=3\nSTATE_LOAD_CRIT=2\n", "STATE_LOAD_CRIT", "STATE_LOAD_WARN")

    def test_read_file_returns_raw_text(self):
        path = self.write("a = b c # d\nB=\n")
        self.assertEqual(read_file(path), {"A": "b c", "B": ""})

    def test_key_choices(self):
        key = Key("MODE", "str", "a", "doc", choices=("a", "b"))
        self.assertEqual(key.parse(" b "), "b")
        with self.assertRaises(ConfigError) as caught:
            key.parse("c")
        self.assertEqual(str(caught.exception), "MODE: 'c' is not one of a, b")
