"""Units of sysadmd.transfers: the incremental multipart parser, download tokens (Clock),
file names in Content-Disposition, and config.save archive validation."""

from __future__ import annotations

import io
import json
import os
import random
import sqlite3
import tarfile
import tempfile

from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from sysadmd.transfers import backup
from sysadmd.transfers.multipart import MultipartError, MultipartParser, boundary_of
from sysadmd.transfers.service import sanitize_filename
from sysadmd.transfers.tokens import MAX_PER_USER, DownloadTokens, TooManyTokens
from sysadmd.transfers.web import _disposition

BOUNDARY = b"----b0undary"


def body_of(parts, boundary=BOUNDARY):
    out = b""
    for name, data in parts:
        out += b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"" + name.encode() + b"\"\r\n\r\n"
        out += data + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


class Collect:
    def __init__(self):
        self.parts = []

    def on_part(self, name, filename, headers):
        sink = io.BytesIO()
        self.parts.append((name, sink))
        return sink

    def result(self):
        return [(name, sink.getvalue()) for name, sink in self.parts]


def parse(body, cuts):
    c = Collect()
    p = MultipartParser(BOUNDARY, c.on_part)
    last = 0
    for cut in sorted(cuts) + [len(body)]:
        p.feed(body[last:cut])
        last = cut
    p.close()
    return c.result()


