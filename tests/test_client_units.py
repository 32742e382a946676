"""The client's pure parts: job output accounting, pinning, URLs, arguments, credentials."""

import io
import os
import stat

from twisted.trial import unittest

from sysadmd.client.calls import parse_args_json
from sysadmd.client.connect import parse_url, resolve_credentials
from sysadmd.client.errors import ClientError
from sysadmd.client.jobs import new_job_id
from sysadmd.client.jobwatch import JobFollower, exit_status
from sysadmd.client.knownhosts import CertificateChanged, KnownHosts, endpoint_name, normalize_fingerprint
from tests.support import short_tempdir

FP1 = ":".join(["AB"] * 32)
FP2 = ":".join(["CD"] * 32)


def running(job, cmds, current, delta, done=None):
    args = {"process_id": job, "state": "running", "cmd_list": cmds, "current_cmd": current, current: delta}
    for cmd, (log, code) in (done or {}).items():
        args[cmd] = log
        args[f"return_codes/{cmd}"] = code
    return args


def finished(job, cmds, logs):
    args = {"process_id": job, "state": "finished", "cmd_list": cmds}
    for cmd, (log, code) in logs.items():
        args[cmd] = log
        args[f"return_codes/{cmd}"] = code
    return args


def text(outputs, stream="out"):
    return "".join(t for s, t in outputs if s == stream)


class JobFollowerTests(unittest.TestCase):
    def test_deltas_then_whole_log_print_each_byte_once(self):
        f = JobFollower("j", ["a"])
        self.assertEqual(text(f.feed(running("j", ["a"], "a", ""))), "")
        self.assertEqual(text(f.feed(running("j", ["a"], "a", "one\n"))), "one\n")
        self.assertEqual(text(f.feed(running("j", ["a"], "a", "two\n"))), "two\n")
        out = f.feed(finished("j", ["a"], {"a": ("one\ntwo\nthree\n", "0")}))
        self.assertEqual(text(out), "three\n")
        self.assertTrue(f.done)
        self.assertEqual(f.exit_code, 0)
        self.assertEqual(f.feed(finished("j", ["a"], {"a": ("x", "0")})), [])

    def test_other_jobs_are_ignored(self):
        f = JobFollower("j", ["a"])
        self.assertEqual(f.feed(running("k", ["a"], "a", "nope")), [])
        self.assertEqual(f.feed({"state": "finished"}), [])
        self.assertFalse(f.done)

    def test_chain_progress_and_first_failure_decides(self):
        cmds = ["a", "b", "c"]
        f = JobFollower("j", cmds)
        self.assertEqual(text(f.feed(running("j", cmds, "a", "A\n")), "err"), "[1/3] a\n")
        out = f.feed(running("j", cmds, "b", "", {"a": ("A\nA2\n", "0")}))
        self.assertEqual(text(out), "A2\n")
        self.assertEqual(text(out, "err"), "[2/3] b\n")
        # Skipped commands may come as -1 (sysadmd) or be absent (upstream): b decides.
        out = f.feed(finished("j", cmds, {"a": ("A\nA2\n", "0"), "b": ("B\n", "4"), "c": ("", "-1")}))
        self.assertEqual(text(out), "B\n")
        self.assertIn("stopped after `b` exited with 4; 1 command(s) not run", text(out, "err"))
        self.assertEqual(f.exit_code, 4)

    def test_killed_or_unstartable_is_255(self):
        f = JobFollower("j", ["a"])
        out = f.feed(finished("j", ["a"], {"a": ("cannot start 'a'\n", "-1")}))
        self.assertEqual(f.exit_code, 255)
        self.assertIn("could not start or was killed", text(out, "err"))
        g = JobFollower("j", ["a"])
        g.kill_requested = True
        self.assertIn("was killed", text(g.feed(finished("j", ["a"], {"a": ("", "-1")})), "err"))

    def test_cut_logs_continue_where_the_deltas_stopped(self):
        f = JobFollower("j", ["a"])
        f.feed(running("j", ["a"], "a", "0123456789"))
        # The whole log kept only its tail: bytes 5.. of 14.
        out = f.feed(finished("j", ["a"], {"a": ("[… 5 bytes cut; full output in the job log]\n56789ABCD", "0")}))
        self.assertEqual(text(out), "ABCD")

    def test_cut_delta_asks_for_the_hole_and_prints_no_note(self):
        f = JobFollower("j", ["a"])
        note = "[… 100 bytes cut; full output in the job log]\n"
        out = f.feed(running("j", ["a"], "a", note + "xyz"))
        self.assertEqual(text(out), "")  # the hole is read from the server first (tests/test_run_output.py)
        [(kind, segment)] = out
        self.assertEqual((kind, segment.start, segment.body), ("fetch", 100, b"xyz"))

    def test_exit_status(self):
        self.assertEqual([exit_status(v) for v in ("0", "3", "-1", "300", "junk", 2)], [0, 3, 255, 255, 255, 2])

    def test_job_ids_are_readable_and_distinct(self):
        a, b = new_job_id("al ice"), new_job_id("al ice")
        self.assertTrue(a.startswith("cli-al_ice-"))
        self.assertNotEqual(a, b)


