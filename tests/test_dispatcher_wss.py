"""rpc/dispatcher end to end: a real daemon over wss (and REST), real processes."""

from __future__ import annotations

import pytest
import base64
import json
import os
import signal
import sys
import time

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from sysadmd.wire import envelope
from sysadmd.session import Identity
from tests.support import (FakePasswords, RecordingChannel, http_client, make_config, open_client, short_tempdir,
                           start_daemon)

PY = sys.executable


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


class EventLog:
    """Dispatcher events seen by one client, with a wait for a job's finished event."""

    def __init__(self, client):
        self.events = []
        self._waiting = {}
        client.event_listeners.append(self._got)

    def _got(self, message):
        if message.get("name") != "dispatcher":
            return
        args = message["args"]
        self.events.append(args)
        if args.get("state") == "finished":
            for d in self._waiting.pop(args["process_id"], []):
                d.callback(args)

    def of(self, job_id):
        return [e for e in self.events if e.get("process_id") == job_id]

    def finished(self, job_id) -> defer.Deferred:
        done = [e for e in self.of(job_id) if e["state"] == "finished"]
        if done:
            return defer.succeed(done[0])
        d = defer.Deferred()
        self._waiting.setdefault(job_id, []).append(d)
        return d

    @defer.inlineCallbacks
    def output_line(self, job_id, timeout=10.0):
        """The first complete line of output a running job reported."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.of(job_id):
                cmd = e.get("current_cmd")
                if cmd and "\n" in e.get(cmd, ""):
                    return e[cmd].split("\n")[0]
            yield sleep(0.05)
        raise AssertionError(f"no output from {job_id}")


@defer.inlineCallbacks
def group_gone(pgid: int, timeout: float = 6.0) -> defer.Deferred:
    """Wait until no process of group *pgid* exists (zombies are reaped by PID 1 slowly)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        yield sleep(0.1)
    return False


