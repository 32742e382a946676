"""Issue 8 item 6: ``sysadm run`` prints every byte a job printed, in order.

Events carry at most ``JOB_OUTPUT_CAP`` bytes per update; the client reads what they left
out through ``{"action":"read_output"}``.  Real daemon, real jobs, the real client in a
child process over the local socket (as in :mod:`tests.test_client_cli`), plus the new
action's bounds through the daemon's request pipeline and the follower with a fake server.
"""

from __future__ import annotations

import pytest
import json
import os
import re
import subprocess
import sys

from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.wire import envelope
from sysadmd.auth.rights import Rights
from sysadmd.client.jobwatch import FetchUnavailable, JobFollower
from sysadmd.wire.envelope import Request
from sysadmd.session import Identity
from tests.test_client_bridge import BridgedCli
from tests.support import FakePasswords, RecordingChannel, make_config, short_tempdir, start_daemon
from tests.test_client_cli import run_cli
from tests.test_dispatcher_durability import eventually
from tests.test_dispatcher_wss import sleep

# Starts real daemons or child processes: skipped by ./scripts/test.sh -m "not slow".
pytestmark = pytest.mark.slow


PY = sys.executable
MARKER = re.compile(r"bytes (cut|not shown|of the output)")
MISSING = re.compile(r"\[sysadm: (\d+) bytes of the output of `[^`]*` are missing here")

# Multi-byte characters of every length, lines of varying width: replies must never split one.
WIDE = ("import sys\nout = sys.stdout.buffer\n"
        "for i in range(int(sys.argv[1])):\n"
        "    out.write(('%d a\u00e9\u20ac\U0001d11e ' % i + '\u00fc' * (i % 7) + '\\n').encode())\n")


def seq(first: int, last: int) -> str:
    return "".join(f"{i}\n" for i in range(first, last + 1))


def wide(n: int) -> str:
    return "".join(f"{i} a\u00e9\u20ac\U0001d11e " + "\u00fc" * (i % 7) + "\n" for i in range(n))


class RunCase(unittest.TestCase):
    timeout = 90
    overrides: dict = {}

    @defer.inlineCallbacks
    def setUp(self):
        if Rights(("wheel", "sudo"), ()).for_uid(os.getuid()) is None:
            raise unittest.SkipTest("the test user has no full access through the local socket")
        self.home = short_tempdir(self, "ro")
        cfg = make_config(short_tempdir(self), **self.overrides)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.script = os.path.join(self.home, "wide.py")
        with open(self.script, "w", encoding="utf-8") as f:
            f.write(WIDE)

    def local(self, *argv, **kw):
        kw.setdefault("timeout", 60)
        return run_cli(self.home, "--socket", self.running.config.socket, *argv, **kw)

    def assertNoMarker(self, out: str) -> None:
        self.assertIsNone(MARKER.search(out), "a note was written to stdout")


class CompleteOutputTests(RunCase):
    @defer.inlineCallbacks
    def test_seq_200000_prints_every_line(self):
        result = yield self.local("run", "seq 1 200000")
        self.assertEqual(result.code, 0, result.err)
        expected = subprocess.run(["seq", "1", "200000"], capture_output=True, text=True, check=True).stdout
        self.assertEqual(len(result.out.splitlines()), 200000)
        self.assertTrue(result.out == expected, f"stdout differs from seq's output at byte "
                        f"{next((i for i, (a, b) in enumerate(zip(result.out, expected)) if a != b), len(result.out))}")
        self.assertNoMarker(result.out)
        self.assertNotIn("missing", result.err)

    @defer.inlineCallbacks
    def test_a_chain_prints_each_command_completely_in_order(self):
        result = yield self.local("run", "--id", "big-chain", "seq 1 150000", f"{PY} {self.script} 40000",
                                  "seq 150001 300000")
        self.assertEqual(result.code, 0, result.err)
        expected = seq(1, 150000) + wide(40000) + seq(150001, 300000)
        self.assertEqual(len(result.out), len(expected))
        self.assertTrue(result.out == expected, "stdout is not the chain's output in order")
        self.assertIn("[2/3]", result.err)
        self.assertIn("[3/3] seq 150001 300000", result.err)
        self.assertNoMarker(result.out)


