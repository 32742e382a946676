"""sysadm/zfs: parsing of the tools' real parsable output (fixtures), the programs run
with the expected argv, and the rule that a class without its tools is absent."""

from __future__ import annotations

import os

import pytest
from twisted.internet import defer, reactor
from twisted.trial import unittest

from sysadmd.sysclasses import zfs
from sysadmd.wire.envelope import ApiError
from tests.keys_support import error_code
from tests.support import FakePasswords, make_config, open_client, short_tempdir, start_daemon

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "zfs")


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return f.read()


def fake_tool(directory, name, expected_argv, output_file):
    """An executable that prints *output_file* only when called with *expected_argv*."""
    path = os.path.join(directory, name)
    expected = " ".join(expected_argv)
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\nif [ "$*" = "{expected}" ]; then cat "{output_file}"; exit 0; fi\n'
                f'echo "cannot open \'$*\': no such pool" >&2\nexit 1\n')
    os.chmod(path, 0o755)
    return path


class Parsing(unittest.TestCase):
    def test_zpool_list(self):
        pools = zfs.parse_pools(fixture("zpool-list-H-p.txt"))
        self.assertEqual(pools["rpool"], {"size": "498216206336", "alloc": "121367654400", "free": "376848551936",
                                          "frag": "12", "expandsz": "-", "dedup": "1.00", "altroot": "-",
                                          "capacity": "24", "health": "ONLINE"})
        self.assertEqual((pools["tank"]["altroot"], pools["tank"]["health"]), ("/mnt", "DEGRADED"))
        self.assertEqual(zfs.parse_pools(""), {})

    def test_zfs_list(self):
        datasets = zfs.parse_datasets(fixture("zfs-list-H-p.txt"))
        self.assertEqual(list(datasets), ["rpool", "rpool/ROOT", "rpool/ROOT/ubuntu_x1", "rpool/USERDATA/home dir"])
        self.assertEqual(datasets["rpool/ROOT"], {"used": "40564498432", "avail": "361296842752", "refer": "98304",
                                                  "mountpoint": "none"})
        self.assertEqual(datasets["rpool/USERDATA/home dir"]["mountpoint"], "/home/with space")

    def test_unexpected_output_is_an_error(self):
        with self.assertRaises(ApiError) as e:
            zfs.parse_pools("rpool  498216206336  121367654400\n")  # spaces: not the -H format
        self.assertEqual(e.exception.code, "500")

    def test_tools_are_found_only_where_installed(self):
        d = short_tempdir(self)
        self.assertIsNone(zfs.tool("zpool", dirs=[d]))
        fake_tool(d, "zpool", [], os.devnull)
        self.assertEqual(zfs.tool("zpool", dirs=[d]), os.path.join(d, "zpool"))


class WithFakeTools(unittest.TestCase):
    """The class's actions run real processes (stand-ins printing the fixtures)."""

    def setUp(self):
        d = short_tempdir(self)
        zpool = fake_tool(d, "zpool", ["list", "-H", "-p", "-o", ",".join(zfs.POOL_COLUMNS)],
                          os.path.join(FIXTURES, "zpool-list-H-p.txt"))
        zfs_tool = fake_tool(d, "zfs", ["list", "-H", "-p", "-r", "-o", ",".join(zfs.DATASET_COLUMNS), "--", "rpool"],
                             os.path.join(FIXTURES, "zfs-list-H-p.txt"))
        self.zfs = zfs.Zfs(reactor, zpool, zfs_tool)

    @defer.inlineCallbacks
    def test_list_pools_and_datasets(self):
        pools = yield self.zfs.list_pools(None, {"action": "list_pools"})
        self.assertEqual(sorted(pools["list_pools"]), ["rpool", "tank"])
        datasets = yield self.zfs.datasets(None, {"action": "datasets", "zpool": "rpool"})
        self.assertEqual(datasets["rpool"]["mountpoint"], "/")

    @defer.inlineCallbacks
    def test_bad_names_and_tool_failures_are_error_replies(self):
        for bad in ("-o", "../x", "1pool", "a b", ""):
            with self.assertRaises(ApiError) as e:
                yield self.zfs.datasets(None, {"zpool": bad})
            self.assertEqual(e.exception.code, "400")
        with self.assertRaises(ApiError) as e:
            yield self.zfs.datasets(None, {"zpool": "nosuch"})
        self.assertIn("no such pool", e.exception.detail)


@pytest.mark.slow  # a real daemon
class AbsentWithoutTools(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_no_zfs_tools_no_class(self):
        cfg = make_config(short_tempdir(self))
        if zfs.available(cfg):
            raise unittest.SkipTest("this host has the ZFS tools")
        running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        client = yield open_client(self, running)
        self.assertEqual((yield client.call("rpc", "auth", {"username": "root", "password": "pw"}))["name"], "response")
        listed = (yield client.call("rpc", "query", {}))["args"]
        self.assertIn("rpc/dispatcher", listed)
        self.assertNotIn("sysadm/zfs", listed)
        reply = yield client.call("sysadm", "zfs", {"action": "list_pools"})
        self.assertEqual(error_code(reply), "404")
        self.assertNotIn("zfs", running.daemon.sysclasses)