class MultipartTests(unittest.TestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(["data", "file", "x"]),
                              st.binary(max_size=300) | st.sampled_from([b"\r\n--", b"\r\n------b0undar",
                                                                         b"--" + BOUNDARY, b"\r\n\r\n"])),
                    min_size=1, max_size=4),
           st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
    def test_any_split_gives_the_parts_back_exactly(self, parts, cuts):
        body = body_of(parts)
        self.assertEqual(parse(body, [c for c in cuts if c <= len(body)]), parts)

    def test_every_single_cut_position(self):
        parts = [("data", b'{"method":"filesystem.put"}'), ("file", b"\r\n--\r\n----b0undar" + bytes(range(256)))]
        body = body_of(parts)
        for cut in range(len(body) + 1):
            self.assertEqual(parse(body, [cut]), parts)

    def test_memory_stays_bounded_for_a_large_part(self):
        c = Collect()
        p = MultipartParser(BOUNDARY, c.on_part)
        p.feed(b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n")
        block = os.urandom(1 << 20)
        for _ in range(8):
            p.feed(block)
            self.assertLess(len(p.buffer), len(p.delimiter) + 1)
        p.feed(b"\r\n--" + BOUNDARY + b"--\r\n")
        p.close()
        self.assertEqual(len(c.result()[0][1]), 8 << 20)

    def test_malformed_bodies_are_refused_with_a_reason(self):
        with self.assertRaisesRegex(MultipartError, "closing boundary"):
            parse(body_of([("data", b"x")])[:-8], [])
        with self.assertRaisesRegex(MultipartError, "no name"):
            parse(b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data\r\n\r\nx\r\n--" + BOUNDARY + b"--", [])
        with self.assertRaisesRegex(MultipartError, "headers exceed"):
            parse(b"--" + BOUNDARY + b"\r\nX: " + b"a" * 20000, [])
        with self.assertRaisesRegex(MultipartError, "first 64 KiB"):
            parse(b"x" * 70000, [])

    def test_boundary_from_content_type(self):
        self.assertEqual(boundary_of(b'multipart/form-data; boundary="a b"'), b"a b")
        self.assertEqual(boundary_of(b"multipart/form-data; charset=x; boundary=xyz"), b"xyz")
        for bad in (None, b"application/json", b"multipart/form-data"):
            with self.assertRaises(MultipartError):
                boundary_of(bad)


class TokenTests(unittest.TestCase):
    def test_bound_to_job_expiring_hashed_and_bounded(self):
        clock = Clock()
        tokens = DownloadTokens(clock, 60)
        token = tokens.issue(7, "root")
        self.assertNotIn(token, repr(tokens._grants))  # only its hash is kept
        self.assertEqual(tokens.check(token, 7).user, "root")
        self.assertEqual(tokens.check(token, 7).user, "root")  # repeated use is fine
        self.assertIsNone(tokens.check(token, 8))
        self.assertIsNone(tokens.check(token + "x", 7))
        self.assertIsNone(tokens.check("", 7))
        clock.advance(59)
        self.assertIsNotNone(tokens.check(token, 7))
        self.assertEqual(tokens.live_jobs(), {7})
        clock.advance(1)
        self.assertIsNone(tokens.check(token, 7))
        self.assertEqual(tokens.live_jobs(), set())
        for i in range(MAX_PER_USER):
            tokens.issue(i, "op")
        with self.assertRaisesRegex(TooManyTokens, "DOWNLOAD_TOKEN_TTL"):
            tokens.issue(99, "op")
        tokens.issue(99, "root")  # another user's count is separate
        clock.advance(61)
        tokens.issue(100, "op")  # expired ones no longer count


class FilenameTests(unittest.TestCase):
    def test_names_are_sanitised_for_the_header(self):
        self.assertEqual(sanitize_filename("../../etc/passwd"), "passwd")
        self.assertEqual(sanitize_filename('a"b\r\nc.bin'), "a_b__c.bin")
        self.assertEqual(sanitize_filename(".."), "download")
        self.assertEqual(sanitize_filename("x" * 999), "x" * 255)
        header = _disposition(sanitize_filename("résumé \"1\".txt"))
        self.assertEqual(header, b"attachment; filename=\"r_sum_ _1_.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20_1_.txt")


class BackupTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="bk")
        self.addCleanup(__import__("shutil").rmtree, self.dir, True)
        self.state = os.path.join(self.dir, "state")
        os.mkdir(self.state)
        self.db = os.path.join(self.state, "sysadmd.sqlite")
        conn = sqlite3.connect(self.db)
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES ('saved')")
        conn.execute("PRAGMA user_version = 3")
        conn.commit()
        conn.close()
        for name in ("server.key", "enc.key"):
            with open(os.path.join(self.state, name), "w") as f:
                f.write(name)
        self.conf = os.path.join(self.dir, "sysadmd.conf")
        with open(self.conf, "w") as f:
            f.write("PORT=12150\n")

    def test_save_validate_stage_and_apply_keeps_what_it_replaces(self):
        archive = os.path.join(self.dir, "a.tar")
        info = backup.save(self.db, self.state, self.conf, archive, self.dir)
        self.assertEqual(info["files"], ["config/sysadmd.conf", "db/sysadmd.sqlite", "keys/enc.key", "keys/server.key"])
        conn = sqlite3.connect(self.db)
        conn.execute("UPDATE t SET x = 'changed'")
        conn.commit()
        conn.close()
        with open(os.path.join(self.state, "server.key"), "w") as f:
            f.write("new key")
        stage = os.path.join(self.state, "restore", "pending")
        backup.validate_and_stage(archive, stage, 1 << 30, 3)
        kept = backup.apply_pending(self.state, self.conf)
        conn = sqlite3.connect(self.db)
        self.assertEqual(conn.execute("SELECT x FROM t").fetchone()[0], "saved")
        conn.close()
        with open(os.path.join(self.state, "server.key")) as f:
            self.assertEqual(f.read(), "server.key")
        with open(os.path.join(kept, "keys__server.key")) as f:
            self.assertEqual(f.read(), "new key")
        self.assertIsNone(backup.apply_pending(self.state, self.conf))  # applied once

    def tar_with(self, edit):
        archive = os.path.join(self.dir, "a.tar")
        backup.save(self.db, self.state, self.conf, archive, self.dir)
        with tarfile.open(archive) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        members = edit(members)
        out = os.path.join(self.dir, "b.tar")
        with tarfile.open(out, "w") as tar:
            for m, data in members:
                if m.isreg():
                    m.size = len(data)
                    tar.addfile(m, io.BytesIO(data))
                else:
                    tar.addfile(m)
        return out

    def refused(self, archive, words, max_schema=3, db_max=1 << 30):
        with self.assertRaises(backup.BackupError) as e:
            backup.validate_and_stage(archive, os.path.join(self.dir, "stage"), db_max, max_schema)
        self.assertIn(words, str(e.exception))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "stage")))

    def test_invalid_archives_are_refused_naming_the_problem(self):
        def corrupt_db(members):
            out = []
            for m, data in members:
                if m.name == "db/sysadmd.sqlite":
                    data = bytearray(data)
                    data[len(data) // 2 + 100] ^= 0xFF
                    data = bytes(data)
                out.append((m, data))
            return out

        def add_link(members):
            link = tarfile.TarInfo("keys/server.key")
            link.type = tarfile.SYMTYPE
            link.linkname = "/etc/shadow"
            return [mm for mm in members if mm[0].name != "keys/server.key"] + [(link, b"")]

        def add_member(name):
            return lambda members: members + [(tarfile.TarInfo(name), b"x")]

        def manifest_not_first(members):
            return members[1:] + members[:1]

        self.refused(self.tar_with(corrupt_db), "does not match MANIFEST")
        self.refused(self.tar_with(add_link), "not a regular file")
        self.refused(self.tar_with(add_member("keys/../../x")), "not part of a config.save archive")
        self.refused(self.tar_with(add_member("/etc/passwd")), "not part of a config.save archive")
        self.refused(self.tar_with(manifest_not_first), "MANIFEST.json must be the archive's first member")
        self.refused(self.tar_with(lambda m: m), "schema version 3, newer", max_schema=2)
        self.refused(self.tar_with(lambda m: m), "at most 100 allowed", db_max=100)

    def test_a_database_that_fails_integrity_check_is_refused(self):
        # A manifest that matches a broken database: only integrity_check can tell.
        import hashlib

        def broken(members):
            out, files = [], {}
            for m, data in members:
                if m.name == "db/sysadmd.sqlite":
                    data = b"SQLite format 3\x00" + bytes(random.Random(1).getrandbits(8) for _ in range(4080))
                if m.name != "MANIFEST.json":
                    files[m.name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                out.append((m, data))
            manifest = json.dumps({"format": "sysadmd-backup", "version": 1, "files": files}).encode()
            return [(out[0][0], manifest)] + out[1:]

        self.refused(self.tar_with(broken), "sysadmd.sqlite")
