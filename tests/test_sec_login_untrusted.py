"""sysadmd.untrusted.shown: untrusted values become one bounded, escaped line."""

from twisted.internet.task import Clock
from twisted.trial import unittest

from sysadmd.runtime.db import open_database
from sysadmd.logstore import HOSTINFO_LIMIT, LogStore
from sysadmd.untrusted import shown
from tests.support import short_tempdir


class Shown(unittest.TestCase):
    def test_newlines_cannot_forge_a_line(self):
        text = shown("bob\nUser Login Attempt: root   Success: true\r")
        self.assertNotIn("\n", text)
        self.assertNotIn("\r", text)
        self.assertEqual(text, "bob\\nUser Login Attempt: root   Success: true\\r")

    def test_long_values_are_cut_with_a_marker(self):
        text = shown("x" * (5 * 1024 * 1024), 64)
        self.assertTrue(text.startswith("x" * 64 + "…["))
        self.assertIn(f"{5 * 1024 * 1024 - 64} more chars cut", text)
        self.assertLess(len(text), 120)

    def test_controls_surrogates_and_format_characters_are_escaped(self):
        self.assertEqual(shown("a\x00b\x1b\u202e\ud800\u2028c\\"), "a\\x00b\\x1b\\u202e\\ud800\\u2028c\\\\")
        shown("\ud800").encode("utf-8")  # encodable: no lone surrogate left

    def test_printable_text_passes_unchanged(self):
        self.assertEqual(shown("Zoë Ødegård 名前"), "Zoë Ødegård 名前")

    def test_bytes_and_other_types(self):
        self.assertEqual(shown(b"ab\xff\n"), "ab\\xff\\n")
        self.assertEqual(shown(b"abcdef", 2), "ab…[4 more bytes cut, 6 in all]")
        self.assertEqual(shown(None), "None")
        self.assertEqual(shown(["a\nb"]), "['a\\\\nb']")

    def test_backslash_false_keeps_backslashes_but_still_escapes_controls(self):
        self.assertEqual(shown("C:\\x\n", backslash=False), "C:\\x\\n")


class HostinfoGuard(unittest.TestCase):
    def test_hostinfo_entries_are_one_bounded_line(self):
        db = open_database(short_tempdir(self) + "/l.sqlite")
        self.addCleanup(db.close)
        clock = Clock()
        clock.advance(1000)
        logs = LogStore(db, clock)
        logs.hostinfo("evil\nforged line " + "y" * 100_000)
        [(name, _, entry)] = logs.read(["hostinfo"], 0, 2000)
        self.assertNotIn("\n", entry)
        self.assertLess(len(entry), HOSTINFO_LIMIT + 80)
        self.assertIn("evil\\nforged line", entry)
