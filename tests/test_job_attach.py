"""Issue 10 item 9 (client): ``sysadm run --detach`` and ``sysadm job attach ID``.

Attach prints a dispatcher job's output from its first byte (read with ``read_output``,
woken by the job's events), follows it while it runs and exits with the job's code.
Real daemon, real jobs, the real client in child processes over the local socket and
through a real bridge; the reader's wake-up logic with a scripted server.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from sysadmd.client.jobwatch import StoredOutputReader
from tests.test_client_bridge import BridgedCli
from tests.test_run_output import MARKER, MISSING, RunCase, seq

pytestmark = pytest.mark.slow

PY = sys.executable
# Prints N numbered lines, a few at a time with pauses, then exits with CODE.
DRIP = ("import sys, time\n"
        "n, code = int(sys.argv[1]), int(sys.argv[2])\n"
        "for i in range(n):\n"
        "    print('line', i, flush=True)\n"
        "    if i % 50 == 49:\n"
        "        time.sleep(0.05)\n"
        "sys.exit(code)\n")


def drip(n: int) -> str:
    return "".join(f"line {i}\n" for i in range(n))


class AttachTests(RunCase):
    def setUp(self):
        d = super().setUp()

        def write(_):
            self.drip = os.path.join(self.home, "drip.py")
            with open(self.drip, "w", encoding="utf-8") as f:
                f.write(DRIP)

        return d.addCallback(write)

    @defer.inlineCallbacks
    def test_detach_prints_the_id_and_attach_follows_a_running_job_from_its_first_byte(self):
        started = yield self.local("run", "--detach", "--id", "dripper", f"{PY} {self.drip} 1000 3")
        self.assertEqual(started.code, 0, started.err)
        self.assertEqual(started.out, "dripper\n")
        self.assertIn("sysadm job attach dripper", started.err)
        yield task.deferLater(reactor, 0.3, lambda: None)  # it has printed some lines already
        attached = yield self.local("job", "attach", "dripper")
        self.assertEqual(attached.code, 3, attached.err)
        self.assertTrue(attached.out == drip(1000), "attach did not print the job's output exactly")
        self.assertIsNone(MARKER.search(attached.out))
        # Attaching to the finished job prints the same and keeps the code.
        again = yield self.local("job", "attach", "dripper")
        self.assertEqual(again.code, 3, again.err)
        self.assertTrue(again.out == drip(1000))

    @defer.inlineCallbacks
    def test_seq_200000_detached_then_attached_over_the_local_socket(self):
        started = yield self.local("--json", "run", "--detach", "--id", "big", "seq 1 200000")
        self.assertEqual(started.code, 0, started.err)
        self.assertEqual(json.loads(started.out), {"job_id": "big"})
        attached = yield self.local("job", "attach", "big")
        self.assertEqual(attached.code, 0, attached.err)
        self.assertEqual(len(attached.out.splitlines()), 200000)
        self.assertTrue(attached.out == seq(1, 200000), "stdout differs from seq's output")

    @defer.inlineCallbacks
    def test_a_chain_that_stops_keeps_order_code_and_says_why(self):
        started = yield self.local("run", "--detach", "--id", "chain", "seq 1 3000", 'sh -c "echo boom; exit 7"',
                                   "seq 1 5")
        self.assertEqual(started.code, 0, started.err)
        attached = yield self.local("job", "attach", "chain")
        self.assertEqual(attached.code, 7, attached.err)
        self.assertTrue(attached.out == seq(1, 3000) + "boom\n", attached.out[-40:])
        self.assertIn("stopped after", attached.err)
        self.assertIn("[2/3]", attached.err)

    @defer.inlineCallbacks
    def test_unknown_job_is_exit_1_with_a_hint(self):
        result = yield self.local("job", "attach", "no-such-job")
        self.assertEqual(result.code, 1)
        self.assertIn("no job no-such-job is pending, running or in the server's history", result.err)
        self.assertNotIn("Traceback", result.err)


class AttachCappedTests(RunCase):
    overrides = {"JOB_OUTPUT_CAP": 1024, "JOB_OUTPUT_FILE_MAX": 8192}

    @defer.inlineCallbacks
    def test_bytes_the_server_did_not_keep_are_counted_on_stderr_only(self):
        result = yield self.local("run", "--id", "capped", "seq 1 100000")
        self.assertEqual(result.code, 0, result.err)
        attached = yield self.local("job", "attach", "capped")
        self.assertEqual(attached.code, 0, attached.err)
        full = seq(1, 100000)
        self.assertIsNone(MARKER.search(attached.out))
        self.assertTrue(full.startswith(attached.out[:8192 - 1024]))
        self.assertEqual(sum(int(n) for n in MISSING.findall(attached.err)), len(full) - len(attached.out))


class BridgeAttachTests(BridgedCli, unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_seq_200000_detached_and_attached_through_the_bridge(self):
        listing = yield self.sysadm("--json", "peers")
        self.assertEqual(listing.code, 0, listing.err)
        hostname = json.loads(listing.out)[0]["hostname"]
        started = yield self.sysadm("--server", hostname, "run", "--detach", "--id", "far",
                                    'sh -c "seq 1 200000; exit 4"')
        self.assertEqual(started.code, 0, started.err)
        self.assertEqual(started.out, "far\n")
        attached = yield self.sysadm("--server", hostname, "job", "attach", "far", timeout=90)
        self.assertEqual(attached.code, 4, attached.err)
        self.assertEqual(len(attached.out.splitlines()), 200000)
        self.assertTrue(attached.out == seq(1, 200000), "stdout differs from seq's output")


class ReaderWakeTests(unittest.TestCase):
    """The reader waits for an event (or the poll interval) only when a read brought nothing,
    and an event that came between a read and the wait is not lost."""

    def test_an_event_during_the_read_is_not_lost_and_the_poll_is_the_fallback(self):
        clock = task.Clock()
        out = []
        replies = [
            {"missing": 0, "data": "a\n", "next_offset": 2, "size": 2, "finished": False, "job_state": "running"},
            {"missing": 0, "data": "", "next_offset": 2, "size": 2, "finished": False, "job_state": "running"},
            {"missing": 0, "data": "", "next_offset": 2, "size": 2, "finished": False, "job_state": "running"},
            {"missing": 3, "data": "b\n", "next_offset": 7, "size": 7, "finished": True, "job_state": "finished"},
        ]
        asked = []

        async def fetch(index, offset, length):
            asked.append((index, offset, clock.seconds()))
            reply = replies.pop(0)
            if len(asked) == 2:
                reader.nudge()  # an event arrives while this read is under way
            return reply

        async def sleep(seconds, wake):
            d = defer.Deferred()
            clock.callLater(seconds, lambda: d.called or d.callback(None))
            wake.addCallback(lambda _: d.called or d.callback(None))
            await d

        reader = StoredOutputReader("j", ["seq 1 2"], fetch, lambda s, t: out.append((s, t)), sleep, poll=2.0)
        done = defer.ensureDeferred(reader.read_all())
        self.assertEqual([a[:2] for a in asked], [(0, 0), (0, 2), (0, 2)])  # no wait after the nudged read
        self.assertFalse(done.called)
        clock.advance(1.9)
        self.assertEqual(len(asked), 3)
        clock.advance(0.1)  # no event: the poll interval looks again
        self.assertTrue(done.called)
        self.assertEqual(out, [("out", "a\n"), ("err", "[sysadm: 3 bytes of the output of `seq 1 2` are missing here: "
                                                       "the server did not keep them]\n"), ("out", "b\n")])
