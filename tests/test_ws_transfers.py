"""core/upload_* and core/download_* (chunked transfers over the API) and ``sysadm cp``:
an in-process daemon on loopback, the real client in a child process over wss, the local
socket and a real bridge, real files compared by SHA-256."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from sysadmd.wire import envelope
from sysadmd.session import Identity
from sysadmd.transfers import wsapi
from tests.test_client_bridge import BridgedCli
from tests.support import FakePasswords, RecordingChannel, make_config, short_tempdir, start_daemon
from tests.test_client_cli import run_cli

MIB = 1024 * 1024
BIG = 20 * MIB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class ApiTests(unittest.TestCase):
    """The six routes called in-process (no child processes: fast)."""

    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.dir = short_tempdir(self)
        cfg = make_config(os.path.join(self.dir, "state"), UPLOAD_MAX_BYTES=8 * MIB)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.server = self.running.server
        self.ws = self.running.daemon.chunk_transfers
        self.root = self.session("root", True)

    def session(self, user, full):
        s = self.server.open_session("test", f"peer-{user}", RecordingChannel(),
                                     identity=Identity(user, full, "password"), timers=False)
        self.addCleanup(s.lost)
        return s

    @defer.inlineCallbacks
    def call(self, name, args, session=None):
        reply = yield self.server.api.handle(session or self.root, envelope.parse(json.dumps(
            {"namespace": "core", "name": name, "id": "x", "args": args})))
        return reply

    @defer.inlineCallbacks
    def ok(self, name, args, session=None):
        reply = yield self.call(name, args, session)
        self.assertEqual(reply["name"], "response", reply)
        return reply["args"]

    @defer.inlineCallbacks
    def error(self, name, args, code, words, session=None):
        reply = yield self.call(name, args, session)
        self.assertEqual(reply["name"], "error", reply)
        self.assertEqual(reply["args"]["code"], code, reply)
        self.assertIn(words, reply["args"]["detail"])

    @defer.inlineCallbacks
    def test_upload_in_chunks_resume_and_download_byte_exact(self):
        data = os.urandom(3 * MIB + 17)
        target = os.path.join(self.dir, "up.bin")
        opened = yield self.ok("upload_open", {"path": target, "mode": 0o640, "size": len(data)})
        self.assertEqual(opened["offset"], 0)
        yield self.ok("upload_write", {"upload_id": opened["upload_id"], "offset": 0, "data": b64(data[:MIB])})
        # The connection drops; a new one opens the same path and resumes at the server's offset.
        other = self.session("root", True)
        again = yield self.ok("upload_open", {"path": target, "mode": 0o640, "size": len(data)}, other)
        self.assertEqual((again["upload_id"], again["offset"], again["job_id"]),
                         (opened["upload_id"], MIB, opened["job_id"]))
        row = self.ws.table.get(opened["job_id"])
        self.assertEqual(row["state"], "RUNNING")
        self.assertAlmostEqual(row["progress"]["percent"], 100.0 * MIB / len(data), places=3)
        for start in range(MIB, len(data), MIB):
            reply = yield self.ok("upload_write", {"upload_id": opened["upload_id"], "offset": start,
                                                   "data": b64(data[start:start + MIB])}, other)
            self.assertEqual(reply["received"], min(len(data), start + MIB))
        self.assertFalse(os.path.exists(target))  # nothing is visible before the close
        done = yield self.ok("upload_close", {"upload_id": opened["upload_id"], "sha256": sha(data)}, other)
        self.assertEqual((done["id"], done["state"], done["result"]["sha256"]), (opened["job_id"], "SUCCESS", sha(data)))
        self.assertEqual(done["progress"]["percent"], 100.0)
        with open(target, "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(os.stat(target).st_mode & 0o7777, 0o640)
        self.assertEqual([n for n in os.listdir(self.ws.transfers.spool_dir) if n.startswith("ws-")], [])

        dl = yield self.ok("download_open", {"path": target})
        self.assertEqual((dl["size"], dl["sha256"]), (len(data), sha(data)))
        got = b""
        while True:
            part = yield self.ok("download_read", {"job_id": dl["job_id"], "offset": len(got), "length": MIB})
            got += base64.b64decode(part["data"])
            if part["eof"]:
                break
        self.assertEqual(got, data)
        job = self.ws.table.get(dl["job_id"])
        self.assertEqual((job["state"], job["progress"]["percent"]), ("SUCCESS", 100.0))
        # Ranges may be read again until the download is closed.
        part = yield self.ok("download_read", {"job_id": dl["job_id"], "offset": 5, "length": 10})
        self.assertEqual(base64.b64decode(part["data"]), data[5:15])
        yield self.ok("download_close", {"job_id": dl["job_id"]})
        yield self.error("download_read", {"job_id": dl["job_id"], "offset": 0}, "404", "no open download")

    @defer.inlineCallbacks
    def test_chunk_bounds_and_bad_chunks(self):
        target = os.path.join(self.dir, "b.bin")
        up = (yield self.ok("upload_open", {"path": target}))["upload_id"]
        yield self.error("upload_write", {"upload_id": up, "offset": 0, "data": b64(b"x" * (wsapi.CHUNK_MAX + 1))},
                         "413", "more than 1048576 bytes")
        yield self.error("upload_write", {"upload_id": up, "offset": 0, "data": "%%%"}, "400", "not valid base64")
        yield self.error("upload_write", {"upload_id": up, "offset": 5, "data": b64(b"abc")}, "409",
                         "0 bytes received")
        yield self.ok("upload_write", {"upload_id": up, "offset": 0, "data": b64(b"x" * wsapi.CHUNK_MAX)})
        with open(os.path.join(self.dir, "small"), "wb") as f:
            f.write(b"hello")
        dl = yield self.ok("download_open", {"path": os.path.join(self.dir, "small")})
        yield self.error("download_read", {"job_id": dl["job_id"], "offset": 0, "length": wsapi.CHUNK_MAX + 1},
                         "400", "'length' must be a whole number from 1 to 1048576")
        yield self.error("download_read", {"job_id": dl["job_id"], "offset": 6}, "400", "'offset'")
        # UPLOAD_MAX_BYTES (8 MiB here) bounds the total, declared or not.
        yield self.error("upload_open", {"path": target + "2", "size": 8 * MIB + 1}, "413", "UPLOAD_MAX_BYTES")
        big = (yield self.ok("upload_open", {"path": target + "3"}))["upload_id"]
        for i in range(8):
            yield self.ok("upload_write", {"upload_id": big, "offset": i * MIB, "data": b64(b"y" * MIB)})
        yield self.error("upload_write", {"upload_id": big, "offset": 8 * MIB, "data": b64(b"y")}, "413",
                         "UPLOAD_MAX_BYTES")

    @defer.inlineCallbacks
    def test_open_uploads_are_bounded_per_connection(self):
        for i in range(wsapi.UPLOADS_PER_SESSION):
            yield self.ok("upload_open", {"path": os.path.join(self.dir, f"f{i}")})
        yield self.error("upload_open", {"path": os.path.join(self.dir, "one-more")}, "429",
                         f"at most {wsapi.UPLOADS_PER_SESSION}")
        yield self.ok("upload_open", {"path": os.path.join(self.dir, "one-more")}, self.session("root", True))

    @defer.inlineCallbacks
    def test_limited_user_is_refused_everything(self):
        limited = self.session("op", False)
        with open(os.path.join(self.dir, "f"), "wb") as f:
            f.write(b"secret")
        opened = yield self.ok("upload_open", {"path": os.path.join(self.dir, "g")})
        dl = yield self.ok("download_open", {"path": os.path.join(self.dir, "f")})
        for name, args in (("upload_open", {"path": os.path.join(self.dir, "g")}),
                           ("upload_write", {"upload_id": opened["upload_id"], "offset": 0, "data": b64(b"x")}),
                           ("upload_close", {"upload_id": opened["upload_id"], "sha256": sha(b"")}),
                           ("download_open", {"path": os.path.join(self.dir, "f")}),
                           ("download_read", {"job_id": dl["job_id"], "offset": 0}),
                           ("download_close", {"job_id": dl["job_id"]})):
            yield self.error(name, args, "403", "full access", limited)
        # Another full user cannot touch root's open transfers either.
        other = self.session("admin", True)
        yield self.error("upload_write", {"upload_id": opened["upload_id"], "offset": 0, "data": b64(b"x")}, "404",
                         "no open upload", other)
        yield self.error("download_read", {"job_id": dl["job_id"], "offset": 0}, "404", "no open download", other)

    @defer.inlineCallbacks
    def test_sha256_mismatch_discards_the_upload(self):
        target = os.path.join(self.dir, "m.bin")
        opened = yield self.ok("upload_open", {"path": target})
        yield self.ok("upload_write", {"upload_id": opened["upload_id"], "offset": 0, "data": b64(b"abc")})
        yield self.error("upload_close", {"upload_id": opened["upload_id"], "sha256": sha(b"abd")}, "400",
                         "SHA-256 mismatch")
        job = self.ws.table.get(opened["job_id"])
        self.assertEqual(job["state"], "FAILED")
        self.assertFalse(os.path.exists(target))
        self.assertEqual([n for n in os.listdir(self.ws.transfers.spool_dir) if n.startswith("ws-")], [])
        again = yield self.ok("upload_open", {"path": target})
        self.assertEqual(again["offset"], 0)
        self.assertNotEqual(again["job_id"], opened["job_id"])

    @defer.inlineCallbacks
    def test_idle_upload_and_download_are_cleaned_up(self):
        clock = task.Clock()
        clock.advance(reactor.seconds())
        self.ws.clock = clock
        target = os.path.join(self.dir, "idle.bin")
        opened = yield self.ok("upload_open", {"path": target, "size": 10})
        yield self.ok("upload_write", {"upload_id": opened["upload_id"], "offset": 0, "data": b64(b"12345")})
        with open(os.path.join(self.dir, "src"), "wb") as f:
            f.write(b"z" * 100)
        dl = yield self.ok("download_open", {"path": os.path.join(self.dir, "src")})
        spools = [n for n in os.listdir(self.ws.transfers.spool_dir) if n.startswith(("ws-", "wsdl-"))]
        self.assertEqual(len(spools), 2, spools)
        clock.advance(wsapi.IDLE_TIMEOUT - 1)
        self.ws.sweep()
        self.assertIn(opened["upload_id"], self.ws.uploads)
        clock.advance(2)
        self.ws.sweep()
        self.assertEqual([n for n in os.listdir(self.ws.transfers.spool_dir) if n.startswith(("ws-", "wsdl-"))], [])
        job = self.ws.table.get(opened["job_id"])
        self.assertEqual(job["state"], "FAILED")
        self.assertIn("partial upload (5 bytes) was discarded", job["error"])
        self.assertEqual(self.ws.table.get(dl["job_id"])["state"], "FAILED")
        yield self.error("upload_write", {"upload_id": opened["upload_id"], "offset": 5, "data": b64(b"6")}, "404",
                         "no open upload")

    @defer.inlineCallbacks
    def test_job_abort_discards_an_open_upload(self):
        opened = yield self.ok("upload_open", {"path": os.path.join(self.dir, "a.bin")})
        yield self.ok("upload_write", {"upload_id": opened["upload_id"], "offset": 0, "data": b64(b"abc")})
        reply = yield self.server.api.handle(self.root, envelope.parse(json.dumps(
            {"namespace": "core", "name": "job_abort", "id": "a", "args": [opened["job_id"]]})))
        self.assertEqual(reply["name"], "response", reply)
        self.assertEqual(self.ws.table.get(opened["job_id"])["outcome"], "killed")
        self.assertNotIn(opened["upload_id"], self.ws.uploads)


class ProgressTests(unittest.TestCase):
    """The progress bar: drawn on a terminal, nothing otherwise."""

    def ctx(self, tty):
        import io

        from sysadmd.client import cpverb
        from sysadmd.client.context import Context

        class Err(io.StringIO):
            def isatty(self):
                return tty

        options = type("Options", (), {"json": False, "timeout": None})()
        return Context(reactor, options, io.StringIO(), Err(), None), cpverb

    def test_bar_on_a_terminal(self):
        ctx, cpverb = self.ctx(True)
        bar = cpverb.Progress(ctx, "f.bin", 4 * MIB, 0)
        bar.update(MIB)
        bar.update(4 * MIB, final=True)
        text = ctx.err.getvalue()
        self.assertIn("\rf.bin [" + "#" * 7 + " " * 23 + "]  25.0% 1.0 MiB/4.0 MiB", text)
        self.assertTrue(text.endswith("\n"))
        self.assertIn("100.0% 4.0 MiB/4.0 MiB", text)

    def test_quiet_otherwise(self):
        ctx, cpverb = self.ctx(False)
        bar = cpverb.Progress(ctx, "f.bin", 4 * MIB, 0)
        bar.update(MIB)
        bar.update(4 * MIB, final=True)
        self.assertEqual(ctx.err.getvalue(), "")


# --- the real client ----------------------------------------------------------------------------

class CpTests(unittest.TestCase):
    """``sysadm cp`` in a child process against a daemon over wss and the local socket."""

    timeout = 90
    pytestmark = pytest.mark.slow

    @defer.inlineCallbacks
    def setUp(self):
        self.dir = short_tempdir(self, "cp")
        self.home = os.path.join(self.dir, "home")
        os.mkdir(self.home)
        cfg = make_config(os.path.join(self.dir, "state"))
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.server = self.running.server
        self.src = os.path.join(self.dir, "src.bin")
        with open(self.src, "wb") as f:
            f.write(os.urandom(BIG))
        self.digest = file_sha(self.src)

    def wss(self, *argv, **kw):
        return run_cli(self.home, "--url", f"127.0.0.1:{self.running.port}", "--user", "root", *argv,
                       SYSADM_PASSWORD="pw", **kw)

    def local(self, *argv, **kw):
        return run_cli(self.home, "--socket", self.running.config.socket, *argv, **kw)

    @defer.inlineCallbacks
    def round_trip(self, sysadm, tag):
        remote = os.path.join(self.dir, f"remote-{tag}.bin")
        up = yield sysadm("cp", self.src, "server:" + remote)
        self.assertEqual(up.code, 0, up.err)
        self.assertEqual(up.out, "")
        self.assertEqual(file_sha(remote), self.digest)
        back = os.path.join(self.dir, f"back-{tag}.bin")
        down = yield sysadm("cp", "server:" + remote, back)
        self.assertEqual(down.code, 0, down.err)
        self.assertEqual(file_sha(back), self.digest)
        self.assertFalse(os.path.exists(back + ".sysadm-partial"))

    def test_round_trip_over_wss(self):
        return self.round_trip(self.wss, "wss")

    def test_round_trip_over_the_local_socket(self):
        return self.round_trip(self.local, "unix")

    def kill_after(self, name, bytes_done, holder):
        """Make the daemon's *name* route SIGKILL the client once *bytes_done* bytes have passed."""
        route = self.server.api.routes[("core", name)]
        original = route.handler

        def handler(session, request):
            args = request.args
            if args.get("offset", 0) >= bytes_done and "proc" in holder:
                holder.pop("proc").transport.signalProcess(signal.SIGKILL)
            return original(session, request)

        route.handler = handler
        self.addCleanup(setattr, route, "handler", original)

    @defer.inlineCallbacks
    def test_upload_resumes_after_the_client_is_killed(self):
        holder = {}
        self.kill_after("upload_write", 6 * MIB, holder)
        remote = os.path.join(self.dir, "resumed.bin")
        first = yield self._run_killed(holder, "cp", self.src, "server:" + remote)
        self.assertEqual(first.code, -signal.SIGKILL, first.err)
        self.assertFalse(os.path.exists(remote))
        received = list(self.running.daemon.chunk_transfers.uploads.values())[0].received
        self.assertGreaterEqual(received, 6 * MIB)
        second = yield self.local("cp", self.src, "server:" + remote)
        self.assertEqual(second.code, 0, second.err)
        self.assertIn(f"resuming the upload to server:{remote} at byte {received} of {BIG}", second.err)
        self.assertEqual(file_sha(remote), self.digest)

    @defer.inlineCallbacks
    def test_download_resumes_after_the_client_is_killed(self):
        holder = {}
        self.kill_after("download_read", 6 * MIB, holder)
        back = os.path.join(self.dir, "back.bin")
        first = yield self._run_killed(holder, "cp", "server:" + self.src, back)
        self.assertEqual(first.code, -signal.SIGKILL, first.err)
        have = os.path.getsize(back + ".sysadm-partial")
        self.assertGreater(have, 0)
        second = yield self.local("cp", "server:" + self.src, back)
        self.assertEqual(second.code, 0, second.err)
        self.assertIn(f"at byte {have} of {BIG}", second.err)
        self.assertEqual(file_sha(back), self.digest)

    def _run_killed(self, holder, *argv):
        from tests.test_client_cli import CliProcess, LAUNCH, cli_env
        import sys

        proto = CliProcess(None)
        holder["proc"] = proto
        reactor.spawnProcess(proto, sys.executable, [sys.executable, "-c", LAUNCH, "--socket",
                                                     self.running.config.socket, *argv],
                             env=cli_env(self.home), path=self.home)
        return proto.done

    @defer.inlineCallbacks
    def test_a_partial_download_of_another_file_is_caught_by_the_sha256(self):
        back = os.path.join(self.dir, "stale.bin")
        with open(back + ".sysadm-partial", "wb") as f:
            f.write(os.urandom(MIB))  # left over from some other file
        first = yield self.local("cp", "server:" + self.src, back)
        self.assertEqual(first.code, 1, first.err)
        self.assertIn("SHA-256", first.err)
        self.assertIn("run the same sysadm cp again", first.err)
        self.assertFalse(os.path.exists(back))
        self.assertFalse(os.path.exists(back + ".sysadm-partial"))
        second = yield self.local("cp", "server:" + self.src, back)
        self.assertEqual(second.code, 0, second.err)
        self.assertEqual(file_sha(back), self.digest)

    @defer.inlineCallbacks
    def test_failures_exit_non_zero_with_a_message(self):
        missing = yield self.local("cp", "server:/nonexistent/file", os.path.join(self.dir, "x"))
        self.assertEqual(missing.code, 1, missing.err)
        self.assertIn("cannot open /nonexistent/file", missing.err)
        nodir = yield self.local("cp", self.src, "server:/nonexistent-dir/x")
        self.assertEqual(nodir.code, 1, nodir.err)
        self.assertIn("does not exist", nodir.err)
        both = yield self.local("cp", "a", "b")
        self.assertEqual(both.code, 2, both.err)
        self.assertIn("server:PATH", both.err)
        self.assertNotIn("Traceback", missing.err + nodir.err + both.err)


