"""The seed's wire on /websocket, over a real TLS WebSocket to an in-process daemon."""

from __future__ import annotations

import json
import sqlite3

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from hypothesis import given, settings, strategies as st
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from sysadmd.wire import wsbase
from sysadmd.client.wsclient import insecure_client_tls
from sysadmd.wire.envelope import ApiError
from sysadmd.jobs.query import Column, QueryError, compile_query, install_regexp
from sysadmd.transports.seedws import MAX_PENDING_CALLS, MAX_SUBSCRIPTIONS, args_for, seed_job
from tests.support import FakePasswords, make_config, open_client, short_tempdir, start_daemon


POLICY = 1008 if wsbase.FAST else wsbase.public_close_code(1008)  # autobahn's public path: 4008


class SeedClient(WebSocketClientProtocol):
    def __init__(self):
        super().__init__()
        self.messages = []
        self.waiters = []
        self.closed = defer.Deferred()

    def onOpen(self):
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        message = json.loads(payload.decode("utf-8"))
        self.messages.append(message)
        for predicate, d in list(self.waiters):
            if predicate(message):
                self.waiters.remove((predicate, d))
                d.callback(message)

    def onClose(self, wasClean, code, reason):
        if not self.factory.opened.called:
            self.factory.opened.errback(AssertionError(f"closed before open: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback((code, reason))

    def send(self, message):
        self.sendMessage((message if isinstance(message, str) else json.dumps(message)).encode("utf-8"))

    def wait(self, predicate, timeout=5.0):
        for message in self.messages:
            if predicate(message):
                self.messages.remove(message)
                return defer.succeed(message)
        d = defer.Deferred()
        self.waiters.append((predicate, d))
        d.addTimeout(timeout, reactor)

        def taken(message):
            self.messages.remove(message)
            return message

        return d.addCallback(taken)

    def exchange(self, message, timeout=5.0):
        """Send *message*; fire with the next message carrying its id (or the next one)."""
        self.send(message)
        if isinstance(message, dict) and "id" in message:
            # its id, or an answer that could not carry it ("failed", an error with id null)
            return self.wait(lambda m: m.get("id") == message["id"] or m.get("msg") == "failed"
                             or message["id"] in m.get("subs", ())
                             or ("error" in m and m.get("id") is None), timeout)
        return self.wait(lambda m: True, timeout)


def seed_connect(testcase, running, path="/websocket"):
    factory = WebSocketClientFactory(f"wss://127.0.0.1:{running.port}{path}", reactor=reactor)
    factory.protocol = SeedClient
    factory.opened = defer.Deferred()
    factory.setProtocolOptions(openHandshakeTimeout=10, closeHandshakeTimeout=3)
    connectWS(factory, insecure_client_tls(), timeout=10)

    def opened(client):
        testcase.addCleanup(lambda: client.closed if client.closed.called else (client.sendClose(1000), client.closed)[1])
        return client

    return factory.opened.addCallback(opened)


JOB_53 = {"id": 53, "method": "catalog.sync_all", "arguments": [], "logs_path": None, "logs_excerpt": None,
          "progress": {"percent": 100, "description": "Syncing TEST catalog", "extra": None}, "result": None,
          "error": None, "exception": None, "exc_info": None, "state": "SUCCESS", "time_started": 1571300596.053,
          "time_finished": None}
SEED_RESPONSE = {"id": "d8e715be-6bc7-11e6-8c28-00e04d680384", "msg": "result", "result": [{
    "id": 53, "method": "catalog.sync_all", "arguments": [], "logs_path": None, "logs_excerpt": None,
    "progress": {"percent": 100, "description": "Syncing TEST catalog", "extra": None}, "result": None,
    "error": None, "exception": None, "exc_info": None, "state": "SUCCESS",
    "time_started": {"$date": 1571300596053}, "time_finished": None}]}


def install_job_table(server, jobs):
    """Serve a controlled job list as core/get_jobs, so the seed's literal reply can be
    compared byte for byte: the seed's filters are compiled by sysadmd.jobs.query against a
    real SQLite table holding exactly the seed's job (the daemon's own core/get_jobs, with
    our extra fields, is tested through /websocket in SeedWireRealJobs)."""
    db = sqlite3.connect(":memory:")
    install_regexp(db)
    db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, method TEXT, state TEXT, body TEXT)")
    for job in jobs:
        db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?)", (job["id"], job["method"], job["state"], json.dumps(job)))
    columns = {"id": Column("id", "int"), "method": Column("method", "text"), "state": Column("state", "text")}

    def get_jobs(session, request):
        args = request.args if isinstance(request.args, dict) else {}
        try:
            q = compile_query(args.get("filters"), args.get("options"), columns)
        except QueryError as e:
            raise ApiError("400", str(e))
        rows = db.execute(f"SELECT body FROM jobs WHERE {q.where} ORDER BY {q.order_by} LIMIT ? OFFSET ?",
                          q.params + [q.limit if q.limit is not None else -1, q.offset]).fetchall()
        found = [json.loads(r[0]) for r in rows]
        return len(found) if q.count else found

    del server.api.routes[("core", "get_jobs")]
    server.api.add("core", "get_jobs", get_jobs)


class SeedWireTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.running = yield start_daemon(self, passwords=FakePasswords({"root": "pw"}))
        self.server = self.running.server
        install_job_table(self.server, [JOB_53, dict(JOB_53, id=54, state="FAILED", time_started=1571300600.5)])

    @defer.inlineCallbacks
    def logged_in(self):
        client = yield seed_connect(self, self.running)
        reply = yield client.exchange({"msg": "connect", "version": "1", "support": ["1"]})
        self.assertEqual(reply["msg"], "connected")
        reply = yield client.exchange({"id": "l1", "msg": "method", "method": "auth.login", "params": ["root", "pw"]})
        self.assertEqual(reply, {"id": "l1", "msg": "result", "result": True})
        return client

    @defer.inlineCallbacks
    def test_the_seeds_exchanges_verbatim(self):
        client = yield seed_connect(self, self.running)
        reply = yield client.exchange({"msg": "connect", "version": "1", "support": ["1"]})
        self.assertEqual(sorted(reply), ["msg", "session"])
        self.assertEqual(reply["msg"], "connected")
        self.assertIsInstance(reply["session"], str)
        reply = yield client.exchange({"id": "l1", "msg": "method", "method": "auth.login", "params": ["root", "pw"]})
        self.assertEqual(reply["result"], True)
        # The seed's query, byte for byte, and its response.
        client.send('{"id": "d8e715be-6bc7-11e6-8c28-00e04d680384", "msg": "method", "method": "core.get_jobs", '
                    '"params": [[["id", "=", 53]]]}')
        reply = yield client.wait(lambda m: m.get("id") == "d8e715be-6bc7-11e6-8c28-00e04d680384")
        self.assertEqual(reply, SEED_RESPONSE)
        # options, and the count form
        reply = yield client.exchange({"id": 7, "msg": "method", "method": "core.get_jobs",
                                       "params": [[["state", "in", ["SUCCESS", "FAILED"]]], {"order_by": ["-id"]}]})
        self.assertEqual([j["id"] for j in reply["result"]], [54, 53])
        self.assertEqual(reply["result"][0]["time_started"], {"$date": 1571300600500})
        reply = yield client.exchange({"id": 8, "msg": "method", "method": "core.get_jobs",
                                       "params": [[], {"count": True}]})
        self.assertEqual(reply, {"id": 8, "msg": "result", "result": 2})
        # every API is reachable as namespace.name
        reply = yield client.exchange({"id": "q", "msg": "method", "method": "rpc.query", "params": []})
        self.assertEqual(reply["result"]["core/get_jobs"], "read/write")
        reply = yield client.exchange({"id": "p", "msg": "ping"})
        self.assertEqual(reply, {"msg": "pong", "id": "p"})

    @defer.inlineCallbacks
    def test_errors_carry_truenas_fields_and_name_the_bad_part(self):
        client = yield self.logged_in()
        reply = yield client.exchange({"id": "b1", "msg": "method", "method": "core.get_jobs",
                                       "params": [[["id", "=~", 53]]]})
        self.assertEqual(reply["id"], "b1")
        self.assertNotIn("result", reply)
        error = reply["error"]
        self.assertEqual((error["error"], error["errname"], error["code"]), (22, "EINVAL", "400"))
        self.assertTrue(error["reason"].startswith("filters[0][1]: unknown operator '=~'"), error["reason"])
        self.assertEqual((error["type"], error["trace"], error["extra"]), (None, None, None))
        reply = yield client.exchange({"id": "b2", "msg": "method", "method": "nope.nothing", "params": []})
        self.assertEqual((reply["error"]["errname"], reply["error"]["code"]), ("ENOENT", "404"))
        reply = yield client.exchange({"id": "b3", "msg": "method", "method": "core.get_jobs", "params": {"a": 1}})
        self.assertIn("'params' must be an array", reply["error"]["reason"])
        reply = yield client.exchange({"id": "b4", "msg": "method", "method": "nodot", "params": []})
        self.assertIn("namespace.name", reply["error"]["reason"])
        reply = yield client.exchange({"id": ["x"], "msg": "method", "method": "rpc.query"})
        self.assertEqual(reply["id"], None)
        self.assertIn("'id' must be", reply["error"]["reason"])
        reply = yield client.exchange("not json")
        self.assertEqual((reply["id"], reply["error"]["code"]), (None, "400"))
        reply = yield client.exchange('{"msg": "method", "id": "b5", "method": "rpc.query", "params": [')
        self.assertIn("invalid JSON", reply["error"]["reason"])
        reply = yield client.exchange({"id": "b6", "msg": "shout"})
        self.assertIn("unknown msg 'shout'", reply["error"]["reason"])
        reply = yield client.exchange('{"id": "b7", "msg": "method", "method": "rpc.query", "params": ["\\ud800"]}')
        self.assertIn("lone UTF-16 surrogate", reply["error"]["reason"])
        # the connection still serves
        reply = yield client.exchange({"id": "ok", "msg": "method", "method": "rpc.query", "params": []})
        self.assertIn("result", reply)

    @defer.inlineCallbacks
    def test_connect_first_and_nothing_before_login(self):
        client = yield seed_connect(self, self.running)
        reply = yield client.exchange({"id": "m", "msg": "method", "method": "rpc.query", "params": []})
        self.assertEqual(reply, {"msg": "failed", "version": "1"})
        reply = yield client.exchange({"msg": "connect", "version": "2", "support": ["2"]})
        self.assertEqual(reply, {"msg": "failed", "version": "1"})
        reply = yield client.exchange({"msg": "connect", "version": "1", "support": ["1"]})
        self.assertEqual(reply["msg"], "connected")
        for method in ("rpc.query", "rpc.identify", "core.get_jobs", "events.subscribe"):
            reply = yield client.exchange({"id": method, "msg": "method", "method": method, "params": []})
            self.assertEqual((reply["error"]["errname"], reply["error"]["code"]), ("EACCES", "401"), method)
        reply = yield client.exchange({"msg": "sub", "id": "s", "name": "core.get_jobs"})
        self.assertEqual((reply["msg"], reply["error"]["code"]), ("nosub", "401"))
        reply = yield client.exchange({"msg": "ping", "id": 1})
        self.assertEqual(reply, {"msg": "pong", "id": 1})
        reply = yield client.exchange({"id": "l", "msg": "method", "method": "auth.login", "params": ["root", "bad"]})
        self.assertEqual(reply, {"id": "l", "msg": "result", "result": False})
        reply = yield client.exchange({"id": "l2", "msg": "method", "method": "auth.login", "params": ["root"]})
        self.assertIn("auth.login takes [username, password]", reply["error"]["reason"])
        reply = yield client.exchange({"id": "l3", "msg": "method", "method": "auth.login",
                                       "params": ["x" * 300, "pw"]})
        self.assertEqual(reply["result"], False)  # implausible: refused by the same checks
        reply = yield client.exchange({"id": "l4", "msg": "method", "method": "auth.login", "params": ["root", "pw"]})
        self.assertEqual(reply["result"], True)
        reply = yield client.exchange({"id": "q", "msg": "method", "method": "rpc.query", "params": []})
        self.assertIn("rpc/dispatcher", reply["result"])
        reply = yield client.exchange({"id": "o", "msg": "method", "method": "auth.logout", "params": []})
        self.assertEqual(reply["result"], True)
        reply = yield client.exchange({"id": "q2", "msg": "method", "method": "rpc.query", "params": []})
        self.assertEqual(reply["error"]["code"], "401")

    @defer.inlineCallbacks
    def test_login_with_token_from_the_sysadm_wire(self):
        sysadm = yield open_client(self, self.running)
        reply = yield sysadm.call("rpc", "auth", {"username": "root", "password": "pw"})
        token = reply["args"][0]
        client = yield seed_connect(self, self.running)
        yield client.exchange({"msg": "connect", "version": "1", "support": ["1"]})
        reply = yield client.exchange({"id": "t0", "msg": "method", "method": "auth.login_with_token",
                                       "params": ["not-a-token"]})
        self.assertEqual(reply["result"], False)
        reply = yield client.exchange({"id": "t1", "msg": "method", "method": "auth.login_with_token",
                                       "params": [token]})
        self.assertEqual(reply["result"], True)
        reply = yield client.exchange({"id": "g", "msg": "method", "method": "core.get_jobs", "params": []})
        self.assertEqual([j["id"] for j in reply["result"]], [53, 54])

    @defer.inlineCallbacks
    def test_job_subscription_added_changed_unsub(self):
        client = yield self.logged_in()
        other = yield self.logged_in()  # logged in, not subscribed
        reply = yield client.exchange({"msg": "sub", "id": "s1", "name": "core.get_jobs"})
        self.assertEqual(reply, {"msg": "ready", "subs": ["s1"]})
        hub = self.server.events
        job = dict(JOB_53, id=60, state="RUNNING", time_finished=None)
        hub.publish("jobs", {"kind": "added", "job": job})
        event = yield client.wait(lambda m: m.get("msg") == "added")
        self.assertEqual(event, {"msg": "added", "collection": "core.get_jobs", "id": 60, "fields": seed_job(job)})
        self.assertEqual(event["fields"]["time_started"], {"$date": 1571300596053})
        done = dict(job, state="SUCCESS", time_finished=1571300597.0)
        hub.publish("jobs", {"kind": "changed", "job": done})
        event = yield client.wait(lambda m: m.get("msg") == "changed")
        self.assertEqual((event["id"], event["fields"]["state"], event["fields"]["time_finished"]),
                         (60, "SUCCESS", {"$date": 1571300597000}))
        client.send({"msg": "unsub", "id": "s1"})
        reply = yield client.exchange({"msg": "ping", "id": "after-unsub"})
        self.assertEqual(reply["msg"], "pong")
        hub.publish("jobs", {"kind": "changed", "job": done})
        reply = yield client.exchange({"msg": "ping", "id": "after-event"})
        self.assertEqual(reply["msg"], "pong")
        self.assertFalse([m for m in client.messages + other.messages if m.get("msg") in ("added", "changed")])

    @defer.inlineCallbacks
    def test_subscription_errors_limits_and_logout(self):
        client = yield self.logged_in()
        reply = yield client.exchange({"msg": "sub", "id": "x", "name": "core.get_weather"})
        self.assertEqual((reply["msg"], reply["id"], reply["error"]["code"]), ("nosub", "x", "404"))
        for i in range(MAX_SUBSCRIPTIONS):
            reply = yield client.exchange({"msg": "sub", "id": f"s{i}", "name": "core.get_jobs"})
            self.assertEqual(reply["msg"], "ready")
        reply = yield client.exchange({"msg": "sub", "id": "one-more", "name": "core.get_jobs"})
        self.assertEqual((reply["msg"], reply["error"]["code"]), ("nosub", "429"))
        self.server.events.publish("jobs", {"kind": "added", "job": dict(JOB_53, id=70)})
        yield client.wait(lambda m: m.get("msg") == "added")  # once, however many subscriptions
        reply = yield client.exchange({"msg": "ping", "id": "p"})
        self.assertFalse([m for m in client.messages if m.get("msg") == "added"])
        # A login that ends (here: logged out on the sysadm side, as a token expiry does) ends them.
        for s in self.server.sessions:
            s.logout()
        self.server.events.publish("jobs", {"kind": "changed", "job": dict(JOB_53, id=70)})
        reply = yield client.wait(lambda m: m.get("msg") == "nosub")
        self.assertEqual(reply["error"]["code"], "401")
        self.server.events.publish("jobs", {"kind": "changed", "job": dict(JOB_53, id=71)})
        reply = yield client.exchange({"msg": "ping", "id": "p2"})
        self.assertFalse([m for m in client.messages if m.get("msg") in ("changed", "nosub")])

    @defer.inlineCallbacks
    def test_pending_calls_are_bounded(self):
        held = []

        def slow(session, request):
            d = defer.Deferred()
            held.append(d)
            return d

        self.server.api.add("test", "slow", slow)
        client = yield self.logged_in()
        for i in range(MAX_PENDING_CALLS):
            client.send({"id": i, "msg": "method", "method": "test.slow", "params": []})
        reply = yield client.exchange({"id": "over", "msg": "method", "method": "test.slow", "params": []})
        self.assertEqual((reply["error"]["errname"], reply["error"]["code"]), ("ETOOMANYREFS", "429"))
        self.assertEqual(len(held), MAX_PENDING_CALLS)
        for d in held:
            d.callback("done")
        reply = yield client.wait(lambda m: m.get("id") == MAX_PENDING_CALLS - 1)
        self.assertEqual(reply["result"], "done")
        client.send({"id": "again", "msg": "method", "method": "test.slow", "params": []})
        yield client.exchange({"msg": "ping", "id": "sync"})
        self.assertEqual(len(held), MAX_PENDING_CALLS + 1)  # the slots were given back
        held[-1].callback("ok")
        reply = yield client.wait(lambda m: m.get("id") == "again")
        self.assertEqual(reply["result"], "ok")

    @defer.inlineCallbacks
    def test_other_paths_still_speak_the_sysadm_wire(self):
        client = yield open_client(self, self.running)
        reply = yield client.call("rpc", "auth", {"username": "root", "password": "pw"})
        self.assertEqual(reply["name"], "response")
        seed = yield seed_connect(self, self.running, path="/websocket?x=1")
        reply = yield seed.exchange({"msg": "connect", "version": "1", "support": ["1"]})
        self.assertEqual(reply["msg"], "connected")


