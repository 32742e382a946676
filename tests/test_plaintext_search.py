"""The plaintext search helpers find what is there and only that (tests/plaintext_search.py)."""

import base64
import os
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import unittest

from tests import plaintext_search
from tests.plaintext_search import (
    SearchLimitError, SearchStats, marker_forms, search_files, search_files_many, search_process_memory,
    search_process_memory_many)

# The child gets the marker as hex on stdin and holds it as a bytes object: the raw marker
# reaches its memory only through bytes.fromhex, never through argv or the environment.
HOLDER = """
import sys
marker = bytes.fromhex(sys.stdin.readline().strip())
held = [marker + b"-held"]
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
"""


def new_marker() -> str:
    return "PTSEARCH-" + secrets.token_hex(12)


class FileSearchTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.root = self.dir.name

    def tearDown(self):
        self.dir.cleanup()

    def test_finds_marker_in_sqlite_wal_and_nested_files_only(self):
        marker = new_marker()
        db_path = os.path.join(self.root, "state.sqlite")
        db = sqlite3.connect(db_path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (v TEXT)")
        db.commit()
        db.execute("INSERT INTO t VALUES (?)", (marker,))
        db.commit()  # the row now sits in the -wal file, not yet checkpointed
        try:
            found = search_files(self.root, marker)
            self.assertIn(db_path + "-wal", found)
        finally:
            db.close()
        os.makedirs(os.path.join(self.root, "a", "b"))
        nested = os.path.join(self.root, "a", "b", "note")
        with open(nested, "wb") as f:
            f.write(b"x" * 100 + marker.encode() + b"y")
        self.assertIn(nested, search_files(self.root, marker))
        self.assertEqual(search_files(self.root, new_marker()), [])
        absent = new_marker()
        found = search_files_many(self.root, [marker, absent])
        self.assertIn(nested, found[marker.encode()])
        self.assertIn(db_path, found[marker.encode()])  # checkpointed into the main file at close
        self.assertEqual(found[absent.encode()], [])

    def test_marker_across_a_chunk_boundary_is_found(self):
        marker = new_marker().encode()
        path = os.path.join(self.root, "big")
        with open(path, "wb") as f:
            f.write(b"\0" * (plaintext_search.CHUNK - 5) + marker + b"\0" * 10)
        self.assertEqual(search_files(self.root, marker), [path])

    def test_bound_raises_instead_of_stopping_quietly(self):
        with open(os.path.join(self.root, "f"), "wb") as f:
            f.write(b"\0" * 5000)
        with self.assertRaises(SearchLimitError):
            search_files(self.root, "nothing-here", max_total=1000)

    def test_base64_forms_match_at_every_alignment(self):
        marker = new_marker().encode()
        forms = marker_forms(marker)
        self.assertEqual(forms[0], marker)
        for shift in range(3):
            text = base64.b64encode(b"z" * shift + marker + b"tail")
            self.assertTrue(any(form in text for form in forms[1:]), shift)
        self.assertFalse(any(form in base64.b64encode(new_marker().encode()) for form in forms))


@unittest.skipUnless(os.path.exists("/proc/self/mem"), "needs /proc")
class MemorySearchTests(unittest.TestCase):
    def setUp(self):
        self.child = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        self.addCleanup(self.stop_child)

    def stop_child(self):
        if self.child.poll() is None:
            self.child.kill()
        self.child.wait(10)
        self.child.stdin.close()
        self.child.stdout.close()

    def hold(self, marker: str):
        self.child.stdin.write(marker.encode().hex() + "\n")
        self.child.stdin.flush()
        self.assertEqual(self.child.stdout.readline().strip(), "ready")

    def test_marker_held_by_a_child_is_found_and_an_absent_one_is_not(self):
        marker = new_marker()
        self.hold(marker)
        stats = SearchStats()
        regions = search_process_memory(self.child.pid, marker + "-held", stats=stats)
        self.assertTrue(regions, f"marker not found after reading {stats.bytes_read} bytes")
        self.assertTrue(all(perms.startswith("r") for _s, _e, perms, _p in regions))
        absent_stats = SearchStats()
        self.assertEqual(search_process_memory(self.child.pid, new_marker(), stats=absent_stats), [])
        self.assertGreater(absent_stats.bytes_read, 1 << 20)

    def test_several_needles_in_one_pass(self):
        marker, absent = new_marker(), new_marker()
        self.hold(marker)
        found = search_process_memory_many(self.child.pid, [marker + "-held", absent])
        self.assertTrue(found[(marker + "-held").encode()])
        self.assertEqual(found[absent.encode()], [])

    def test_memory_bound_raises(self):
        self.hold(new_marker())
        with self.assertRaises(SearchLimitError):
            search_process_memory(self.child.pid, new_marker(), max_total=1 << 16)