class CappedFileTests(RunCase):
    overrides = {"JOB_OUTPUT_CAP": 1024, "JOB_OUTPUT_FILE_MAX": 8192}

    @defer.inlineCallbacks
    def test_bytes_the_server_dropped_are_counted_on_stderr_never_on_stdout(self):
        result = yield self.local("run", "--id", "capped", "seq 1 100000")
        self.assertEqual(result.code, 0, result.err)
        full = seq(1, 100000)
        out = result.out
        self.assertNoMarker(out)
        # A head, then (after the hole) the tail: the head is at least what the file keeps.
        head = len(os.path.commonprefix([out, full]))
        self.assertGreaterEqual(head, 8192 - 1024)
        self.assertLess(head, len(full))
        self.assertTrue(full.endswith(out[head:]), "what follows the head is not the output's tail")
        self.assertGreaterEqual(len(out) - head, 1000)
        missing = [int(n) for n in MISSING.findall(result.err)]
        self.assertTrue(missing, result.err)
        self.assertEqual(sum(missing), len(full) - len(out))
        # The stored head and tail as history counts them.
        history = yield self.local("--json", "jobs", "--all")
        self.assertEqual(history.code, 0, history.err)


class ReadOutputApiTests(unittest.TestCase):
    """The action through the daemon's request pipeline, as a caller of any transport."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.running = yield start_daemon(self, make_config(short_tempdir(self), SOCKET="none", JOB_OUTPUT_CAP=1024,
                                                            JOB_OUTPUT_FILE_MAX=8192))
        self.server = self.running.server
        self.dispatcher = self.running.daemon.dispatcher
        self.state_dir = self.running.config.state_dir
        self.full = self.session(Identity("root", True, "peer-uid"))
        self.limited = self.session(Identity("bob", False, "password"))

    def session(self, identity):
        session = self.server.open_session("test", "local", RecordingChannel(), identity=identity, timers=False)
        self.addCleanup(session.lost)
        return session

    @defer.inlineCallbacks
    def call(self, args, session=None):
        reply = yield self.server.api.handle(session or self.full, Request("rpc", "dispatcher", "r", args))
        envelope.encode(reply).encode("utf-8")
        return reply["args"]

    @defer.inlineCallbacks
    def read(self, job_id, command=0, **more):
        args = yield self.call(dict({"action": "read_output", "job_id": job_id, "command": command}, **more))
        self.assertNotIn("code", args, args)
        return args

    @defer.inlineCallbacks
    def run_job(self, job_id, *commands):
        started = yield self.call({"action": "run", job_id: list(commands)})
        self.assertEqual(started, {"started": [job_id]})
        yield eventually(lambda: self.dispatcher.history([job_id]), what=f"job {job_id}")

    def write_script(self, name, text):
        path = os.path.join(self.state_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    @defer.inlineCallbacks
    def assertError(self, args, code, *words):
        reply = yield self.call(dict({"action": "read_output"}, **args))
        self.assertEqual(reply.get("code"), code, reply)
        for word in words:
            self.assertIn(word, reply["detail"])

    @defer.inlineCallbacks
    def test_every_field_is_checked_with_a_clear_400(self):
        yield self.run_job("v", "echo hello", "echo bye")
        yield self.assertError({}, "400", "'job_id'")
        yield self.assertError({"job_id": 5, "command": 0}, "400", "'job_id'", "a number")
        yield self.assertError({"job_id": ""}, "400", "'job_id'")
        yield self.assertError({"job_id": "v"}, "400", "missing 'command'")
        for bad in (-1, True, 1.5, "0", None, [0]):
            yield self.assertError({"job_id": "v", "command": bad}, "400", "'command'")
        yield self.assertError({"job_id": "v", "command": 2}, "400", "'command'", "from 0 to 1", "got 2")
        for bad in (-1, False, 2.0, "3"):
            yield self.assertError({"job_id": "v", "command": 0, "offset": bad}, "400", "'offset'")
        yield self.assertError({"job_id": "v", "command": 0, "offset": 7}, "400", "'offset'", "past the end")
        for bad in (0, 262145, 10 ** 12, "64", 1.0):
            yield self.assertError({"job_id": "v", "command": 0, "length": bad}, "400", "'length'",
                                   "from 1 to 262144")
        yield self.assertError({"job_id": "nope", "command": 0}, "404", "'nope'")
        yield self.assertError({"job_id": "no\ud800pe", "command": 0}, "404")
        reply = yield self.read("v", 1)
        self.assertEqual((reply["data"], reply["next_offset"], reply["size"], reply["finished"]), ("bye\n", 4, 4, True))
        self.assertEqual(reply["job_state"], "finished")

    @defer.inlineCallbacks
    def test_limited_users_may_read_like_history(self):
        yield self.run_job("lim", "echo visible")
        reply = yield self.call({"action": "read_output", "job_id": "lim", "command": 0}, self.limited)
        self.assertEqual(reply["data"], "visible\n")
        refused = yield self.call({"action": "run", "x": "true"}, self.limited)
        self.assertEqual(refused["code"], "403")

    @defer.inlineCallbacks
    def test_small_reads_never_split_a_character_and_add_up_to_the_output(self):
        script = self.write_script("wide.py", WIDE)
        yield self.run_job("w", f"{PY} {script} 300")
        expected = wide(300)
        # The file keeps 7168 bytes of the head, then only the tail: read the head only.
        head = expected.encode()[:7168].decode("utf-8", "ignore")
        for length in (1, 2, 3, 5, 4096):
            offset, pieces = 0, []
            while offset < len(head.encode()):
                reply = yield self.read("w", length=length, offset=offset)
                self.assertEqual(reply["missing"], 0)
                self.assertLessEqual(len(reply["data"].encode()), max(length, 4))
                self.assertGreater(reply["next_offset"], offset)
                self.assertNotIn("\ufffd", reply["data"])
                pieces.append(reply["data"])
                offset = reply["next_offset"]
            self.assertEqual("".join(pieces)[:len(head)], head)

    @defer.inlineCallbacks
    def test_a_gap_is_skipped_and_counted_and_the_tail_follows(self):
        yield self.run_job("gap", "seq 1 20000")
        full = seq(1, 20000).encode()
        first = yield self.read("gap", length=262144)
        self.assertEqual(first["data"].encode(), full[:7168])
        self.assertEqual((first["missing"], first["next_offset"], first["size"]), (0, 7168, len(full)))
        self.assertEqual(first["cut"], len(full) - 8192)
        second = yield self.read("gap", offset=7168)
        self.assertEqual(second["missing"], len(full) - 8192)
        self.assertEqual(second["data"].encode(), full[-1024:])
        self.assertEqual(second["next_offset"], len(full))
        end = yield self.read("gap", offset=len(full))
        self.assertEqual((end["data"], end["missing"], end["next_offset"], end["finished"]), ("", 0, len(full), True))

    @defer.inlineCallbacks
    def test_characters_cut_by_a_gap_are_counted_missing_not_replaced(self):
        script = self.write_script("wide.py", WIDE)
        yield self.run_job("wgap", f"{PY} {script} 2000")
        full = wide(2000)
        offset, pieces, missing = 0, [], 0
        while True:
            reply = yield self.read("wgap", offset=offset, length=4000)
            if reply["next_offset"] == offset:
                break
            missing += reply["missing"]
            pieces.append(reply["data"])
            offset = reply["next_offset"]
        text = "".join(pieces)
        self.assertEqual(offset, len(full.encode()))
        self.assertNotIn("\ufffd", text)
        self.assertEqual(len(text.encode()) + missing, len(full.encode()))
        head = len(os.path.commonprefix([text, full]))
        self.assertTrue(full.startswith(text[:head]) and full.endswith(text[head:]))
        self.assertGreater(missing, 0)

    @defer.inlineCallbacks
    def test_invalid_bytes_become_replacement_characters_at_the_end_of_a_finished_command(self):
        script = self.write_script("bad.py", "import sys\nsys.stdout.buffer.write(b'ok\\xff\\xe2\\x82')\n")
        yield self.run_job("bad", f"{PY} {script}")
        reply = yield self.read("bad")
        self.assertEqual((reply["data"], reply["next_offset"], reply["size"]), ("ok\ufffd\ufffd", 5, 5))

    @defer.inlineCallbacks
    def test_a_running_command_is_read_as_it_goes_and_a_half_character_waits(self):
        script = self.write_script("slow.py", "import sys, time\nsys.stdout.buffer.write(b'ab\\xe2\\x82')\n"
                                              "sys.stdout.flush()\ntime.sleep(30)\n")
        started = yield self.call({"action": "run", "slow": [f"{PY} {script}", "echo next"]})
        self.assertEqual(started, {"started": ["slow"]})
        for _ in range(200):
            reply = yield self.read("slow")
            if reply["size"] == 4:
                break
            yield sleep(0.05)
        self.assertEqual((reply["data"], reply["next_offset"], reply["finished"], reply["job_state"]),
                         ("ab", 2, False, "running"))
        later = yield self.read("slow", 1)
        self.assertEqual((later["data"], later["size"], later["finished"]), ("", 0, False))
        yield self.call({"action": "kill", "job_id": "slow"})
        yield eventually(lambda: self.dispatcher.history(["slow"]), what="the killed job")
        done = yield self.read("slow", offset=2)
        self.assertEqual((done["data"], done["next_offset"], done["finished"]), ("\ufffd", 4, True))


class FakeServer:
    """read_output over an in-memory output (with an optional hole), for the follower."""

    def __init__(self, outputs, holes=None):
        self.outputs = [o.encode() for o in outputs]
        self.holes = holes or {}  # command -> (start, end) not kept
        self.calls = []

    async def fetch(self, index, offset, length):
        self.calls.append((index, offset, length))
        data = self.outputs[index]
        missing = 0
        hole = self.holes.get(index)
        if hole and hole[0] <= offset < hole[1]:
            missing, offset = hole[1] - offset, hole[1]
        end = min(len(data), offset + length)
        if hole and offset < hole[0] < end:
            end = hole[0]
        return {"missing": missing, "data": data[offset:end].decode(), "next_offset": end, "size": len(data),
                "finished": True, "cut": 0}


def running(cmds, current, delta, done=None):
    args = {"process_id": "j", "state": "running", "cmd_list": cmds, "current_cmd": current, current: delta}
    for cmd, (text, code) in (done or {}).items():
        args[cmd] = text
        args[f"return_codes/{cmd}"] = code
    return args


def finished(cmds, logs):
    args = {"process_id": "j", "state": "finished", "cmd_list": cmds}
    for cmd, (text, code) in logs.items():
        args[cmd] = text
        args[f"return_codes/{cmd}"] = code
    return args


class FollowerTests(unittest.TestCase):
    def play(self, follower, events, server=None):
        written = []

        async def go():
            for args in events:
                for item in follower.feed(args):
                    if item[0] == "fetch":
                        fetch = server.fetch if server else refuse
                        await follower.resolve(item[1], fetch, lambda *w: written.append(w))
                    else:
                        written.append(item)

        self.successResultOf(defer.ensureDeferred(go()))
        return ("".join(t for s, t in written if s == "out"), "".join(t for s, t in written if s == "err"))

    def test_a_cut_delta_fills_its_hole_from_the_stored_output(self):
        output = "".join(f"line {i}\n" for i in range(100))
        server = FakeServer([output])
        note = "[… 600 bytes cut; full output in the job log]\n"
        cut_at = 10 + 600
        out, err = self.play(JobFollower("j", ["a"]), [
            running(["a"], "a", output[:10]),
            running(["a"], "a", note + output[cut_at:cut_at + 30]),
            finished(["a"], {"a": (f"[… {len(output) - 50} bytes cut; full output in the job log]\n" + output[-50:],
                                   "0")}),
        ], server)
        self.assertEqual(out, output)
        self.assertEqual(server.calls, [(0, 10, 600), (0, 640, len(output) - 50 - 640)])
        self.assertEqual(err, "")

    def test_replacement_characters_switch_to_reading_from_the_server(self):
        output = "abc\ufffddef" * 50
        server = FakeServer([output])
        out, _ = self.play(JobFollower("j", ["a"]), [
            running(["a"], "a", output[:8]),
            finished(["a"], {"a": (output, "0")}),
        ], server)
        self.assertEqual(out, output)
        self.assertTrue(server.calls)

    def test_bytes_the_server_lost_are_counted_on_stderr(self):
        output = "0123456789" * 100
        server = FakeServer([output], holes={0: (200, 900)})
        note = "[… 900 bytes cut; 700 of them are not in the job log either]\n"
        out, err = self.play(JobFollower("j", ["a"]), [finished(["a"], {"a": (note + output[900:], "0")})], server)
        self.assertEqual(out, output[:200] + output[900:])
        self.assertIn("700 bytes of the output of `a` are missing here", err)

    def test_a_server_without_read_output_gets_notes_on_stderr_only(self):
        note = "[… 100 bytes cut; full output in the job log]\n"
        follower = JobFollower("j", ["a"])
        out, err = self.play(follower, [running(["a"], "a", "head\n"), running(["a"], "a", note + "xyz\n"),
                                        finished(["a"], {"a": (note.replace("100", "105") + "xyz\nend\n", "0")})])
        self.assertEqual(out, "head\nxyz\nend\n")
        self.assertNotIn("cut", out)
        self.assertIn("cannot read job j's stored output (no read_output here)", err)
        self.assertIn("100 bytes of the output of `a` not shown here", err)
        self.assertFalse(follower.can_fetch)


async def refuse(index, offset, length):
    raise FetchUnavailable("no read_output here")


class BridgeRunTests(BridgedCli, unittest.TestCase):
    """The same through a real bridge: the stored output is read over the relayed session."""

    timeout = 120

    @defer.inlineCallbacks
    def test_seq_200000_through_the_bridge(self):
        listing = yield self.sysadm("--json", "peers")
        self.assertEqual(listing.code, 0, listing.err)
        hostname = json.loads(listing.out)[0]["hostname"]
        pinned = yield self.sysadm("--server", hostname, "identify")  # first use pins the server
        self.assertEqual(pinned.code, 0, pinned.err)
        result = yield self.sysadm("--server", hostname, "run", "seq 1 200000", timeout=90)
        self.assertEqual(result.code, 0, result.err)
        self.assertEqual(len(result.out.splitlines()), 200000)
        self.assertTrue(result.out == seq(1, 200000), "stdout differs from seq's output")