class SeedWireRealJobs(unittest.TestCase):
    """The daemon's own job store through /websocket: a dispatcher job started on the seed's
    wire is announced as ``added``/``changed``, found by core.get_jobs with the seed's
    filters, and core.job_wait returns it finished, with times in the seed's form."""

    timeout = 30

    @defer.inlineCallbacks
    def test_a_dispatcher_job_through_the_seed_wire(self):
        running = yield start_daemon(self, passwords=FakePasswords({"root": "pw"}))
        client = yield seed_connect(self, running)
        reply = yield client.exchange({"msg": "connect", "version": "1", "support": ["1"]})
        self.assertEqual(reply["msg"], "connected")
        reply = yield client.exchange({"id": "l", "msg": "method", "method": "auth.login", "params": ["root", "pw"]})
        self.assertEqual(reply["result"], True)
        reply = yield client.exchange({"msg": "sub", "id": "s", "name": "core.get_jobs"})
        self.assertEqual(reply, {"msg": "ready", "subs": ["s"]})
        reply = yield client.exchange({"id": "r", "msg": "method", "method": "rpc.dispatcher",
                                       "params": [{"action": "run", "seedjob": ["echo from-the-seed-wire"]}]})
        self.assertNotIn("error", reply)
        added = yield client.wait(lambda m: m.get("msg") == "added")
        job_id = added["id"]
        self.assertEqual((added["collection"], added["fields"]["dispatcher_id"]), ("core.get_jobs", "seedjob"))
        reply = yield client.exchange({"id": "w", "msg": "method", "method": "core.job_wait", "params": [job_id]})
        finished = reply["result"]
        self.assertEqual((finished["id"], finished["state"], finished["outcome"]), (job_id, "SUCCESS", "succeeded"))
        self.assertEqual(sorted(finished["time_finished"]), ["$date"])
        reply = yield client.exchange({"id": "q", "msg": "method", "method": "core.get_jobs",
                                       "params": [[["dispatcher_id", "=", "seedjob"], ["state", "in", ["SUCCESS"]]],
                                                  {"select": ["id", "state", "owner"]}]})
        self.assertEqual(reply["result"], [{"id": job_id, "state": "SUCCESS",
                                            "owner": {"user": "root", "via": "password", "from": "127.0.0.1"}}])
        changed = yield client.wait(lambda m: m.get("msg") == "changed" and m["fields"]["state"] == "SUCCESS")
        self.assertEqual(changed["id"], job_id)


class SeedWireLimitTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_large_message_before_login_closes_1009(self):
        running = yield start_daemon(self, passwords=FakePasswords({"root": "pw"}))
        client = yield seed_connect(self, running)
        limit = running.config.max_unauth_message_bytes
        client.send({"msg": "connect", "version": "1", "support": ["1"], "pad": "x" * (limit + 10)})
        code, _ = yield client.closed
        self.assertEqual(code, 1009)

    @defer.inlineCallbacks
    def test_failed_logins_count_on_the_same_blacklist(self):
        cfg = make_config(short_tempdir(self), BLACKLIST_EXEMPT_LOOPBACK="false", BLACKLIST_AUTH_FAIL_LIMIT=2)
        running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        client = yield seed_connect(self, running)
        yield client.exchange({"msg": "connect", "version": "1", "support": ["1"]})
        reply = yield client.exchange({"id": 1, "msg": "method", "method": "auth.login", "params": ["root", "no"]})
        self.assertEqual(reply["result"], False)
        reply = yield client.exchange({"id": 2, "msg": "method", "method": "auth.login", "params": ["root", "no"]})
        self.assertEqual(reply["result"], False)
        code, reason = yield client.closed
        self.assertEqual(code, POLICY)
        self.assertIn("blocked", reason)
        # the sysadm wire sees the same block
        self.assertGreater(running.server.blacklist.blocked_for("127.0.0.1"), 0)

    @defer.inlineCallbacks
    def test_password_checks_per_address_apply(self):
        cfg = make_config(short_tempdir(self), PASSWORD_CHECKS_PER_ADDRESS=1)
        running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}, delay=0.3))
        first = yield seed_connect(self, running)
        second = yield seed_connect(self, running)
        for client in (first, second):
            yield client.exchange({"msg": "connect", "version": "1", "support": ["1"]})
        first.send({"id": "a", "msg": "method", "method": "auth.login", "params": ["root", "pw"]})
        yield task.deferLater(reactor, 0.05, lambda: None)
        refused = yield second.exchange({"id": "b", "msg": "method", "method": "auth.login", "params": ["root", "pw"]})
        self.assertEqual((refused["error"]["code"], refused["error"]["errname"]), ("429", "EAGAIN"))
        self.assertIn("password checks", refused["error"]["reason"])
        accepted = yield first.wait(lambda m: m.get("id") == "a")
        self.assertEqual(accepted["result"], True)

    @defer.inlineCallbacks
    def test_messages_wait_for_a_slow_login_then_run_in_order(self):
        running = yield start_daemon(self, passwords=FakePasswords({"root": "pw"}, delay=0.3))
        client = yield seed_connect(self, running)
        yield client.exchange({"msg": "connect", "version": "1", "support": ["1"]})
        client.send({"id": "l", "msg": "method", "method": "auth.login", "params": ["root", "pw"]})
        client.send({"id": "q", "msg": "method", "method": "rpc.query", "params": []})
        client.send({"msg": "ping", "id": "p"})
        first = yield client.wait(lambda m: True)
        self.assertEqual(first, {"id": "l", "msg": "result", "result": True})
        second = yield client.wait(lambda m: True)
        self.assertEqual(second["id"], "q")
        self.assertIn("rpc/dispatcher", second["result"])
        third = yield client.wait(lambda m: True)
        self.assertEqual(third, {"msg": "pong", "id": "p"})

    @defer.inlineCallbacks
    def test_a_flood_behind_a_slow_login_is_cut_off(self):
        cfg = make_config(short_tempdir(self), AUTH_PENDING_MAX_REQUESTS=3)
        running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}, delay=0.5))
        client = yield seed_connect(self, running)
        yield client.exchange({"msg": "connect", "version": "1", "support": ["1"]})
        client.send({"id": "l", "msg": "method", "method": "auth.login", "params": ["root", "pw"]})
        for i in range(4):
            client.send({"msg": "ping", "id": i})
        code, reason = yield client.closed
        self.assertEqual(code, POLICY)
        self.assertIn("AUTH_PENDING_MAX_REQUESTS", reason)
        yield task.deferLater(reactor, 0.6, lambda: None)  # the password check still running ends


