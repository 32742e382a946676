"""sysadm/firewall on nftables.

The rules are only ever applied inside network namespaces this test creates (two of them,
``sysadmd-fw-<random>-a`` and ``-b``, joined by a veth pair with addresses private to
those namespaces); the machine's own ruleset is never touched.  A real ``twistd sysadmd``
runs inside namespace A and is driven over its local Unix socket (a path, so it crosses
namespaces); connections from namespace B to listeners in A show which ports the rules
really let through.  The backend that ran is printed (``pytest -s`` shows it).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys

import pytest
from twisted.internet import defer, error, reactor
from twisted.trial import unittest

from sysadmd.client.wsclient import connect_unix
from sysadmd.sysclasses import firewall as fw
from sysadmd.wire.envelope import ApiError
from tests.keys_support import error_code
from tests.support import FakePasswords, make_config, open_client, short_tempdir, start_daemon
from tests.test_client_cli import run_cli
from tests.test_twistd import ROOT, SOCKET_LISTENING, TWISTD, DaemonProcess, child_env

ADMIN_PORT = 12150
ADDR_A, ADDR_B = "10.254.77.1", "10.254.77.2"  # exist only inside the test's namespaces

SERVICES = """\
# a services(5) file in the real format
tcpmux\t\t1/tcp\t\t\t\t# TCP port service multiplexer
ssh\t\t22/tcp\t\t\t\t# SSH Remote Login Protocol
domain\t\t53/tcp
domain\t\t53/udp
http\t\t80/tcp\t\twww\t\t# WorldWideWeb HTTP
kerberos\t88/tcp\t\tkerberos5 krb5 kerberos-sec
bogus\t\t70000/sctp
"""


class Units(unittest.TestCase):
    def test_ports_are_validated_strictly(self):
        self.assertEqual(fw.parse_port("22/tcp"), "22/tcp")
        self.assertEqual(fw.parse_port("053/udp"), "53/udp")
        self.assertEqual(fw.parse_port("8000-8010/tcp"), "8000-8010/tcp")
        for bad in ("0/tcp", "65536/tcp", "22", "22/sctp", "22/TCP", " 22/tcp", "22/tcp\n", "10-10/tcp", "20-10/udp",
                    "1-70000/tcp", "22/tcp; flush ruleset", "-1/tcp", 22, None, ["22/tcp"]):
            with self.assertRaises(ApiError, msg=repr(bad)) as e:
                fw.parse_port(bad)
            self.assertEqual(e.exception.code, "400")
        self.assertEqual(fw.ports_arg({"ports": ["80/tcp", "53/udp"]}), ["80/tcp", "53/udp"])
        with self.assertRaises(ApiError) as e:
            fw.ports_arg({"ports": ["80/tcp", "x"]})
        self.assertIn("'ports'[1]", e.exception.detail)

    def test_known_ports_from_a_services_file(self):
        path = os.path.join(short_tempdir(self), "services")
        with open(path, "w") as f:
            f.write(SERVICES)
        ports = fw.known_ports(path)
        self.assertEqual(ports["22/tcp"], {"name": "ssh", "port": "22/tcp", "description": "SSH Remote Login Protocol"})
        self.assertEqual(ports["53/udp"], {"name": "domain", "port": "53/udp", "description": ""})
        self.assertEqual(ports["88/tcp"]["description"], "kerberos5 krb5 kerberos-sec")
        self.assertEqual(sorted(ports), ["1/tcp", "22/tcp", "53/tcp", "53/udp", "80/tcp", "88/tcp"])
        if os.path.exists(fw.SERVICES_FILE):
            self.assertEqual(fw.known_ports()["22/tcp"]["name"], "ssh")

    def test_admin_ports_come_from_the_listener_settings(self):
        self.assertEqual(fw.endpoint_port("12150"), 12150)
        self.assertEqual(fw.endpoint_port("tcp:12150:interface=127.0.0.1"), 12150)
        self.assertEqual(fw.endpoint_port("ssl:port=443"), 443)
        self.assertEqual(fw.endpoint_port("tcp:0:interface=127.0.0.1"), None)
        self.assertEqual(fw.endpoint_port("unix:/x"), None)
        self.assertEqual(fw.endpoint_port(""), None)
        cfg = make_config(short_tempdir(self), PORT="12150", PORT_REST="tcp:12151")
        self.assertEqual(fw.admin_ports_of(cfg), [12150, 12151])
        cfg = make_config(short_tempdir(self), PORT="12150", BRIDGE_CONNECTIONS_ONLY="true")
        self.assertEqual(fw.admin_ports_of(cfg), [])

    def test_the_script_replaces_the_whole_table_and_keeps_the_admin_port(self):
        script = fw.running_script(["22/tcp", "8000-8010/tcp", "53/udp"], [12150])
        lines = script.splitlines()
        self.assertEqual(lines[:3], ["table inet sysadmd", "delete table inet sysadmd", "table inet sysadmd {"])
        self.assertIn("policy drop;", script)
        self.assertIn('tcp dport { 12150 } accept comment "admin port"', script)
        self.assertIn("tcp dport { 22, 8000-8010 } accept", script)
        self.assertIn("udp dport { 53 } accept", script)
        self.assertEqual(fw.stopped_script(), "table inet sysadmd\ndelete table inet sysadmd\n")

    def test_ufw_and_firewalld_are_detected(self):
        d = short_tempdir(self)
        conf, proc = os.path.join(d, "ufw.conf"), os.path.join(d, "proc")
        os.makedirs(os.path.join(proc, "42"))
        with open(os.path.join(proc, "42", "comm"), "w") as f:
            f.write("bash\n")
        self.assertIsNone(fw.other_manager(conf, proc))
        with open(conf, "w") as f:
            f.write("# /etc/ufw/ufw.conf\nENABLED=no\nLOGLEVEL=low\n")
        self.assertIsNone(fw.other_manager(conf, proc))
        with open(conf, "w") as f:
            f.write("ENABLED=yes\n")
        self.assertEqual(fw.other_manager(conf, proc), "ufw")
        os.unlink(conf)
        os.makedirs(os.path.join(proc, "77"))
        with open(os.path.join(proc, "77", "comm"), "w") as f:
            f.write("firewalld\n")
        self.assertEqual(fw.other_manager(conf, proc), "firewalld")

    def test_changes_are_refused_beside_another_manager(self):
        d = short_tempdir(self)
        firewall = fw.Firewall(reactor, "/nonexistent/nft", d, lambda: [12150], manager=lambda: "ufw")
        for call in (lambda: firewall.start(None, {}), lambda: firewall._change_ports(True)(None, {"ports": "80/tcp"}),
                     lambda: firewall._set_enabled(True)(None, {})):
            with self.assertRaises(ApiError) as e:
                call()
            self.assertEqual(e.exception.code, "409")
            self.assertIn("ufw manages this host's firewall", e.exception.detail)
        self.assertFalse(os.path.exists(os.path.join(d, fw.STATE_FILE)))

    def test_an_unreadable_state_file_is_kept_aside_and_the_daemon_still_starts(self):
        d = short_tempdir(self)
        with open(os.path.join(d, fw.STATE_FILE), "w") as f:
            f.write('{"open": ["22/tcp; flush ruleset"], "enabled": true}')
        firewall = fw.Firewall(reactor, "/nonexistent/nft", d, lambda: [12150])
        self.assertEqual((firewall.open_ports, firewall.enabled), (["22/tcp"], False))
        with open(os.path.join(d, fw.STATE_FILE + ".unreadable")) as f:
            self.assertIn("flush ruleset", f.read())
        self.assertFalse(os.path.exists(os.path.join(d, fw.STATE_FILE)))
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_status_reports_nft_failures_instead_of_not_running(self):
        d = short_tempdir(self)
        nft = os.path.join(d, "nft")
        with open(nft, "w") as f:  # what nft says to an unprivileged caller
            f.write("#!/bin/sh\necho 'Error: Could not process rule: Operation not permitted' >&2\nexit 1\n")
        os.chmod(nft, 0o755)
        firewall = fw.Firewall(reactor, nft, d, lambda: [12150], manager=lambda: None)
        with self.assertRaises(ApiError) as e:
            yield firewall.status(None, {})
        self.assertEqual(e.exception.code, "400")
        self.assertIn("Operation not permitted", e.exception.detail)
        with open(nft, "w") as f:  # nft's answer when the table does not exist
            f.write("#!/bin/sh\necho 'Error: No such file or directory; did you mean table' >&2\nexit 1\n")
        self.assertEqual((yield firewall.status(None, {})),
                         {"is_running": "false", "is_enabled": "false", "backend": "nftables"})


@pytest.mark.slow  # a real daemon
class Rights(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_limited_users_read_but_get_403_on_changes(self):
        if not fw.available(make_config(short_tempdir(self))):
            raise unittest.SkipTest("nft is not installed, or not root")
        cfg = make_config(short_tempdir(self), LIMITED_ACCESS_GROUPS="daemon")
        running = yield start_daemon(self, cfg, passwords=FakePasswords({"daemon": "pw"}))
        client = yield open_client(self, running)
        reply = yield client.call("rpc", "auth", {"username": "daemon", "password": "pw"})
        self.assertEqual(reply["name"], "response", reply)
        self.assertEqual((yield client.call("rpc", "query", {}))["args"]["sysadm/firewall"], "read")
        reply = yield client.call("sysadm", "firewall", {"action": "list_open"})
        self.assertEqual(reply["args"], {"openports": ["22/tcp"]})
        for action in ("open", "close", "start", "stop", "restart", "enable", "disable"):
            reply = yield client.call("sysadm", "firewall", {"action": action, "ports": "80/tcp"})
            self.assertEqual(error_code(reply), "403", action)
        self.assertFalse(os.path.exists(os.path.join(cfg.state_dir, fw.STATE_FILE)))


def sh(*argv, check=True):
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=30)


class Namespaces:
    """Two network namespaces joined by a veth pair; deleted (with what runs in them) at cleanup."""

    def __init__(self, testcase):
        tag = secrets.token_hex(3)
        self.a, self.b = f"sysadmd-fw-{tag}-a", f"sysadmd-fw-{tag}-b"
        sh("ip", "netns", "add", self.a)
        testcase.addCleanup(self.delete, self.a)
        sh("ip", "netns", "add", self.b)
        testcase.addCleanup(self.delete, self.b)
        sh("ip", "link", "add", f"sdfa{tag}", "netns", self.a, "type", "veth", "peer", "name", f"sdfb{tag}",
           "netns", self.b)
        for ns, dev, addr in ((self.a, f"sdfa{tag}", ADDR_A), (self.b, f"sdfb{tag}", ADDR_B)):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")

    @staticmethod
    def delete(name):
        pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
        for pid in pids:  # only processes this test started live in its namespaces
            try:
                os.kill(int(pid), 9)
            except OSError:
                pass
        sh("ip", "netns", "del", name, check=False)

    def nft_table(self):
        result = sh("ip", "netns", "exec", self.a, "nft", "list", "table", "inet", "sysadmd", check=False)
        return result.stdout if result.returncode == 0 else None

    def reaches(self, port):
        """Whether a TCP connection from namespace B to *port* in A is accepted."""
        probe = "import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.7)\n" \
                "except OSError:\n sys.exit(1)\n"
        return sh("ip", "netns", "exec", self.b, sys.executable, "-c", probe, ADDR_A, str(port), check=False).returncode == 0

    def listen(self, testcase, ports):
        """A process in A accepting on *ports* (and closing each connection)."""
        code = ("import socket,select,sys\nss=[]\nfor p in sys.argv[1:]:\n s=socket.socket(); "
                "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(('0.0.0.0',int(p))); s.listen(16); ss.append(s)\n"
                "print('up',flush=True)\nwhile True:\n r,_,_=select.select(ss,[],[])\n for s in r: s.accept()[0].close()\n")
        child = subprocess.Popen(["ip", "netns", "exec", self.a, sys.executable, "-c", code, *map(str, ports)],
                                 stdout=subprocess.PIPE, text=True)
        testcase.addCleanup(child.wait)
        testcase.addCleanup(child.kill)
        assert child.stdout.readline().strip() == "up"


def needs_netns():
    if os.geteuid() != 0 or not shutil.which("ip") or not fw.available(make_config("/tmp")):
        raise unittest.SkipTest("needs root, ip(8) and nft to create network namespaces")


@pytest.mark.slow  # namespaces, a real twistd daemon, real nft
class InNamespaces(unittest.TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self):
        needs_netns()
        self.ns = Namespaces(self)
        self.state_dir = short_tempdir(self, "fw")
        self.socket = os.path.join(self.state_dir, "s.sock")
        self.ns.listen(self, [8081, 8082])
        yield self.start_daemon()
        print(f"\nsysadm/firewall backend that ran: nftables ({fw.FAMILY} {fw.TABLE}) in netns {self.ns.a}")

    @defer.inlineCallbacks
    def start_daemon(self):
        proto = DaemonProcess()
        args = ["ip", "netns", "exec", self.ns.a, *TWISTD, "sysadmd", "--port", f"tcp:{ADMIN_PORT}",
                "--state-dir", self.state_dir, "--socket", self.socket]
        transport = reactor.spawnProcess(proto, "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else shutil.which("ip"),
                                         args, env=child_env(), path=ROOT)
        proto.transport = transport

        def kill():
            if not proto.ended.called:
                try:
                    transport.signalProcess("KILL")
                except error.ProcessExitedAlready:
                    pass
                return proto.ended

        self.addCleanup(kill)
        yield proto.wait_for(SOCKET_LISTENING)
        self.daemon = proto
        self.client = yield connect_unix(reactor, self.socket)
        self.addCleanup(self.client.close)

    @defer.inlineCallbacks
    def stop_daemon(self):
        yield self.client.close()
        self.daemon.transport.signalProcess("TERM")
        yield self.daemon.ended

    @defer.inlineCallbacks
    def fw(self, action, **args):
        reply = yield self.client.call("sysadm", "firewall", dict(args, action=action))
        return reply

    @defer.inlineCallbacks
    def ok(self, action, **args):
        reply = yield self.fw(action, **args)
        self.assertEqual(reply["name"], "response", reply)
        return reply["args"]

    @defer.inlineCallbacks
    def test_open_close_start_stop_with_real_connections(self):
        self.assertEqual((yield self.ok("status")), {"is_running": "false", "is_enabled": "false", "backend": "nftables"})
        self.assertEqual((yield self.ok("list_open")), {"openports": ["22/tcp"]})
        known = yield self.ok("known_ports")
        self.assertEqual(known["22/tcp"]["port"], "22/tcp")
        self.assertTrue(self.ns.reaches(8081) and self.ns.reaches(8082), "no firewall yet: both reachable")
        self.assertEqual((yield self.ok("open", ports=["8081/tcp", "5000-5010/udp"])), {"result": "success"})
        self.assertEqual((yield self.ok("list_open")), {"openports": ["22/tcp", "8081/tcp", "5000-5010/udp"]})
        self.assertIsNone(self.ns.nft_table(), "stopped: opening only stores the port")
        self.assertEqual((yield self.ok("start")), {"result": "success"})
        table = self.ns.nft_table()
        self.assertIn("policy drop", table)
        self.assertIn(f"tcp dport {ADMIN_PORT} accept", table)
        self.assertIn("tcp dport { 22, 8081 } accept", table)
        self.assertIn("udp dport 5000-5010 accept", table)
        self.assertEqual((yield self.ok("status"))["is_running"], "true")
        self.assertTrue(self.ns.reaches(8081), "opened port")
        self.assertFalse(self.ns.reaches(8082), "closed port is dropped")
        self.assertTrue(self.ns.reaches(ADMIN_PORT), "sysadmd's own port stays open")
        self.assertEqual((yield self.ok("close", ports="8081/tcp")), {"result": "success"})
        self.assertNotIn("8081", self.ns.nft_table())
        self.assertFalse(self.ns.reaches(8081), "closed again while running")
        self.assertEqual((yield self.ok("open", ports="8082/tcp")), {"result": "success"})
        self.assertTrue(self.ns.reaches(8082))
        self.assertEqual((yield self.ok("restart")), {"result": "success"})
        self.assertTrue(self.ns.reaches(8082) and not self.ns.reaches(8081))
        self.assertEqual((yield self.ok("stop")), {"result": "success"})
        self.assertIsNone(self.ns.nft_table())
        self.assertTrue(self.ns.reaches(8081), "stopped: everything reachable again")
        self.assertEqual((yield self.ok("status"))["is_running"], "false")
        for bad in ("99999/tcp", "80", "80/tcp;flush ruleset", ["80/tcp", 81]):
            reply = yield self.fw("open", ports=bad)
            self.assertEqual(error_code(reply), "400", bad)
        self.assertEqual((yield self.ok("list_open")), {"openports": ["22/tcp", "8082/tcp", "5000-5010/udp"]})

    @defer.inlineCallbacks
    def test_the_cli_verbs(self):
        home = short_tempdir(self, "cli")

        def cli(*argv):
            return run_cli(home, "--socket", self.socket, "firewall", *argv)

        result = yield cli("status")
        self.assertEqual((result.code, result.out.strip()), (0, "firewall stopped, not enabled at start (backend nftables)"),
                         result.err)
        result = yield cli("open", "8081/tcp", "53/udp")
        self.assertEqual((result.code, result.out.strip()), (0, "opened 8081/tcp, 53/udp"), result.err)
        result = yield cli("list")
        self.assertEqual(result.code, 0, result.err)
        self.assertTrue(result.out.startswith("PORT"), result.out)
        self.assertIn("8081/tcp", result.out)
        self.assertRegex(result.out, r"22/tcp +ssh")
        result = yield cli("start")
        self.assertEqual((result.code, result.out.strip()), (0, "started the firewall"), result.err)
        self.assertTrue(self.ns.reaches(8081) and not self.ns.reaches(8082))
        result = yield cli("close", "8081/tcp")
        self.assertEqual(result.code, 0, result.err)
        self.assertFalse(self.ns.reaches(8081))
        result = yield cli("open", "8082")
        self.assertEqual(result.code, 1)
        self.assertIn("N/tcp, N/udp or N-M/tcp", result.err)
        result = yield cli("--json", "status")
        self.assertEqual(json.loads(result.out)["is_running"], "true")
        result = yield cli("stop")
        self.assertEqual((result.code, result.out.strip()), (0, "stopped the firewall"), result.err)
        self.assertIsNone(self.ns.nft_table())

    @defer.inlineCallbacks
    def test_enabled_rules_are_applied_when_the_daemon_starts(self):
        yield self.ok("open", ports="8081/tcp")
        self.assertEqual((yield self.ok("enable")), {"result": "success"})
        self.assertIsNone(self.ns.nft_table(), "enable alone applies nothing until start")
        yield self.stop_daemon()
        yield self.start_daemon()
        yield self.daemon.wait_for(re.compile(r"firewall started \(nftables"))
        self.assertIn("tcp dport { 22, 8081 } accept", self.ns.nft_table())
        self.assertEqual((yield self.ok("status")), {"is_running": "true", "is_enabled": "true", "backend": "nftables"})
        self.assertTrue(self.ns.reaches(8081) and not self.ns.reaches(8082))
        self.assertEqual((yield self.ok("disable")), {"result": "success"})
        self.assertEqual((yield self.ok("status"))["is_enabled"], "false")


@pytest.mark.slow  # namespaces and real nft
class Atomicity(unittest.TestCase):
    timeout = 60

    def setUp(self):
        needs_netns()
        self.ns = Namespaces(self)
        d = short_tempdir(self, "fa")
        self.nft = os.path.join(d, "nft-in-netns")
        with open(self.nft, "w") as f:  # the real nft, run inside namespace A
            f.write(f"#!/bin/sh\nexec ip netns exec {self.ns.a} nft \"$@\"\n")
        os.chmod(self.nft, 0o755)
        self.firewall = fw.Firewall(reactor, self.nft, d, lambda: [ADMIN_PORT])

    @defer.inlineCallbacks
    def test_a_failing_change_leaves_the_rules_it_had(self):
        yield self.firewall._change_ports(True)(None, {"ports": "8081/tcp"})
        yield self.firewall.start(None, {})
        before = self.ns.nft_table()
        self.assertIn("8081", before)
        # A whole-table replacement whose last line is bad: nft must apply none of it, so
        # the delete at its top does not take the running rules away.
        bad = fw.running_script(["8082/tcp"], [ADMIN_PORT]) + "add rule inet sysadmd input tcp dport 99999 accept\n"
        with self.assertRaises(ApiError) as e:
            yield self.firewall.apply(bad)
        self.assertEqual(e.exception.code, "400")
        self.assertIn("out of range", e.exception.detail)  # nft's own message
        self.assertIn("no rule was changed", e.exception.detail)
        self.assertEqual(self.ns.nft_table(), before)
        self.assertEqual(self.firewall.open_ports, ["22/tcp", "8081/tcp"])
        # The same through an action: a bad rule in the middle of the table nft rejects.
        original = fw.running_script
        self.patch(fw, "running_script", lambda ports, admin: original(ports, admin).replace(
            "ct state invalid drop", "ct state invalid jump nowhere"))
        with self.assertRaises(ApiError) as e:
            yield self.firewall._change_ports(True)(None, {"ports": "8082/tcp"})
        self.assertEqual(self.ns.nft_table(), before)
        self.assertEqual(self.firewall.open_ports, ["22/tcp", "8081/tcp"], "the stored list is unchanged too")
        with open(self.firewall.state_path) as f:
            self.assertNotIn("8082", f.read())
