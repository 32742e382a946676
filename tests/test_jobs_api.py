"""core/get_jobs, core/job_abort, core/job_wait, core/job_log and "jobs" events, end to end:
a real daemon, real TLS WebSockets and the local socket on loopback, real processes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import time

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.wire import envelope
from sysadmd.session import Identity
from tests.support import FakePasswords, RecordingChannel, make_config, open_client, short_tempdir, start_daemon

pytestmark = pytest.mark.slow

PY = sys.executable


class JobsApiTests(unittest.TestCase):
    timeout = 40

    @defer.inlineCallbacks
    def setUp(self):
        cfg = make_config(short_tempdir(self), JOB_KILL_GRACE=1, JOB_WORKDIR="/tmp")
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.client = yield open_client(self, self.running)
        auth = yield self.client.call("rpc", "auth", {"username": "root", "password": "pw"})
        self.assertEqual(auth["name"], "response", auth)

    @defer.inlineCallbacks
    def core(self, name, args, client=None):
        reply = yield (client or self.client).call("core", name, args)
        return reply

    @defer.inlineCallbacks
    def ok(self, name, args, client=None):
        reply = yield self.core(name, args, client)
        self.assertEqual(reply["name"], "response", reply)
        return reply["args"]

    @defer.inlineCallbacks
    def start_job(self, job_id, commands):
        reply = yield self.client.call("rpc", "dispatcher", {"action": "run", job_id: commands})
        self.assertEqual(reply["args"]["started"], [job_id], reply)
        [job] = yield self.ok("get_jobs", [[["dispatcher_id", "=", job_id]], {"order_by": ["-id"], "limit": 1}])
        return job

    @defer.inlineCallbacks
    def test_seed_query_by_id_and_wait_for_the_finished_job(self):
        job = yield self.start_job("hello", ["echo hello", 'sh -c "exit 4"'])
        done = yield self.ok("job_wait", [job["id"], {"timeout": 20}])
        self.assertEqual((done["state"], done["outcome"], done["return_codes"]), ("FAILED", "failed", [0, 4]))
        self.assertEqual(done["error"], "command 2 ('sh -c \"exit 4\"') exited with code 4")
        [same] = yield self.ok("get_jobs", [[["id", "=", job["id"]]]])  # the seed's own request
        self.assertEqual(same, done)
        self.assertEqual(same["owner"], {"user": "root", "via": "password", "from": "127.0.0.1"})
        self.assertEqual((same["method"], same["dispatcher_id"], same["commands"]),
                         ("dispatcher.run", "hello", ["echo hello", 'sh -c "exit 4"']))
        self.assertLessEqual(same["time_created"], same["time_started"])
        self.assertLessEqual(same["time_started"], same["time_finished"])
        self.assertEqual(same["logs_excerpt"], "hello\n")
        # Upstream's history still says the same job finished, unchanged.
        history = yield self.client.call("rpc", "dispatcher", {"action": "history", "job_id": "hello"})
        self.assertEqual(history["args"]["history"][0]['return_codes/sh -c "exit 4"'], "4")

    @defer.inlineCallbacks
    def test_filters_options_count_get_select_and_bad_filters(self):
        ids = []
        for i in range(4):
            job = yield self.start_job(f"q{i}", ["true"] if i % 2 == 0 else ["false"])
            ids.append(job["id"])
        for job_id in ids:
            yield self.ok("job_wait", {"id": job_id, "timeout": 20})
        failed = yield self.ok("get_jobs", {"filters": [["state", "=", "FAILED"]], "options": {"order_by": ["-id"]}})
        self.assertEqual([j["id"] for j in failed], [ids[3], ids[1]])
        page = yield self.ok("get_jobs", [[["id", "in", ids]], {"order_by": ["id"], "limit": 2, "offset": 1}])
        self.assertEqual([j["id"] for j in page], ids[1:3])
        count = yield self.ok("get_jobs", [[["outcome", "=", "succeeded"], ["id", "in", ids]], {"count": True}])
        self.assertEqual(count, 2)
        one = yield self.ok("get_jobs", [[["id", "=", ids[0]]], {"get": True, "select": ["id", "state", "owner.user"]}])
        self.assertEqual(one, {"id": ids[0], "state": "SUCCESS", "owner": {"user": "root"}})
        missing = yield self.core("get_jobs", [[["id", "=", 10 ** 9]], {"get": True}])
        self.assertEqual(missing["args"]["code"], "404")
        for args, part in [([[["id", "=", 1], ["colour", "=", "red"]]], "filters[1][0]: unknown field 'colour'"),
                           ([[["state", "~~", "x"]]], "filters[0][1]: unknown operator"),
                           ([[], {"order_by": ["-nope"]}], "options.order_by[0]"),
                           ([[], {"limit": 5000}], "options.limit"),
                           ([[], {"select": ["secret"]}], "options.select"),
                           ({"filter": []}, "unknown key 'filter'")]:
            bad = yield self.core("get_jobs", args)
            self.assertEqual(bad["name"], "error", args)
            self.assertEqual(bad["args"]["code"], "400", bad)
            self.assertIn(part, bad["args"]["detail"])

    @defer.inlineCallbacks
    def test_abort_kills_a_running_job_and_a_second_abort_is_a_conflict(self):
        job = yield self.start_job("sleeper", ["sleep 30"])
        aborted = yield self.ok("job_abort", [job["id"]])
        self.assertEqual(aborted, {"id": job["id"], "aborted": "killed"})
        done = yield self.ok("job_wait", [job["id"], {"timeout": 20}])
        self.assertEqual((done["state"], done["outcome"], done["return_codes"]), ("ABORTED", "killed", [None]))
        again = yield self.core("job_abort", [job["id"]])
        self.assertEqual(again["args"]["code"], "409", again)
        nothing = yield self.core("job_abort", [10 ** 9])
        self.assertEqual(nothing["args"]["code"], "404", nothing)

    @defer.inlineCallbacks
    def test_limited_users_may_query_and_read_but_not_abort(self):
        job = yield self.start_job("limited-target", ["sleep 30"])
        server = self.running.server
        channel = RecordingChannel()
        session = server.open_session("test", "limited-peer", channel, identity=Identity("op", False, "password"),
                                      timers=False)
        self.addCleanup(session.lost)

        def call(name, args):
            return server.api.handle(session, envelope.parse(json.dumps(
                {"namespace": "core", "name": name, "id": "x", "args": args})))

        listed = yield call("get_jobs", [[["id", "=", job["id"]]]])
        self.assertEqual(listed["args"][0]["state"], "RUNNING")
        log = yield call("job_log", {"id": job["id"]})
        self.assertEqual(log["name"], "response", log)
        refused = yield call("job_abort", [job["id"]])
        self.assertEqual(refused["args"]["code"], "403", refused)
        self.assertIn("full access", refused["args"]["detail"])
        still = yield self.ok("get_jobs", [[["id", "=", job["id"]]], {"get": True}])
        self.assertEqual(still["state"], "RUNNING")
        yield self.ok("job_abort", [job["id"]])

    @defer.inlineCallbacks
    def test_wait_times_out_with_the_unfinished_job(self):
        job = yield self.start_job("slow", ["sleep 30"])
        started = time.monotonic()
        still = yield self.ok("job_wait", [job["id"], {"timeout": 0.3}])
        self.assertGreaterEqual(time.monotonic() - started, 0.25)
        self.assertEqual(still["state"], "RUNNING")
        bad = yield self.core("job_wait", [job["id"], {"timeout": -1}])
        self.assertIn("'timeout'", bad["args"]["detail"])
        yield self.ok("job_abort", [job["id"]])

    @defer.inlineCallbacks
    def read_all(self, job_id, follow, length=65536):
        data, offset = b"", 0
        while True:
            piece = yield self.ok("job_log", {"id": job_id, "offset": offset, "length": length, "follow": follow,
                                              "timeout": 10})
            self.assertEqual(piece["offset"], offset)
            data += base64.b64decode(piece["data"])
            offset = piece["next_offset"]
            if piece["eof"]:
                return data, piece
            if not follow and not piece["data"]:
                return data, piece

    @defer.inlineCallbacks
    def test_log_follow_fetches_every_byte_of_a_running_job(self):
        script = ("import sys, time\n"
                  "for i in range(40):\n"
                  "    sys.stdout.buffer.write(bytes(range(256)) + str(i).encode() + b'\\n'); sys.stdout.flush()\n"
                  "    time.sleep(0.02)\n")
        expected = b"".join(bytes(range(256)) + str(i).encode() + b"\n" for i in range(40))
        job = yield self.start_job("binary", [f"{PY} -c \"{script}\""])
        data, last = yield self.read_all(job["id"], follow=True, length=1000)
        self.assertEqual(hashlib.sha256(data).hexdigest(), hashlib.sha256(expected).hexdigest())
        self.assertEqual(len(data), len(expected))
        self.assertTrue(last["finished"])
        self.assertEqual(last["size"], len(expected))

    @defer.inlineCallbacks
    def test_log_of_200000_lines_is_complete(self):
        job = yield self.start_job("seq", ["seq 1 200000"])
        yield self.ok("job_wait", [job["id"], {"timeout": 30}])
        data, last = yield self.read_all(job["id"], follow=False, length=1024 * 1024)
        self.assertEqual(data, "".join(f"{i}\n" for i in range(1, 200001)).encode())
        self.assertTrue(last["eof"])
        text = yield self.ok("job_log", {"id": job["id"], "offset": 0, "length": 10, "encoding": "utf-8"})
        self.assertEqual((text["data"], text["next_offset"]), ("1\n2\n3\n4\n5\n", 10))
        past = yield self.core("job_log", {"id": job["id"], "offset": last["size"] + 1})
        self.assertIn("past the end", past["args"]["detail"])

    @defer.inlineCallbacks
    def test_jobs_events_on_creation_and_every_state_change(self):
        events = []
        self.client.event_listeners.append(lambda m: events.append(m["args"]) if m.get("name") == "jobs" else None)
        sub = yield self.client.call("events", "subscribe", ["jobs"])
        self.assertEqual(sub["args"], {"subscribe": "jobs"})
        job = yield self.start_job("evented", ["true"])
        yield self.ok("job_wait", [job["id"], {"timeout": 20}])
        mine = [(e["kind"], e["job"]["state"]) for e in events if e["job"]["id"] == job["id"]]
        self.assertEqual(mine[0], ("added", "WAITING"))
        self.assertIn(("changed", "RUNNING"), mine)
        self.assertEqual(mine[-1], ("changed", "SUCCESS"))
        self.assertEqual([e for e in events if e["job"]["id"] == job["id"]][-1]["job"]["outcome"], "succeeded")

    @defer.inlineCallbacks
    def test_progress_from_the_progress_fd_is_stored_and_sent_as_events(self):
        events = []
        self.client.event_listeners.append(lambda m: events.append(m["args"]) if m.get("name") == "jobs" else None)
        yield self.client.call("events", "subscribe", ["jobs"])
        script = os.path.join(short_tempdir(self), "progress.sh")
        with open(script, "w") as f:
            f.write('echo "25 unpacking" >&$SYSADM_PROGRESS_FD; sleep 0.4\n'
                    'echo "pmstatus:libc6:amd64:80:Installing libc6" >&$SYSADM_PROGRESS_FD; sleep 0.4\n')
        job = yield self.start_job("progressing", [f"sh {script}"])
        done = yield self.ok("job_wait", [job["id"], {"timeout": 20}])
        self.assertEqual(done["outcome"], "succeeded", done)
        self.assertEqual((done["progress"]["percent"], done["progress"]["description"]), (80.0, "Installing libc6"))
        [stored] = yield self.ok("get_jobs", [[["id", "=", job["id"]], ["progress.percent", ">=", 80]]])
        self.assertEqual(stored["progress"], done["progress"])
        seen = [e["job"]["progress"]["percent"] for e in events
                if e["job"]["id"] == job["id"] and e["kind"] == "changed"]
        self.assertIn(25.0, seen)  # each report reached subscribers while the job ran
        self.assertIn(80.0, seen)

    @defer.inlineCallbacks
    def test_local_socket_owner_is_local_uid(self):
        unix = yield open_client(self, self.running, unix=True)
        reply = yield unix.call("rpc", "dispatcher", {"action": "run", "local-job": "true"})
        if reply["name"] != "response":
            raise unittest.SkipTest("the local socket gives this uid no full access")
        [job] = yield self.ok("get_jobs", [[["dispatcher_id", "=", "local-job"]]], client=unix)
        self.assertEqual(job["owner"]["via"], "local")
        self.assertTrue(job["owner"]["from"].startswith("uid:"), job["owner"])
        mine = yield self.ok("get_jobs", [[["owner.via", "=", "local"]], {"count": True}], client=unix)
        self.assertEqual(mine, 1)