class ParamsMappingTests(unittest.TestCase):
    def test_mapping(self):
        self.assertEqual(args_for("core.get_jobs", [[["id", "=", 53]]]), {"filters": [["id", "=", 53]]})
        self.assertEqual(args_for("core.get_jobs", [[], {"count": True}]), {"filters": [], "options": {"count": True}})
        self.assertEqual(args_for("rpc.query", []), {})
        self.assertEqual(args_for("sysadm.update", [{"action": "checkupdates"}]), {"action": "checkupdates"})
        self.assertEqual(args_for("events.subscribe", ["dispatcher"]), ["dispatcher"])
        self.assertEqual(seed_job({"time_started": 1.5, "time_finished": None, "time_created": 2}),
                         {"time_started": {"$date": 1500}, "time_finished": None, "time_created": {"$date": 2000}})



class HubListenerTests(unittest.TestCase):
    def test_listeners_get_every_event_of_their_type_and_can_stop(self):
        from sysadmd.events.hub import DISPATCHER, JOBS, EventHub, EventType
        from sysadmd.session import SessionRegistry

        hub = EventHub(SessionRegistry())
        hub.register(JOBS)
        hub.register(EventType(DISPATCHER.name))
        got = []

        def broken(args):
            raise RuntimeError("listener bug")

        hub.listen("jobs", broken)  # a failing listener neither stops the others nor publish
        stop = hub.listen("jobs", got.append)
        hub.listen("dispatcher", lambda args: got.append(("dispatcher", args)))
        self.assertEqual(hub.publish("jobs", {"kind": "added", "job": {"id": 1}}), 0)
        stop()
        hub.publish("jobs", {"kind": "changed", "job": {"id": 1}})
        self.assertEqual(got, [{"kind": "added", "job": {"id": 1}}])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)


