"""sysadm/network: devices listed inside a network namespace the test creates (two veth
pairs, one up with an IPv4 address, one down with a MAC and an IPv6 address), the
settings readers on configuration files of the three managers, and both actions over a
real daemon's wss."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.sysclasses import network
from tests.support import FakePasswords, make_config, open_client, short_tempdir, start_daemon

DEVICE_KEYS = {"ipv4", "ipv6", "netmask", "description", "MAC", "status", "is_active", "is_dhcp", "is_wireless"}
SETTING_KEYS = {"device", "associated_device", "use_dhcp", "static_ipv4", "static_ipv6", "static_netmask",
                "static_gateway", "source"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ip(*argv):
    return subprocess.run(["ip", *argv], check=True, capture_output=True, text=True, timeout=20)


@pytest.mark.slow  # child processes in a network namespace
class DevicesInANamespace(unittest.TestCase):
    def setUp(self):
        if os.geteuid() != 0 or not shutil.which("ip"):
            raise unittest.SkipTest("needs root and ip(8) to create a network namespace")
        self.ns = f"sdk{secrets.token_hex(4)}"
        try:
            ip("netns", "add", self.ns)
        except subprocess.CalledProcessError as e:
            raise unittest.SkipTest(f"cannot create a network namespace: {e.stderr.strip()}")
        self.addCleanup(subprocess.run, ["ip", "netns", "delete", self.ns], capture_output=True, timeout=20)
        run = ("netns", "exec", self.ns, "ip")
        ip(*run, "link", "add", "sdkup0", "type", "veth", "peer", "name", "sdkup1")
        ip(*run, "addr", "add", "198.51.100.7/24", "dev", "sdkup0")
        ip(*run, "link", "set", "sdkup0", "up")
        ip(*run, "link", "set", "sdkup1", "up")
        ip(*run, "link", "add", "sdkveth0", "type", "veth", "peer", "name", "sdkveth1")
        ip(*run, "link", "set", "sdkveth0", "address", "02:00:5e:10:20:30")
        ip(*run, "addr", "add", "2001:db8::7/64", "dev", "sdkveth0")

    def listing(self):
        env = dict(os.environ, PYTHONPATH=ROOT)
        out = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-m", "sysadmd.sysclasses.network"],
                             check=True, capture_output=True, text=True, timeout=30, env=env, cwd=ROOT)
        return json.loads(out.stdout)

    def test_the_namespaces_devices_are_listed_in_upstreams_shape(self):
        devices = self.listing()
        self.assertEqual(sorted(devices), ["lo", "sdkup0", "sdkup1", "sdkveth0", "sdkveth1"])
        for entry in devices.values():
            self.assertEqual(set(entry), DEVICE_KEYS)
            self.assertTrue(all(isinstance(v, str) for v in entry.values()))
        up = devices["sdkup0"]
        self.assertEqual((up["ipv4"], up["netmask"], up["is_active"], up["status"]),
                         ("198.51.100.7", "255.255.255.0", "true", "active"))
        self.assertEqual((up["is_wireless"], up["is_dhcp"]), ("false", "false"))
        veth = devices["sdkveth0"]
        self.assertEqual((veth["MAC"], veth["ipv6"], veth["ipv4"]), ("02:00:5e:10:20:30", "2001:db8::7", ""))
        self.assertEqual((veth["is_active"], veth["status"]), ("false", "no carrier"))  # never set up
        self.assertEqual(devices["lo"]["description"], "Loopback")
        self.assertTrue(veth["description"].startswith("Virtual"))


class Settings(unittest.TestCase):
    def write(self, root, path, text):
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)

    def test_ifupdown_with_sourced_files_and_dhcp(self):
        root = short_tempdir(self)
        self.write(root, "etc/network/interfaces", "source interfaces.d/*\nauto lo\niface lo inet loopback\n"
                                                   "allow-hotplug eth0\niface eth0 inet dhcp\n")
        self.write(root, "etc/network/interfaces.d/br0", "iface br0 inet static\n  address 192.0.2.5/24\n"
                                                         "  gateway 192.0.2.1\n  bridge_ports eth1 eth2\n"
                                                         "iface br0 inet6 static\n  address 2001:db8::5/64\n")
        settings = network.list_settings(root)
        self.assertEqual(settings["eth0"]["use_dhcp"], "true")
        br0 = settings["br0"]
        self.assertEqual(set(br0), SETTING_KEYS)
        self.assertEqual((br0["static_ipv4"], br0["static_netmask"], br0["static_gateway"], br0["static_ipv6"],
                          br0["associated_device"], br0["source"]),
                         ("192.0.2.5", "255.255.255.0", "192.0.2.1", "2001:db8::5", "eth1 eth2", "ifupdown"))
        self.assertIn("eth0", network.dhcp_devices(root))

    def test_networkmanager_and_networkd(self):
        root = short_tempdir(self)
        self.write(root, "etc/NetworkManager/system-connections/wired.nmconnection",
                   "[connection]\nid=Wired\ninterface-name=enp1s0\n[ipv4]\nmethod=manual\n"
                   "address1=10.1.2.3/16,10.1.0.1\n[ipv6]\nmethod=auto\n")
        self.write(root, "etc/systemd/network/20-wan.network",
                   "[Match]\nName=wan0\n[Network]\nDHCP=yes\n")
        self.write(root, "etc/systemd/network/30-lan.network",
                   "[Match]\nName=lan0\n[Network]\nAddress=172.16.0.1/12\nGateway=172.16.0.254\n")
        settings = network.list_settings(root)
        self.assertEqual((settings["enp1s0"]["static_ipv4"], settings["enp1s0"]["static_netmask"],
                          settings["enp1s0"]["static_gateway"], settings["enp1s0"]["use_dhcp"],
                          settings["enp1s0"]["source"]), ("10.1.2.3", "255.255.0.0", "10.1.0.1", "false", "NetworkManager"))
        self.assertEqual((settings["wan0"]["use_dhcp"], settings["wan0"]["source"]), ("true", "systemd-networkd"))
        self.assertEqual((settings["lan0"]["static_ipv4"], settings["lan0"]["static_gateway"]),
                         ("172.16.0.1", "172.16.0.254"))

    def test_dhcp_leases(self):
        root = short_tempdir(self)
        self.write(root, "var/lib/dhcp/dhclient.leases", 'lease {\n  interface "eth7";\n  fixed-address 10.0.0.9;\n}\n')
        self.write(root, "var/lib/NetworkManager/internal-0f1e-wlan3.lease", "ADDRESS=10.0.0.10\n")
        self.assertEqual(network.dhcp_devices(root) >= {"eth7", "wlan3"}, True)


@pytest.mark.slow  # a real daemon
class NetworkOverWss(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_both_actions_answer_in_upstreams_shapes(self):
        running = yield start_daemon(self, make_config(short_tempdir(self)), passwords=FakePasswords({"root": "pw"}))
        client = yield open_client(self, running)
        yield client.call("rpc", "auth", {"username": "root", "password": "pw"})
        reply = yield client.call("sysadm", "network", {"action": "list-devices"})
        self.assertEqual(reply["name"], "response", reply)
        self.assertIn("lo", reply["args"])
        self.assertEqual(set(reply["args"]["lo"]), DEVICE_KEYS)
        reply = yield client.call("sysadm", "network", {"action": "list-settings"})
        self.assertEqual(reply["name"], "response", reply)
        self.assertIsInstance(reply["args"], dict)
        reply = yield client.call("sysadm", "network", {"action": "set-settings"})
        self.assertEqual(reply["args"]["code"], "400")
        self.assertIn("list-devices", reply["args"]["detail"])


class SettingsProperties(unittest.TestCase):
    """Configuration files are read, never trusted: any text gives entries of the right shape."""

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.sampled_from(["iface eth0 inet dhcp", "iface br0 inet static", "address 10.0.0.1/8",
                                     "address ::1/300", "netmask x", "gateway", "source ../../../etc/passwd",
                                     "source-directory /nonexistent", "bridge_ports", "[Match]", "Name=*",
                                     "[Network]", "Address=", "DHCP=yes", "#", "\x00"]) | st.text(max_size=30),
                    max_size=12))
    def test_any_interfaces_file_gives_well_formed_entries(self, lines):
        root = short_tempdir(self)
        for path in ("etc/network/interfaces", "etc/systemd/network/a.network",
                     "etc/NetworkManager/system-connections/c.nmconnection"):
            full = os.path.join(root, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w", encoding="utf-8", errors="surrogatepass") as f:
                f.write("\n".join(lines))
        for entry in network.list_settings(root).values():
            self.assertTrue(SETTING_KEYS <= set(entry))
            self.assertTrue(all(isinstance(v, str) for v in entry.values()))