class KnownHostsTests(unittest.TestCase):
    def setUp(self):
        self.path = os.path.join(short_tempdir(self), "sub", "known_hosts")
        self.hosts = KnownHosts(self.path)

    def test_first_use_pins_then_accepts_then_refuses(self):
        note = self.hosts.verify("h:1", FP1)
        self.assertEqual(note, f"Pinned certificate for h:1 SHA-256 {FP1}")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.path)).st_mode), 0o700)
        self.assertIsNone(self.hosts.verify("h:1", FP1))
        with self.assertRaises(CertificateChanged) as caught:
            self.hosts.verify("h:1", FP2)
        self.assertEqual(caught.exception.exit_code, 3)
        self.assertIn("sysadm known-hosts forget h:1", caught.exception.message)
        self.assertTrue(self.hosts.forget("h:1"))
        self.assertFalse(self.hosts.forget("h:1"))
        self.assertIsNotNone(self.hosts.verify("h:1", FP2))

    def test_explicit_fingerprint_replaces_the_pin(self):
        self.hosts.verify("h:1", FP1)
        self.assertIn("Pinned", self.hosts.verify("h:1", FP2, explicit=FP2.replace(":", "").lower()))
        self.assertEqual(self.hosts.lookup("h:1"), FP2)
        with self.assertRaises(CertificateChanged):
            self.hosts.verify("h:1", FP2, explicit=FP1)

    def test_comments_survive_and_names_normalize(self):
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "w") as f:
            f.write("# mine\n")
        self.hosts.store(endpoint_name("::1", 5), FP1)
        self.assertEqual(self.hosts.entries(), [("[::1]:5", FP1)])
        with open(self.path) as f:
            self.assertTrue(f.read().startswith("# mine\n"))
        self.assertEqual(normalize_fingerprint("sha256:" + FP1.replace(":", "").lower()), FP1)
        self.assertRaises(ClientError, normalize_fingerprint, "abc")


class ArgumentTests(unittest.TestCase):
    def test_urls(self):
        self.assertEqual(parse_url("nas.lan", 12150).url, "wss://nas.lan:12150/")
        self.assertEqual(parse_url("wss://[::1]:99/x", 12150).name, "[::1]:99")
        for bad in ("ws://h", "https://h", "wss://", "wss://h:notaport"):
            with self.assertRaises(ClientError) as caught:
                parse_url(bad, 1)
            self.assertEqual(caught.exception.exit_code, 2)

    def test_args_json(self):
        self.assertEqual(parse_args_json(None, io.StringIO()), {})
        self.assertEqual(parse_args_json("-", io.StringIO('{"a":1}')), {"a": 1})
        with self.assertRaises(ClientError) as caught:
            parse_args_json('{"a":\n 1,}', io.StringIO())
        self.assertIn("line 2, column 4", caught.exception.message)
        self.assertRaises(ClientError, parse_args_json, "-", io.StringIO("  "))

    def test_credentials(self):
        self.assertFalse(resolve_credentials(None, None, None, io.StringIO(), {}).given)
        creds = resolve_credentials("al", None, None, io.StringIO(), {"SYSADM_PASSWORD": "s"})
        self.assertEqual((creds.user, creds.password), ("al", "s"))
        self.assertEqual(resolve_credentials(None, None, None, io.StringIO(), {"SYSADM_TOKEN": "t"}).token, "t")
        with self.assertRaises(ClientError) as caught:
            resolve_credentials("al", None, None, io.StringIO(), {})
        self.assertIn("SYSADM_PASSWORD", caught.exception.message)
        with self.assertRaises(ClientError):
            resolve_credentials("al", None, "tok", io.StringIO(), {})
        with self.assertRaises(ClientError) as caught:
            resolve_credentials(None, "/nonexistent/key.pem", None, io.StringIO(), {})
        self.assertIn("cannot read key file", caught.exception.message)
