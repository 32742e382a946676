"""``sysadm info``: the summary (pure) and the real client against a real daemon."""

import json
import os
import socket

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.client.info import summary
from tests.support import FakePasswords, make_config, short_tempdir, start_daemon
from tests.test_client_cli import run_cli


class SummaryTests(unittest.TestCase):
    def test_lines_for_people(self):
        system = {"hostname": "nas", "systemversion": "Debian GNU/Linux 12", "arch": "x86_64",
                  "kernelversion": "6.1.0", "uptime": "up 3 days 4:05", "cputype": "Xeon", "cpucores": "2",
                  "totalmem": "3923", "loadavg": [0.1, 0.2, 0.3],
                  "disks": {"/": {"device": "/dev/vda1", "fstype": "ext4", "used": 5 << 30, "total": 20 << 30,
                                  "percent": 25.0}}}
        memory = {"total": "4096", "available": "2048", "free": "1024", "cache": "512"}
        self.assertEqual(summary(system, memory), [
            "Host:     nas",
            "OS:       Debian GNU/Linux 12 (x86_64)",
            "Kernel:   6.1.0",
            "Uptime:   3 days 4:05",
            "CPU:      Xeon, 2 cores; load 0.1 0.2 0.3",
            "Memory:   4.0 GiB total, 2.0 GiB available, 1.0 GiB free, 512.0 MiB cache",
            "Disks:",
            "  MOUNT  DEVICE     TYPE  USED     SIZE      USE",
            "  /      /dev/vda1  ext4  5.0 GiB  20.0 GiB  25.0%",
        ])

    def test_upstream_server_fields_only(self):
        # An upstream server sends neither disks, loadavg nor total/available.
        lines = summary({"hostname": "bsd", "totalmem": "1024"}, {"free": "10", "cache": "1"})
        self.assertIn("Memory:   1.0 GiB total, 10.0 MiB free, 1.0 MiB cache", lines)
        self.assertFalse(any(line.startswith("Disks") for line in lines))


@pytest.mark.slow  # the client runs as a child process
class InfoAgainstTheDaemon(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.home = short_tempdir(self, "cli")
        self.running = yield start_daemon(self, make_config(short_tempdir(self)), passwords=FakePasswords({}))

    @defer.inlineCallbacks
    def test_summary_and_json_over_the_local_socket(self):
        result = yield run_cli(self.home, "--socket", self.running.config.socket, "info")
        self.assertEqual(result.code, 0, result.err)
        self.assertIn(f"Host:     {socket.gethostname()}\n", result.out)
        self.assertIn(f"Kernel:   {os.uname().release}\n", result.out)
        self.assertIn("Memory:   ", result.out)
        self.assertIn("Disks:", result.out)
        result = yield run_cli(self.home, "--socket", self.running.config.socket, "info", "--json")
        self.assertEqual(result.code, 0, result.err)
        data = json.loads(result.out)
        self.assertEqual(set(data), {"systeminfo", "memorystats"})
        self.assertEqual(data["systeminfo"]["kernelversion"], os.uname().release)
        self.assertTrue(data["memorystats"]["free"].isdigit())
