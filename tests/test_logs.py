"""rpc/logs read_logs: time formats, unique keys, caps, retention, and real logs over wss."""

import os
import time
from datetime import datetime
from unittest import mock

from hypothesis import given, strategies as st
from twisted.internet import defer, task
from twisted.trial import unittest

from sysadmd.wire import envelope
from sysadmd.runtime.db import open_database
from sysadmd.wire.envelope import ApiError
from sysadmd.events.hub import DAEMON_EVENT_TYPES
from sysadmd.logstore import OWN_LOGS, LogRetention, LogStore
from sysadmd.rpc import logs as rpclogs
from tests.support import FakePasswords, open_client, short_tempdir, start_daemon

# The logs of a daemon: the store's own and its event types'.
LOG_NAMES = list(OWN_LOGS) + [kind.log for kind in DAEMON_EVENT_TYPES if kind.log]

NOW = 1_800_000_000.0


def local(ts):
    return datetime.fromtimestamp(ts)


class TimeRangeTests(unittest.TestCase):
    def range_of(self, **args):
        return rpclogs.time_range(args, NOW)

    def assertBad(self, words, **args):
        with self.assertRaises(ApiError) as cm:
            self.range_of(**args)
        self.assertEqual(cm.exception.code, "400")
        self.assertIn(words, cm.exception.detail)

    def test_default_is_last_12_hours(self):
        self.assertEqual(self.range_of(), (NOW - 43200, NOW))
        self.assertBad("need a time_format", start_time="1")

    def test_epoch_formats(self):
        self.assertEqual(self.range_of(time_format="time_t_seconds", start_time="100", end_time="200"), (100, 200))
        self.assertEqual(self.range_of(time_format="epoch_mseconds", start_time="1500", end_time="2500"), (1.5, 2.5))
        self.assertEqual(self.range_of(time_format="time_t_seconds", end_time="1000"), (1000 - 43200, 1000))
        self.assertBad("must be a JSON string", time_format="time_t_seconds", start_time=100)
        self.assertBad("'abc' is not a number", time_format="time_t_seconds", start_time="abc")

    def test_relative(self):
        self.assertEqual(self.range_of(time_format="relative_second", start_time="30", end_time="-10"), (NOW - 40, NOW - 10))
        self.assertEqual(self.range_of(time_format="relative_day", start_time="2"), (NOW - 2 * 86400, NOW))
        start, end = self.range_of(time_format="relative_month", start_time="1")
        self.assertEqual(end, NOW)
        a, b = local(start), local(end)
        self.assertEqual((b.year * 12 + b.month) - (a.year * 12 + a.month), 1)
        self.assertEqual(rpclogs.months_before(datetime(2024, 3, 31), 1), datetime(2024, 2, 29))
        self.assertBad("whole months", time_format="relative_month", start_time="1.5")

    def test_qt_and_iso_formats(self):
        start, end = self.range_of(time_format="yyyy-MM-ddThh:mm:ss", start_time="2026-11-23T17:00:01",
                                   end_time="2026-11-23T18:00:01")
        self.assertEqual(end - start, 3600)
        self.assertEqual(local(start), datetime(2026, 11, 23, 17, 0, 1))
        start, _ = self.range_of(time_format="dd.MM.yyyy 'at' hh:mm:ss.zzz", start_time="23.11.2026 at 17:00:01.250")
        self.assertEqual(local(start), datetime(2026, 11, 23, 17, 0, 1, 250000))
        start, _ = self.range_of(time_format="ISODate", start_time="2026-11-23T17:00:01")
        self.assertEqual(local(start), datetime(2026, 11, 23, 17, 0, 1))
        self.assertBad("does not match time_format", time_format="yyyy-MM-dd", start_time="23/11/2026")
        self.assertBad("token 'd' is not supported", time_format="d.M.yyyy", start_time="1.2.2026")
        self.assertBad("time_format must be a string", time_format=5)

    @given(st.text(max_size=40))
    def test_qt_format_translation_fails_only_with_valueerror(self, fmt):
        try:
            pattern = rpclogs.qt_format_to_strptime(fmt)
        except ValueError:
            return
        self.assertIsInstance(pattern, str)

    @given(st.text(alphabet=st.sampled_from("yMdhHmszaApPt'%-: .T0129xyz"), max_size=rpclogs.MAX_FIELD_CHARS),
           st.text(alphabet=st.sampled_from("0123456789-:. TAPMamxyz'%"), min_size=1, max_size=rpclogs.MAX_FIELD_CHARS))
    def test_any_bounded_format_is_a_range_or_a_400(self, fmt, start):
        # "yyyy yyyy" used to escape as re.error (a 500) from strptime.
        try:
            self.range_of(time_format=fmt, start_time=start)
        except ApiError as e:
            self.assertEqual(e.code, "400")

    def test_repeated_fields_are_refused(self):
        self.assertBad("'yyyy' and 'yyyy' read the same field twice", time_format="yyyy yyyy", start_time="2026 2026")
        self.assertBad("'hh' and 'HH' read the same field twice", time_format="hh HH", start_time="10 10")

    def test_bounds_name_the_field_and_cost_little(self):
        # A 2 MiB time_format froze the daemon for 27 s; now every string field is bounded
        # before any parsing, and the error does not echo the input.
        huge = "yyyy-" * (2 * 1024 * 1024 // 5)
        started = time.perf_counter()
        for args, field in (({"time_format": huge, "start_time": "2026"}, "time_format"),
                            ({"time_format": "time_t_seconds", "start_time": "1" * 65}, "start_time"),
                            ({"time_format": "epoch_mseconds", "end_time": "9" * 2_000_000}, "end_time")):
            with self.assertRaises(ApiError) as cm:
                self.range_of(**args)
            self.assertEqual(cm.exception.code, "400")
            self.assertTrue(cm.exception.detail.startswith(f"{field} is "), cm.exception.detail)
            self.assertIn(f"at most {rpclogs.MAX_FIELD_CHARS}", cm.exception.detail)
            self.assertLess(len(cm.exception.detail), 200)
        self.assertLess(time.perf_counter() - started, 0.5)
        # The longest accepted format is cheap to use.
        literal = "x" * (rpclogs.MAX_FIELD_CHARS - len("yyyy-MM-dd '' hh:mm"))
        longest = f"yyyy-MM-dd '{literal}' hh:mm"
        self.assertEqual(len(longest), rpclogs.MAX_FIELD_CHARS)
        start, _ = self.range_of(time_format=longest, start_time=f"2026-01-02 {literal} 10:00")
        self.assertEqual(local(start), datetime(2026, 1, 2, 10, 0))
        self.assertBad("time_format is 65 characters long", time_format=longest + "s", start_time="1")
        for text in ("nan", "inf", "-Infinity", "1e999"):
            self.assertBad("is not a finite number", time_format="time_t_seconds", start_time=text)
        self.assertBad("out of range", time_format="relative_month", start_time="99999999")

    def test_wanted_logs(self):
        self.assertEqual(rpclogs.wanted_logs(None, LOG_NAMES), LOG_NAMES)
        self.assertEqual(rpclogs.wanted_logs([], LOG_NAMES), LOG_NAMES)
        self.assertEqual(rpclogs.wanted_logs(["hostinfo", "nope", "hostinfo"], LOG_NAMES), ["hostinfo"])
        with self.assertRaises(ApiError) as cm:
            rpclogs.wanted_logs(["nope"], LOG_NAMES)
        self.assertIn("logs are hostinfo, dispatcher", cm.exception.detail)
        with self.assertRaises(ApiError):
            rpclogs.wanted_logs(5, LOG_NAMES)
        with self.assertRaises(ApiError) as cm:
            rpclogs.wanted_logs(["hostinfo"] * (rpclogs.MAX_LOG_NAMES + 1), LOG_NAMES)
        self.assertIn(f"logs holds {rpclogs.MAX_LOG_NAMES + 1} names; at most {rpclogs.MAX_LOG_NAMES}", cm.exception.detail)
        with self.assertRaises(ApiError) as cm:
            rpclogs.wanted_logs(["hostinfo", "x" * 1_000_000], LOG_NAMES)
        self.assertTrue(cm.exception.detail.startswith("logs is 1000000 characters long"), cm.exception.detail[:100])
        self.assertEqual(rpclogs.wanted_logs((LOG_NAMES * 3)[:rpclogs.MAX_LOG_NAMES], LOG_NAMES), LOG_NAMES)

    def test_timestamp_keys_never_collide(self):
        keys = rpclogs.timestamp_keys([NOW, NOW, NOW, NOW + 1.5])
        self.assertEqual(len(set(keys)), 4)
        self.assertEqual(keys, sorted(keys))
        self.assertEqual(keys[0], local(NOW).isoformat(timespec="microseconds"))
        self.assertTrue(keys[1].endswith(".000001"))
        self.assertTrue(keys[3].endswith(".500000"))


class StoreTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(NOW)
        db = open_database(os.path.join(short_tempdir(self), "t.sqlite"))
        self.addCleanup(db.close)
        self.store = LogStore(db, self.clock)
        for kind in DAEMON_EVENT_TYPES:
            if kind.log:
                self.store.register_log(kind.log)

    def test_same_second_entries_all_returned_and_caps(self):
        for i in range(10):
            self.store.hostinfo(f"line {i}")
        self.store.append("events-state", {"hostname": "h", "priority": "0 - Information"})
        reply = rpclogs.read_logs(self.store, {}, NOW)
        self.assertEqual(list(reply["hostinfo"].values()), [f"line {i}" for i in range(10)])
        self.assertEqual(list(reply["events-state"].values()), [{"hostname": "h", "priority": "0 - Information"}])
        self.assertNotIn("dispatcher", reply)  # empty logs are omitted
        self.assertNotIn("truncated", reply)
        with mock.patch.object(rpclogs, "MAX_ENTRIES", 4):
            reply = rpclogs.read_logs(self.store, {"logs": "hostinfo"}, NOW)
        self.assertEqual(list(reply["hostinfo"].values()), [f"line {i}" for i in range(6, 10)])
        self.assertEqual(reply["truncated"], {"hostinfo": 6})
        with mock.patch.object(rpclogs, "MAX_BYTES", 13):  # two 6-byte entries fit
            reply = rpclogs.read_logs(self.store, {"logs": ["hostinfo"]}, NOW)
        self.assertEqual(list(reply["hostinfo"].values()), ["line 8", "line 9"])
        self.assertEqual(reply["truncated"], {"hostinfo": 8})

    def test_retention_prunes_at_start_and_daily(self):
        self.store.hostinfo("ancient")
        self.clock.advance(31 * 86400)
        self.store.hostinfo("recent")
        retention = LogRetention(self.store, self.clock, days=30)
        retention.startService()
        self.addCleanup(retention.stopService)
        everything = (0, NOW * 2)
        self.assertEqual([e for _, _, e in self.store.read(["hostinfo"], *everything)], ["recent"])
        self.clock.advance(29 * 86400)
        self.store.hostinfo("newest")
        self.clock.advance(86400)  # day 30 after "recent": not yet older than 30 days
        self.assertEqual(len(self.store.read(["hostinfo"], *everything)), 2)
        self.clock.advance(86400)
        self.assertEqual([e for _, _, e in self.store.read(["hostinfo"], *everything)], ["newest"])
        retention.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SurrogateRowTests(unittest.TestCase):
    """A lone UTF-16 surrogate in one entry must never break read_logs for everyone."""

    def test_new_entries_are_cleaned_and_old_rows_are_repaired_on_read(self):
        clock = task.Clock()
        clock.advance(NOW)
        db = open_database(os.path.join(short_tempdir(self), "t.sqlite"))
        self.addCleanup(db.close)
        store = LogStore(db, clock)
        store.register_log("events-dispatcher")
        # As an older release stored them: escaped in a JSON row, raw text impossible in SQLite.
        db.execute("INSERT INTO logs (ts, log, entry, is_json) VALUES (?, 'events-dispatcher', ?, 1)",
                   (NOW - 2, '{"cmd":"echo \\ud800","ok":"fine"}'))
        store.append("events-dispatcher", {"cmd": "touch \ud800x", "list": ["\udfff"]})
        store.append("hostinfo", "login from \ud800")
        store.append("hostinfo", "the next entry of the same batch")
        reply = rpclogs.read_logs(store, {"logs": ["events-dispatcher", "hostinfo"]}, NOW)
        text = envelope.encode({"args": reply, "id": "x", "name": "response", "namespace": "rpc"})
        text.encode("utf-8")  # the reply can be sent
        self.assertNotIn("\ud800", text)
        entries = list(reply["events-dispatcher"].values())
        self.assertEqual(entries[0], {"cmd": "echo \ufffd", "ok": "fine"})
        self.assertEqual(entries[1], {"cmd": "touch \ufffdx", "list": ["\ufffd"]})
        self.assertEqual(sorted(reply["hostinfo"].values()),
                         ["login from \ufffd", "the next entry of the same batch"])


class ReadLogsOverWssTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.running = yield start_daemon(self, passwords=FakePasswords({"root": "pw"}))

    @defer.inlineCallbacks
    def test_real_connections_logins_and_events(self):
        intruder = yield open_client(self, self.running)
        failed = yield intruder.call("rpc", "auth", {"username": "root", "password": "wrong"})
        self.assertEqual(failed["args"]["code"], "401")
        client = yield open_client(self, self.running)
        yield client.call("rpc", "auth", {"username": "root", "password": "pw"})
        self.running.server.events.publish("dispatcher", {"state": "finished", "process_id": "j1"})

        reply = yield client.call("rpc", "logs", {"action": "read_logs"}, request_id="l1")
        self.assertEqual(reply["name"], "response")
        self.assertEqual(reply["id"], "l1")
        logs = reply["args"]
        hostinfo = list(logs["hostinfo"].values())
        self.assertIn("New Connection: 127.0.0.1", hostinfo)
        self.assertTrue(any(e.startswith("User Login Attempt: root   Success: false") for e in hostinfo), hostinfo)
        self.assertTrue(any(e.startswith("User Login Attempt: root   Success: true") for e in hostinfo), hostinfo)
        self.assertEqual(list(logs["events-dispatcher"].values()), [{"state": "finished", "process_id": "j1"}])
        state = list(logs["events-state"].values())[0]  # the sample published at start
        self.assertIn("hostname", state)
        for key in logs["hostinfo"]:
            datetime.fromisoformat(key)
            self.assertRegex(key, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$")

        past = str(int(time.time()) - 7200)
        reply = yield client.call("rpc", "logs", {"action": "read_logs", "logs": ["hostinfo", "weather"],
                                                  "time_format": "time_t_seconds", "start_time": past, "end_time": past})
        self.assertEqual(reply["args"], {})
        reply = yield client.call("rpc", "logs", {"action": "read_logs", "logs": "events-dispatcher",
                                                  "time_format": "relative_second", "start_time": "60"})
        self.assertEqual(list(reply["args"]), ["events-dispatcher"])

    @defer.inlineCallbacks
    def test_errors(self):
        client = yield open_client(self, self.running)
        reply = yield client.call("rpc", "logs", {"action": "read_logs"})
        self.assertEqual(reply["args"]["code"], "401")
        yield client.call("rpc", "auth", {"username": "root", "password": "pw"})
        for args, words in (({"action": "tail"}, "read_logs"), ("read_logs", "must be a JSON object"),
                            ({"action": "read_logs", "logs": ["x"]}, "logs are hostinfo"),
                            ({"action": "read_logs", "time_format": "whenever", "start_time": "x"}, "is not supported"),
                            ({"action": "read_logs", "time_format": "yyyy-" * 400_000, "start_time": "1"},
                             "time_format is 2000000 characters long; at most 64")):
            reply = yield client.call("rpc", "logs", args)
            self.assertEqual(reply["args"]["code"], "400", args)
            self.assertIn(words, reply["args"]["detail"])
        query = yield client.call("rpc", "query", {})
        self.assertEqual(query["args"]["rpc/logs"], "read/write")
