"""events/subscribe and events/unsubscribe over real wss and the local Unix socket."""

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from sysadmd.events.hub import DAEMON_EVENT_TYPES
from sysadmd.events.subscriptions import event_names as names_among
from sysadmd.wire.envelope import ApiError
from tests.support import FakePasswords, open_client, start_daemon


@defer.inlineCallbacks
def wait_for(predicate, timeout=5.0, step=0.02):
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError("condition not reached in time")
        yield task.deferLater(reactor, step, lambda: None)
        waited += step


def collect_events(client):
    got = []
    client.event_listeners.append(got.append)
    return got


def event_names(args):
    return names_among(args, [kind.name for kind in DAEMON_EVENT_TYPES])


class EventNamesTests(unittest.TestCase):
    def test_string_and_array(self):
        self.assertEqual(event_names("dispatcher"), ["dispatcher"])
        self.assertEqual(event_names(["system-state", "life-preserver"]), ["system-state", "life-preserver"])
        self.assertEqual(event_names([]), [])

    def test_bad_types_name_the_problem(self):
        for args, words in ((5, "got a number"), ({"a": 1}, "got an object"), (["dispatcher", 3], "args[1]")):
            with self.assertRaises(ApiError) as cm:
                event_names(args)
            self.assertEqual(cm.exception.code, "400")
            self.assertIn(words, cm.exception.detail)

    def test_unknown_and_bridge(self):
        with self.assertRaises(ApiError) as cm:
            event_names(["dispatcher", "system_state", "nope"])
        detail = cm.exception.detail
        self.assertIn("'nope'", detail)
        self.assertIn("did you mean 'system-state'", detail)
        self.assertIn("valid types: dispatcher, life-preserver, system-state", detail)
        with self.assertRaises(ApiError) as cm:
            event_names("bridge")
        self.assertIn("no subscription", cm.exception.detail)


class SubscribeMixin:
    """The same tests over wss (password login) and the Unix socket (peer uid)."""

    timeout = 30
    unix = False

    @defer.inlineCallbacks
    def setUp(self):
        self.running = yield start_daemon(self, passwords=FakePasswords({"root": "pw"}))
        self.hub = self.running.server.events

    @defer.inlineCallbacks
    def client(self):
        client = yield open_client(self, self.running, unix=self.unix)
        if not self.unix:
            reply = yield client.call("rpc", "auth", {"username": "root", "password": "pw"})
            self.assertEqual(reply["name"], "response")
        return client

    @defer.inlineCallbacks
    def test_subscribe_reply_shape_is_upstreams(self):
        client = yield self.client()
        reply = yield client.call("events", "subscribe", ["dispatcher", "life-preserver", "system-state"], request_id="e1")
        self.assertEqual(reply, {"args": {"subscribe": "system-state"}, "id": "e1", "name": "response", "namespace": "events"})
        reply = yield client.call("EVENTS", "subscribe", "dispatcher", request_id="e2")
        self.assertEqual(reply, {"args": {"subscribe": "dispatcher"}, "id": "e2", "name": "response", "namespace": "EVENTS"})
        reply = yield client.call("events", "unsubscribe", ["dispatcher"], request_id="e3")
        self.assertEqual(reply, {"args": {"unsubscribe": "dispatcher"}, "id": "e3", "name": "response", "namespace": "events"})
        reply = yield client.call("events", "subscribe", [], request_id="e4")
        self.assertEqual(reply["args"], {})

    @defer.inlineCallbacks
    def test_unknown_name_is_400_and_changes_nothing(self):
        client = yield self.client()
        reply = yield client.call("events", "subscribe", ["dispatcher", "weather"], request_id="u1")
        self.assertEqual(reply["name"], "error")
        self.assertEqual(reply["id"], "u1")
        self.assertEqual(reply["args"]["code"], "400")
        self.assertIn("'weather'", reply["args"]["detail"])
        self.assertIn("dispatcher, life-preserver, system-state", reply["args"]["detail"])
        self.assertEqual(self.hub.subscriber_count("dispatcher"), 0)
        reply = yield client.call("events", "subscribe", "bridge")
        self.assertEqual(reply["args"]["code"], "400")
        self.assertIn("bridge", reply["args"]["detail"])
        reply = yield client.call("events", "subscribe", {"name": "dispatcher"})
        self.assertEqual(reply["args"]["code"], "400")
        reply = yield client.call("events", "listen", "dispatcher")
        self.assertEqual(reply["args"]["code"], "404")

    @defer.inlineCallbacks
    def test_dispatcher_events_reach_only_subscribers(self):
        subscribed = yield self.client()
        other = yield self.client()
        got_sub, got_other = collect_events(subscribed), collect_events(other)
        yield subscribed.call("events", "subscribe", "dispatcher")
        args = {"state": "finished", "process_id": "job1", "cmd_list": ["true"], "return_codes/true": "0"}
        self.assertEqual(self.hub.publish("dispatcher", args), 1)
        yield wait_for(lambda: got_sub)
        self.assertEqual(got_sub, [{"args": args, "id": "", "name": "dispatcher", "namespace": "events"}])
        # other traffic still flows to the unsubscribed client, which saw no event
        reply = yield other.call("rpc", "identify", "")
        self.assertEqual(reply["name"], "response")
        self.assertEqual(got_other, [])
        yield subscribed.call("events", "unsubscribe", "dispatcher")
        self.assertEqual(self.hub.publish("dispatcher", {"state": "pending"}), 0)

    @defer.inlineCallbacks
    def test_new_subscriber_gets_latest_system_state_at_once(self):
        # The daemon published one real sample when it started.
        self.assertIn("system-state", self.hub.latest)
        client = yield self.client()
        got = collect_events(client)
        reply = yield client.call("events", "subscribe", "system-state")
        # Upstream queued the cached event before the reply; so do we.
        self.assertEqual(len(got), 1)
        self.assertEqual(reply["args"], {"subscribe": "system-state"})
        state = got[0]["args"]
        self.assertEqual(got[0]["name"], "system-state")
        self.assertEqual(got[0]["id"], "")
        for key in ("hostname", "priority", "load", "memory", "disks", "uptime", "cpus"):
            self.assertIn(key, state)
        self.assertRegex(state["priority"], r"^\d+ - (Information|Warning|Critical|Urgent)$")
        self.assertGreater(state["memory"]["total"], 0)
        self.assertEqual(sorted(state["load"]), ["15min", "1min", "5min"])

    @defer.inlineCallbacks
    def test_subscription_ends_with_the_connection(self):
        client = yield self.client()
        yield client.call("events", "subscribe", ["dispatcher", "system-state"])
        self.assertEqual(self.hub.subscriber_count("dispatcher"), 1)
        yield client.close()
        yield wait_for(lambda: self.hub.subscriber_count("dispatcher") == 0)
        self.assertEqual(self.hub.subscriber_count("system-state"), 0)


class WebSocketSubscribeTests(SubscribeMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_needs_authentication(self):
        client = yield open_client(self, self.running)
        reply = yield client.call("events", "subscribe", "dispatcher")
        self.assertEqual(reply["args"]["code"], "401")
        self.assertEqual(self.hub.subscriber_count("dispatcher"), 0)


class UnixSocketSubscribeTests(SubscribeMixin, unittest.TestCase):
    unix = True
