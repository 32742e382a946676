"""Issue 9, items 1 and 4: one place builds everything, an event type is registered once,
refusals are (code, reason) values.

Real daemons in-process on loopback (TLS WebSockets, HTTPS, real SQLite); the structure
checks read the source.
"""

from __future__ import annotations

import ast
import json
import os

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from sysadmd import assembly
from sysadmd.events.hub import DAEMON_EVENT_TYPES, DISPATCHER, LIFE_PRESERVER, EventHub, EventType, UnknownEventType
from sysadmd.logstore import LogStore
from sysadmd.server import Refusal
from sysadmd.session import SessionRegistry
from sysadmd.wire.close import CLOSE_POLICY, CLOSE_TRY_AGAIN
from tests.support import FakePasswords, http_client, make_config, open_client, short_tempdir, start_daemon

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSADMD = os.path.join(ROOT, "sysadmd")

WIDGET = EventType("widget-test", cached=True, log="events-widget-test")


@defer.inlineCallbacks
def wait_for(predicate, timeout=5.0, step=0.02):
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError("condition not reached in time")
        yield task.deferLater(reactor, step, lambda: None)
        waited += step


def imported_modules(path):
    """Every module a source file imports (``from X import Y`` counts X and X.Y)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def sources(*parts):
    folder = os.path.join(SYSADMD, *parts)
    if folder.endswith(".py"):
        return [folder]
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".py"))


# --- item 1: the wiring ------------------------------------------------------------------
class WiringIsExplicit(unittest.TestCase):
    def test_the_server_builds_nothing_and_nothing_imports_it_back(self):
        server_imports = imported_modules(os.path.join(SYSADMD, "server.py"))
        self.assertFalse({m for m in server_imports if m.startswith(("sysadmd.rpc", "sysadmd.dispatcher",
                                                                      "sysadmd.bridgelink", "sysadmd.transports"))})
        for path in sources("rpc") + sources("events") + sources("dispatcher") + sources("bridgelink"):
            self.assertNotIn("sysadmd.server", imported_modules(path), os.path.relpath(path, ROOT))

    def test_no_subsystem_looks_another_up_by_name(self):
        offenders = []
        for folder, _, files in os.walk(SYSADMD):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    with open(path, encoding="utf-8") as f:
                        text = f.read()
                    for needle in ("subsystems[", "subsystems.get(", "settings_actions["):
                        if needle in text:
                            offenders.append(f"{os.path.relpath(path, ROOT)}: {needle}")
        self.assertEqual(offenders, [])

    def test_package_files_import_nothing_of_their_package(self):
        # A package __init__ that imports its modules makes a loop for any module of the
        # package that imports a sibling (dispatcher.runner -> dispatcher -> rpc -> runner).
        for package in ("dispatcher", "bridgelink", "rpc", "events"):
            modules = imported_modules(os.path.join(SYSADMD, package, "__init__.py"))
            self.assertEqual(modules, set(), package)

    def test_a_bare_server_has_only_the_login_routes(self):
        state = short_tempdir(self)
        from sysadmd.runtime.db import open_database

        db = open_database(os.path.join(state, "s.sqlite"))
        self.addCleanup(db.close)
        server = assembly.build_server(make_config(state), db, task.Clock(), passwords=FakePasswords({}))
        self.addCleanup(server.logs.flush)
        routes = sorted(f"{r.namespace}/{r.name}" for r in server.api.routes.values())
        self.assertEqual(routes, ["rpc/auth", "rpc/auth_clear", "rpc/auth_token", "rpc/identify", "rpc/query"])
        self.assertFalse(hasattr(server, "subsystems"))
        self.assertEqual(server.events.names(), ["dispatcher", "life-preserver", "system-state", "jobs", "fleet", "supervisor"])


class DaemonNamesEveryPart(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_every_part_is_an_attribute_and_is_wired_to_the_others(self):
        running = yield start_daemon(self, passwords=FakePasswords({"root": "pw"}))
        daemon = running.daemon
        for name in ("jobs", "dispatcher", "system_state", "life_preserver", "log_retention", "settings", "keys",
                     "key_login", "bridge_links", "fleet_agent"):
            self.assertIsNotNone(getattr(daemon, name), name)
        server = daemon.server
        self.assertIs(daemon.bridge_links.keys, daemon.keys)  # explicit, not looked up by name
        self.assertIs(daemon.bridge_links.fleet, daemon.fleet_agent)
        self.assertIs(daemon.key_login.keys, daemon.keys)
        self.assertIs(daemon.jobs.dispatcher, daemon.dispatcher)  # core/job_abort reaches dispatcher jobs
        self.assertEqual(sorted(daemon.settings), ["add_bridge", "list_bridges", "list_ssl_certs",
                                                   "list_ssl_checksums", "register_ssl_cert", "remove_bridge",
                                                   "revoke_ssl_cert"])
        routes = sorted(f"{r.namespace}/{r.name}" for r in server.api.routes.values())
        # sysadm/* classes depend on the host (issue 12): exactly the ones assembly routed.
        self.assertEqual([r for r in routes if r.startswith("sysadm/")],
                         sorted([f"sysadm/{name}" for name in daemon.sysclasses] + ["sysadm/supervisor"]))
        self.assertIs(daemon.supervisor.jobs, daemon.jobs.table)  # S1: program runs are rows of the job table
        routes = [r for r in routes if not r.startswith("sysadm/")]
        self.assertEqual(routes, ["core/download", "core/download_close", "core/download_open", "core/download_read",
                                  "core/get_jobs", "core/job_abort", "core/job_log", "core/job_wait", "core/upload_close", "core/upload_open",
                                  "core/upload_write", "events/subscribe", "events/unsubscribe", "rpc/auth", "rpc/auth_clear",
                                  "rpc/auth_ssl", "rpc/auth_token", "rpc/dispatcher", "rpc/identify", "rpc/logs",
                                  "rpc/query", "rpc/settings"])
        # The subsystems with timers are children of the server, so they stop with it.
        children = list(server)
        for part in (daemon.jobs, daemon.dispatcher, daemon.system_state, daemon.life_preserver, daemon.log_retention,
                     daemon.bridge_links):
            self.assertIn(part, children)


# --- item 4: an event type is registered once --------------------------------------------
class OneRegistrationPerEventType(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_a_new_type_registered_once_is_published_subscribed_and_logged(self):
        running = yield start_daemon(self, passwords=FakePasswords({"root": "pw"}),
                                     event_types=DAEMON_EVENT_TYPES + (WIDGET,))
        publish = running.server.events.publisher("widget-test")  # what a producer is handed
        client = yield open_client(self, running)
        reply = yield client.call("rpc", "auth", {"username": "root", "password": "pw"})
        self.assertEqual(reply["name"], "response", reply)
        got = []
        client.event_listeners.append(got.append)
        reply = yield client.call("events", "subscribe", ["widget-test"])
        self.assertEqual(reply["args"], {"subscribe": "widget-test"})
        self.assertEqual(publish({"n": 1}), 1)
        yield wait_for(lambda: got)
        self.assertEqual(got, [{"args": {"n": 1}, "id": "", "name": "widget-test", "namespace": "events"}])

        # cached=True: a later subscriber gets the latest event at once, before its reply.
        late = yield open_client(self, running)
        yield late.call("rpc", "auth", {"username": "root", "password": "pw"})
        late_got = []
        late.event_listeners.append(late_got.append)
        yield late.call("events", "subscribe", "widget-test")
        self.assertEqual([e["args"] for e in late_got], [{"n": 1}])

        # log="events-widget-test": rpc/logs serves it, and lists it among the logs.
        logs = yield client.call("rpc", "logs", {"action": "read_logs", "logs": ["events-widget-test"]})
        self.assertEqual(list(logs["args"]["events-widget-test"].values()), [{"n": 1}])
        wrong = yield client.call("rpc", "logs", {"action": "read_logs", "logs": ["nope"]})
        self.assertIn("events-widget-test", wrong["args"]["detail"])
        # and a misspelt subscription names it among the valid types
        wrong = yield client.call("events", "subscribe", "widget_test")
        self.assertIn("did you mean 'widget-test'", wrong["args"]["detail"])

    def test_an_unregistered_type_fails_when_the_daemon_is_assembled(self):
        cfg = make_config(short_tempdir(self))
        with self.assertRaises(UnknownEventType) as cm:
            assembly.build(cfg, reactor, passwords=FakePasswords({}), event_types=(DISPATCHER, LIFE_PRESERVER))
        message = str(cm.exception)
        self.assertIn("'jobs' is not registered", message)
        self.assertIn("registered: dispatcher, life-preserver", message)
        self.assertIn("EventHub.register(EventType(...))", message)
        self.assertIn("sysadmd/assembly.py", message)

    def test_publishing_or_asking_for_an_unknown_type_says_so_at_once(self):
        hub = EventHub(SessionRegistry())
        hub.register(EventType("plain"))  # neither cached nor stored: needs no log store
        with self.assertRaises(UnknownEventType) as cm:
            hub.publisher("plian")
        self.assertIn("'plian' is not registered (registered: plain)", str(cm.exception))
        with self.assertRaises(UnknownEventType):
            hub.publish("plian", {})
        self.assertEqual(hub.publisher("plain")({"x": 1}), 0)
        self.assertNotIn("plain", hub.latest)

    def test_registration_mistakes_are_refused_with_the_reason(self):
        clock = task.Clock()
        from sysadmd.runtime.db import open_database

        db = open_database(os.path.join(short_tempdir(self), "s.sqlite"))
        self.addCleanup(db.close)
        logs = LogStore(db, clock)
        hub = EventHub(SessionRegistry(), logs)
        hub.register(WIDGET)
        self.assertEqual(logs.names, ["hostinfo", "dispatcher", "events-widget-test"])
        with self.assertRaises(ValueError) as cm:
            hub.register(WIDGET)
        self.assertIn("registered twice", str(cm.exception))
        with self.assertRaises(ValueError) as cm:
            hub.register(EventType("other", log="hostinfo"))  # a log belongs to one writer
        self.assertIn("log 'hostinfo' is registered twice", str(cm.exception))
        self.assertNotIn("other", hub.names())
        with self.assertRaises(ValueError) as cm:
            EventHub(SessionRegistry()).register(EventType("stored", log="events-stored"))
        self.assertIn("has no log store", str(cm.exception))
        with self.assertRaises(ValueError) as cm:
            logs.append("events-unknown", {})
        self.assertIn("unknown log 'events-unknown'", str(cm.exception))


# --- item 4: refusals are values -----------------------------------------------------------
class RefusalsAreValues(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        cfg = make_config(short_tempdir(self), MAX_CONNECTIONS=3, BLACKLIST_EXEMPT_LOOPBACK="false",
                          BLACKLIST_AUTH_FAIL_LIMIT=2)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.server = self.running.server

    def test_connection_allowed_answers_with_a_code_and_a_reason(self):
        server = self.server
        self.assertIsNone(server.connection_allowed("192.0.2.1"))
        server.blacklist.failure("192.0.2.1")
        server.blacklist.failure("192.0.2.1")
        blocked = server.connection_allowed("192.0.2.1")
        self.assertIsInstance(blocked, Refusal)
        self.assertEqual((blocked.close_code, blocked.http_status, blocked.retry_after), (CLOSE_POLICY, "403", None))
        self.assertIn("try again in", blocked.reason)
        self.assertEqual(server.address_refusal("192.0.2.1"), blocked)
        self.assertIsNone(server.address_refusal("192.0.2.2"))

    @defer.inlineCallbacks
    def test_the_websocket_closes_with_the_refusals_own_code(self):
        # A reason without the word "blocked" still closes with its own code: nothing
        # reads the sentence.
        self.server.connection_allowed = lambda peer: Refusal(CLOSE_POLICY, "403", "closed for maintenance")
        client = yield open_client(self, self.running)
        code, reason = yield client.closed
        self.assertEqual((code, reason), (CLOSE_POLICY, "closed for maintenance"))
        self.server.connection_allowed = lambda peer: Refusal(CLOSE_TRY_AGAIN, "503", "address blocked, sort of")
        client = yield open_client(self, self.running)
        code, reason = yield client.closed
        self.assertEqual((code, reason), (CLOSE_TRY_AGAIN, "address blocked, sort of"))

    @defer.inlineCallbacks
    def test_rest_answers_with_the_refusals_status_and_retry_after(self):
        http = http_client(self, self.running)
        base = f"https://127.0.0.1:{self.running.port}"
        self.server.connection_allowed = lambda peer: Refusal(CLOSE_TRY_AGAIN, "503", "busy right now", retry_after=7)
        response = yield http.get(base + "/rpc/identify")
        body = json.loads((yield response.text("utf-8")))
        self.assertEqual((response.code, body["args"]["detail"]), (503, "busy right now"))
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["7"])
        self.server.address_refusal = lambda peer: Refusal(CLOSE_POLICY, "403", "not from there")
        response = yield http.get(base + "/rpc/identify")
        body = json.loads((yield response.text("utf-8")))
        self.assertEqual((response.code, body["args"]["detail"]), (403, "not from there"))
        self.assertIsNone(response.headers.getRawHeaders("retry-after"))

    @defer.inlineCallbacks
    def test_a_full_server_refuses_with_1013_and_503(self):
        clients = []
        for _ in range(3):
            clients.append((yield open_client(self, self.running)))
        yield wait_for(lambda: len(self.server.sessions) == 3)
        busy = self.server.connection_allowed("192.0.2.9")
        self.assertEqual((busy.close_code, busy.http_status, busy.retry_after), (CLOSE_TRY_AGAIN, "503", 5))
        self.assertEqual(self.server.capacity_refusal(), busy)
        extra = yield open_client(self, self.running)
        code, reason = yield extra.closed
        self.assertEqual(code, CLOSE_TRY_AGAIN)
        self.assertIn("MAX_CONNECTIONS=3", reason)
