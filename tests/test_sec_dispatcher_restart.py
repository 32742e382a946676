"""Issue 8 item 5: a SIGKILLed daemon's job processes are ended when it starts again.

A real ``twistd -n sysadmd`` runs a job whose workers detached (``setsid``, one ignores
SIGTERM); the daemon is SIGKILLed, the workers live on as orphans; a decoy process
carries a marker that differs only in its random part.  After the restart ``/proc``
shows the workers gone and the decoy alive.
"""

from __future__ import annotations

import pytest
import os
import subprocess
import sys


from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.dispatcher import procscan
from tests.support import alive, short_tempdir
from tests.test_dispatcher_durability import TwistdChild, eventually
from tests.test_dispatcher_wss import EventLog
from tests.test_sec_dispatcher import kill_quietly

# Starts real daemons or child processes: skipped by ./scripts/test.sh -m "not slow".
pytestmark = pytest.mark.slow


PY = sys.executable
MAIN = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Two detached workers: each prints its pid, one ignores SIGTERM; the leader waits.
WORKERS = """
import os, signal, sys, time
for stubborn in (False, True):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            if stubborn:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print('worker', os.getpid(), int(stubborn), flush=True)
            time.sleep(1000)
        os._exit(0)
    os.wait()
time.sleep(1000)
"""


class CrashOrphanTests(TwistdChild, unittest.TestCase):
    timeout = 90

    def spawn_twistd(self, state_dir):
        conf = os.path.join(state_dir, "sysadmd.conf")
        with open(conf, "w") as f:
            f.write("JOB_KILL_GRACE=1\n")
        return super().spawn_twistd(state_dir, "--config", conf)

    @defer.inlineCallbacks
    def test_orphans_of_a_killed_daemon_are_ended_on_restart_and_a_lookalike_survives(self):
        state_dir = short_tempdir(self)
        socket = os.path.join(state_dir, "sysadmd.sock")
        script = os.path.join(state_dir, "workers.py")
        with open(script, "w") as f:
            f.write(WORKERS)
        proc, transport = self.spawn_twistd(state_dir)
        client = yield self.connect(proc, socket)
        log = EventLog(client)
        yield client.call("events", "subscribe", "dispatcher")
        reply = yield client.call("rpc", "dispatcher", {"action": "run", "orphans": f"{PY} {script}"})
        self.assertEqual(reply["args"], {"started": ["orphans"]})

        def workers():
            found = {}
            for e in log.of("orphans"):
                for value in e.values():
                    if isinstance(value, str):
                        for line in value.splitlines():
                            if line.startswith("worker "):
                                _, pid, stubborn = line.split()
                                found[int(stubborn)] = int(pid)
            return [found[0], found[1]] if len(found) == 2 else None

        pids = yield eventually(workers, what="the two workers")  # [meek, stubborn]
        for pid in pids:
            self.addCleanup(kill_quietly, pid)
        with open(f"/proc/{pids[0]}/environ", "rb") as f:
            [marker] = procscan.markers_in(f.read())
        # Whatever happens, nothing of the job outlives the test (the leader included).
        self.addCleanup(lambda: [kill_quietly(pid) for pid in procscan.scan([marker]).get(marker, [])])
        instance, seq, secret = marker.split(":")
        self.assertEqual(len(secret), 16)

        transport.signalProcess("KILL")
        yield proc.ended
        yield client.closed
        self.assertTrue(all(alive(pid) for pid in pids), "the workers should outlive the SIGKILLed daemon")

        # Look-alikes: same instance and job, another random part; and the marker plus a character.
        lookalikes = []
        for fake in (f"{instance}:{seq}:{secret[:-1]}{'0' if secret[-1] != '0' else '1'}", marker + "0"):
            child = subprocess.Popen(["sleep", "1000"], env={"PATH": "/usr/bin:/bin", procscan.ENV_NAME: fake})
            self.addCleanup(child.wait)
            self.addCleanup(kill_quietly, child.pid)
            lookalikes.append(child)

        proc, transport = self.spawn_twistd(state_dir)
        client = yield self.connect(proc, socket)
        yield eventually(lambda: not any(alive(pid) for pid in pids), timeout=20, what="the orphans to be ended")
        reply = yield client.call("rpc", "dispatcher", {"action": "history", "job_id": "orphans"})
        [job] = reply["args"]["history"]
        self.assertEqual(job["interrupted"], "true")
        for child in lookalikes:
            self.assertIsNone(child.poll(), "a process with a similar marker was touched")
            self.assertTrue(alive(child.pid))
        yield eventually(lambda: "sent them SIGKILL" in b"".join(proc.output).decode(errors="replace"),
                         what="the SIGKILL log line")
        output = b"".join(proc.output).decode(errors="replace")
        self.assertIn("job orphans was cut off by a crash and left", output)
        self.assertIn("sent them SIGTERM", output)
        self.assertIn(f"outlived SIGTERM (pids {pids[1]})", output)
        yield client.close()
        transport.signalProcess("TERM")
        yield proc.ended


class SystemdUnitTests(unittest.TestCase):
    """The shipped units: jobs die with the daemon's cgroup; systemd itself accepts them."""

    UNITS = {"sysadmd.service": "sysadmd", "sysadm-bridge.service": "sysadm-bridge"}

    def read(self, name):
        import configparser
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str
        with open(os.path.join(MAIN, "conf", "systemd", name)) as f:
            parser.read_file(f)
        return parser

    def test_units_keep_jobs_in_the_cgroup_and_restart_on_failure(self):
        for name, plugin in self.UNITS.items():
            service = self.read(name)["Service"]
            self.assertEqual(service["KillMode"], "control-group", name)
            self.assertEqual(service["Restart"], "on-failure", name)
            self.assertEqual(service["ExecReload"], "/bin/kill -HUP $MAINPID", name)
            argv = service["ExecStart"].split()
            self.assertTrue(argv[0].endswith("/twistd"), name)
            self.assertEqual(argv[1:], ["-n", "--pidfile=", plugin], name)

    def test_systemd_analyze_verify_accepts_them(self):
        import shutil
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise unittest.SkipTest("systemd-analyze is not installed")
        twistd = os.path.join(os.path.dirname(PY), "twistd")
        directory = short_tempdir(self)
        paths = []
        for name in self.UNITS:
            with open(os.path.join(MAIN, "conf", "systemd", name)) as f:
                text = f.read().replace("/opt/sysadmd/.venv/bin/twistd", twistd)
            path = os.path.join(directory, name)
            with open(path, "w") as f:
                f.write(text)
            paths.append(path)
        done = subprocess.run([analyze, "verify", "--man=no", *paths], capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual([line for line in done.stderr.splitlines() if "sysadm" in line], [], done.stderr)