class BridgedCpTests(BridgedCli, unittest.TestCase):
    """``sysadm --bridge … --server NAME cp`` through a real bridge."""

    timeout = 120
    pytestmark = pytest.mark.slow

    @defer.inlineCallbacks
    def setUp(self):
        yield BridgedCli.setUp(self)
        self.dir = short_tempdir(self, "bcp")
        self.src = os.path.join(self.dir, "src.bin")
        with open(self.src, "wb") as f:
            f.write(os.urandom(BIG))
        self.digest = file_sha(self.src)

    @defer.inlineCallbacks
    def test_round_trip_through_the_bridge(self):
        listing = yield self.sysadm("--json", "peers")
        self.assertEqual(listing.code, 0, listing.err)
        server_id = json.loads(listing.out)[0]["id"]
        remote = os.path.join(self.dir, "remote.bin")
        up = yield self.sysadm("--server", server_id, "cp", self.src, "server:" + remote, timeout=60)
        self.assertEqual(up.code, 0, up.err)
        self.assertEqual(file_sha(remote), self.digest)
        back = os.path.join(self.dir, "back.bin")
        down = yield self.sysadm("--server", server_id, "cp", "server:" + remote, back, timeout=60)
        self.assertEqual(down.code, 0, down.err)
        self.assertEqual(file_sha(back), self.digest)