class ListenerDemandTests(unittest.TestCase):
    def test_a_listener_counts_as_a_subscriber_only_while_it_wants_events(self):
        from sysadmd.events.hub import JOBS, EventHub
        from sysadmd.session import SessionRegistry

        hub = EventHub(SessionRegistry())
        hub.register(JOBS)
        watchers = set()
        stop = hub.listen("jobs", lambda args: None, wanted=lambda: bool(watchers))
        self.assertEqual(hub.subscriber_count("jobs"), 0)  # producers skip building events
        watchers.add("a seed session")
        self.assertEqual(hub.subscriber_count("jobs"), 1)
        stop()
        self.assertEqual(hub.subscriber_count("jobs"), 0)


class ParserProperties(unittest.TestCase):
    """The protocol driven directly (no sockets) with arbitrary messages: every answer is
    one of the seed's shapes, nothing raises, the connection is never dropped for content."""

    def setUp(self):
        from twisted.internet.task import Clock

        from sysadmd.runtime.db import open_database
        from sysadmd.session import Identity
        from sysadmd.transports.seedws import SeedServerFactory, SeedServerProtocol
        from tests.support import RecordingChannel, unit_server

        state = short_tempdir(self)
        db = open_database(state + "/s.sqlite")
        self.addCleanup(db.close)
        self.server = unit_server(make_config(state), db, Clock(), passwords=FakePasswords({"root": "pw"}))
        self.addCleanup(self.server.logs.flush)
        self.factory = SeedServerFactory(self.server)
        self.make_protocol = SeedServerProtocol
        self.channel_type = RecordingChannel
        self.identity = Identity("root", True, "password")

    def connection(self, logged_in):
        protocol = self.make_protocol()
        protocol.factory = self.factory
        channel = self.channel_type()
        protocol.session = self.server.open_session("wss", "203.0.113.5", channel, timers=False)
        if logged_in:
            protocol.session.login(self.identity, None)
        protocol.onMessage(b'{"msg":"connect","version":"1","support":["1"]}', False)
        return protocol, channel

    json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6),
                               lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                          max_size=3),
                               max_leaves=6)
    messages = st.fixed_dictionaries({"msg": st.sampled_from(["connect", "ping", "method", "sub", "unsub", "x"])},
                                      optional={"id": json_values, "method": st.sampled_from(
                                          ["rpc.query", "auth.login", "auth.logout", "core.get_jobs", "a.b", "", "."])
                                          | st.text(max_size=8), "params": json_values,
                                          "name": st.sampled_from(["core.get_jobs", "other"]) | json_values,
                                          "version": json_values})

    @settings(max_examples=300, deadline=None)
    @given(st.booleans(), st.lists(st.one_of(messages.map(json.dumps), st.text(max_size=20)), min_size=1,
                                   max_size=5))
    def test_any_message_gets_a_seed_shaped_answer(self, logged_in, texts):
        protocol, channel = self.connection(logged_in)
        channel.sent.clear()
        for text in texts:
            protocol.onMessage(text.encode("utf-8", "surrogatepass"), False)
        for out in channel.sent:
            message = json.loads(out)
            self.assertIn(message["msg"], ("connected", "failed", "pong", "result", "ready", "nosub"), message)
            if message["msg"] == "result":
                self.assertEqual(len({"result", "error"} & set(message)), 1, message)
                self.assertIn("id", message)
                if "error" in message:
                    self.assertTrue(message["error"]["reason"])
        self.assertIsNone(channel.closed_with)
        self.assertEqual(self.flushLoggedErrors(), [])