def kill_group_quietly(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.mark.slow  # real daemons or child processes
class DispatcherOverWssTests(unittest.TestCase):
    timeout = 40

    @defer.inlineCallbacks
    def setUp(self):
        cfg = make_config(short_tempdir(self), MAX_PARALLEL_JOBS=2, JOB_KILL_GRACE=2, JOB_WORKDIR="/tmp")
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.client = yield open_client(self, self.running)
        auth = yield self.client.call("rpc", "auth", {"username": "root", "password": "pw"})
        self.assertEqual(auth["name"], "response")
        self.log = EventLog(self.client)
        sub = yield self.client.call("events", "subscribe", ["dispatcher"])
        self.assertEqual(sub["name"], "response")

    def dispatcher(self, args):
        return self.client.call("rpc", "dispatcher", args)

    @defer.inlineCallbacks
    def test_chain_stops_at_first_failure_with_event_sequence(self):
        ticker = f"{PY} -c \"import time\nfor i in range(6): print('tick', i, flush=True); time.sleep(0.15)\""
        chain = ["echo one", ticker, "false", "echo never"]
        reply = yield self.dispatcher({"action": "run", "chain": chain})
        self.assertEqual(reply["args"], {"started": ["chain"]})
        finished = yield self.log.finished("chain")
        events = self.log.of("chain")
        states = [e["state"] for e in events]
        self.assertEqual(states[0], "pending")
        self.assertEqual(states[-1], "finished")
        self.assertEqual(states.count("finished"), 1)
        self.assertEqual(set(states[1:-1]), {"running"})
        starts = [e for e in events if e["state"] == "running" and e.get(e["current_cmd"]) == ""]
        self.assertEqual([e["current_cmd"] for e in starts], ["echo one", ticker, "false"])
        self.assertEqual(starts[1]["echo one"], "one\n")
        self.assertEqual(starts[1]["return_codes/echo one"], "0")
        self.assertNotIn(f"return_codes/{ticker}", starts[1])
        updates = [e for e in events if e["state"] == "running" and e["current_cmd"] == ticker and e[ticker]]
        self.assertGreaterEqual(len(updates), 2)  # streamed while it ran, not all at the end
        self.assertLessEqual(len(updates), 6)  # ~0.9 s of output at most 4 updates per second
        expected = "".join(f"tick {i}\n" for i in range(6))
        self.assertEqual("".join(u[ticker] for u in updates), expected)
        self.assertEqual(finished["cmd_list"], chain)
        self.assertEqual(finished["process_id"], "chain")
        self.assertEqual(finished[ticker], expected)
        self.assertEqual([finished.get(f"return_codes/{c}") for c in chain], ["0", "0", "1", None])
        self.assertNotIn(chain[3], finished)  # never reached: no keys, as upstream
        self.assertRegex(finished["time_started"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")
        self.assertRegex(finished["time_finished"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")
        self.assertNotIn("killed", finished)
        listed = yield self.dispatcher({"action": "list"})
        self.assertEqual(listed["args"], {"jobs": {"no_queue": {}}})
        history = yield self.dispatcher({"action": "HISTORY", "job_id": "chain"})
        self.assertEqual(history["args"]["history"][0], dict(finished, queue="no_queue"))

    @defer.inlineCallbacks
    def test_command_that_cannot_start(self):
        yield self.dispatcher({"action": "run", "nosuch": ["/nonexistent/tool -x", "echo never"]})
        finished = yield self.log.finished("nosuch")
        self.assertEqual(finished["return_codes//nonexistent/tool -x"], "-1")
        self.assertIn("cannot start '/nonexistent/tool': no such executable file", finished["/nonexistent/tool -x"])
        self.assertNotIn("return_codes/echo never", finished)

    @defer.inlineCallbacks
    def test_kill_running_job_kills_its_whole_process_group(self):
        forker = (f"{PY} -c \"import os,subprocess,time; child=subprocess.Popen(['sleep','30']);"
                  f" print(os.getpgid(0), child.pid, flush=True); time.sleep(30)\"")
        yield self.dispatcher({"action": "run", "forker": forker})
        line = yield self.log.output_line("forker")
        pgid, grandchild = (int(x) for x in line.split())
        self.addCleanup(kill_group_quietly, pgid)
        self.assertEqual(os.getpgid(grandchild), pgid)
        self.assertNotEqual(pgid, os.getpgid(0))  # not the daemon's own group
        reply = yield self.dispatcher({"action": "kill", "job_id": ["forker", "unknown"]})
        self.assertEqual(reply["args"], {"killed": {"jobs": ["forker"]}})
        finished = yield self.log.finished("forker")
        self.assertEqual(finished["killed"], "true")
        self.assertEqual(finished[f"return_codes/{forker}"], "-1")
        gone = yield group_gone(pgid)
        self.assertTrue(gone, f"process group {pgid} survived the kill")
        yield sleep(0.3)
        self.assertEqual([e["state"] for e in self.log.of("forker")].count("finished"), 1)

    @defer.inlineCallbacks
    def test_parallel_cap_and_kill_of_a_pending_job(self):
        reply = yield self.dispatcher({"action": "run", "a": "sleep 30", "b": "sleep 30", "c": "echo c"})
        self.assertEqual(reply["args"], {"started": ["a", "b", "c"]})
        yield sleep(0.3)
        listed = (yield self.dispatcher({"action": "list"}))["args"]["jobs"]["no_queue"]
        self.assertEqual({k: v["state"] for k, v in listed.items()}, {"a": "running", "b": "running", "c": "pending"})
        killed = yield self.dispatcher({"action": "kill", "job_id": "c"})
        self.assertEqual(killed["args"], {"killed": {"jobs": ["c"]}})
        finished_c = yield self.log.finished("c")
        self.assertEqual(finished_c["killed"], "true")
        self.assertNotIn("return_codes/echo c", finished_c)
        self.assertNotIn("time_started", finished_c)
        self.assertEqual([e["state"] for e in self.log.of("c")], ["pending", "finished"])
        yield self.dispatcher({"action": "run", "d": "echo d"})
        yield sleep(0.3)
        self.assertEqual([e["state"] for e in self.log.of("d")], ["pending"])  # waits for a slot
        yield self.dispatcher({"action": "kill", "job_id": "a"})
        finished_d = yield self.log.finished("d")
        self.assertEqual(finished_d["echo d"], "d\n")
        yield self.dispatcher({"action": "kill", "job_id": "b"})
        yield self.log.finished("b")

    @defer.inlineCallbacks
    def test_bad_requests_get_400_with_details(self):
        cases = [
            ({"action": "run"}, "nothing to run"),
            ({"action": "run", "empty": []}, "list of commands is empty"),
            ({"action": "run", "blank": "   "}, "command is empty"),
            ({"action": "kill"}, "'job_id'"),
            ({"action": "kill", "job_id": 5}, "'job_id'"),
            ({"action": "history", "limit": 0}, "'limit'"),
            ({"action": "explode"}, "unknown dispatcher action"),
            ("run", "args must be a JSON object"),
        ]
        for args, detail in cases:
            reply = yield self.dispatcher(args)
            self.assertEqual(reply["name"], "error", args)
            self.assertEqual(reply["args"]["code"], "400", args)
            self.assertIn(detail, reply["args"]["detail"], args)
        reply = yield self.dispatcher({"action": "run", "ok": "echo ok", "weird": 5, "obj": {}})
        self.assertEqual(reply["args"]["started"], ["ok"])
        self.assertEqual(sorted(reply["args"]["skipped"]), ["obj", "weird"])
        self.assertIn("got a number", reply["args"]["skipped"]["weird"])
        yield self.log.finished("ok")
        yield self.dispatcher({"action": "run", "busy": "sleep 30"})
        dup = yield self.dispatcher({"action": "run", "busy": "echo again", "fresh": "echo fresh"})
        self.assertEqual(dup["args"]["code"], "400")
        self.assertIn("busy", dup["args"]["detail"])
        self.assertEqual(self.log.of("fresh"), [])  # nothing of a refused request started
        yield self.dispatcher({"action": "kill", "job_id": "busy"})
        yield self.log.finished("busy")

    @defer.inlineCallbacks
    def test_limited_user_gets_403_and_the_server_keeps_serving(self):
        server = self.running.server
        channel = RecordingChannel()
        session = server.open_session("test", "limited-peer", channel, identity=Identity("op", False, "password"),
                                      timers=False)
        self.addCleanup(session.lost)
        for args in ({"action": "run", "x": "echo no"}, {"action": "kill", "job_id": "x"}):
            request = envelope.parse(envelope.encode({"namespace": "rpc", "name": "dispatcher", "id": "l", "args": args}))
            reply = yield server.api.handle(session, request)
            self.assertEqual(reply["args"]["code"], "403")
            self.assertIn("full access", reply["args"]["detail"])
        request = envelope.parse('{"namespace":"rpc","name":"dispatcher","id":"l","args":{"action":"list"}}')
        reply = yield server.api.handle(session, request)
        self.assertEqual(reply["args"], {"jobs": {}})
        self.assertEqual(server.api.availability(session.identity)["rpc/dispatcher"], "read")
        self.assertEqual(self.log.of("x"), [])
        listed = yield self.dispatcher({"action": "list"})
        self.assertEqual(listed["name"], "response")

    @defer.inlineCallbacks
    def test_finished_job_goes_to_the_dispatcher_log(self):
        yield self.dispatcher({"action": "run", "logged": "echo hello"})
        finished = yield self.log.finished("logged")
        entries = self.running.server.logs.read(["dispatcher"], 0, time.time() + 10)
        self.assertEqual([json.loads(e[2]) for e in entries], [finished])


class DispatcherOverRestTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_put_rpc_dispatcher(self):
        running = yield start_daemon(self, passwords=FakePasswords({"root": "pw"}))
        http = http_client(self, running, persistent=False)
        headers = {"Authorization": "Basic " + base64.b64encode(b"root:pw").decode(),
                   "Content-Type": "application/json"}
        url = f"https://127.0.0.1:{running.port}/rpc/dispatcher"
        response = yield http.put(url, data=b'{"action":"run","rest_job":"echo via rest"}', headers=headers)
        body = yield response.json()
        self.assertEqual(response.code, 200)
        self.assertEqual(body, {"args": {"started": ["rest_job"]}})
        dispatcher = running.daemon.dispatcher
        for _ in range(100):
            if dispatcher.history(["rest_job"]):
                break
            yield sleep(0.05)
        self.assertEqual(dispatcher.history(["rest_job"])[0]["echo via rest"], "via rest\n")
        response = yield http.put(url, data=b'{"action":"list"}', headers=headers)
        self.assertEqual((yield response.json()), {"args": {"jobs": {"no_queue": {}}}})
