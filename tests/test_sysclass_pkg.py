"""sysadm/pkg and sysadm/update (apt backend): units for names, commands and parsers, and
end to end through a real daemon over wss against a local ``file:`` repository the test
builds with dpkg-deb, dpkg-scanpackages and apt-ftparchive (no network).  apt is pointed
at it only through a private configuration (PKG_APT_CONFIG → APT_CONFIG); the machine's
own sources are never touched.  Real packages are installed, held, upgraded, removed and
autoremoved in the real dpkg database, then purged at cleanup."""

from __future__ import annotations

import os
import shutil
import subprocess
from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.dispatcher.commands import split_command
from sysadmd.sysclasses import apt as aptmod
from sysadmd.sysclasses import pkg as pkgmod
from sysadmd.wire.envelope import ApiError
from tests.test_sysclasses_units import request, session_of
from tests.support import FakePasswords, make_config, open_client, short_tempdir, start_daemon

NAMES = ("sdpkgt-a", "sdpkgt-b", "sdpkgt-lib")
JOB_REPLY_KEYS = {"proc_cmd", "proc_id", "status", "id"}


class Units(unittest.TestCase):
    def test_package_names_are_checked(self):
        self.assertEqual(pkgmod.package_names({"pkg_origins": "libc6:amd64"}), ["libc6:amd64"])
        self.assertEqual(pkgmod.package_names({"pkg_origins": ["g++", "a0"]}), ["g++", "a0"])
        for bad in ("-o", "a", "A b", "x;rm", "../x", "Foo", 'a"b', [], None, ["ok", 3]):
            with self.assertRaises(ApiError) as e:
                pkgmod.package_names({"pkg_origins": bad})
            self.assertEqual(e.exception.code, "400")

    def test_commands_are_argv_with_progress_fd_and_noninteractive(self):
        apt = aptmod.Apt("/tmp/dir with space/apt.conf")
        argv = split_command(apt.install(["curl", "g++"]))
        self.assertEqual(os.path.basename(argv[0]), "env")
        self.assertIn("DEBIAN_FRONTEND=noninteractive", argv)
        self.assertIn("APT_CONFIG=/tmp/dir with space/apt.conf", argv)  # one argument, quoted
        self.assertIn("APT::Status-Fd=3", argv)
        self.assertEqual(argv[-3:], ["install", "curl", "g++"])
        self.assertEqual(split_command(apt.hold(["x1"], True))[-2:], ["hold", "x1"])
        with self.assertRaises(ValueError):
            aptmod.quote('a"b')

    def test_parsers(self):
        records = aptmod.parse_records("Package: a\nVersion: 1\nDescription: short\n line one\n .\n line two\n\n"
                                       "Package: b\nDepends: c (>= 1), d | e, c\n")
        self.assertEqual(records[0]["Description"], "short\nline one\n\nline two")
        self.assertEqual(aptmod.dependency_names(records[1]["Depends"]), ["c", "d"])
        policy = ("Package files:\n 100 /var/lib/dpkg/status\n     release a=now\n"
                  " 500 http://deb.debian.org/debian bookworm/main amd64 Packages\n"
                  " 500 file:/tmp/r ./ Packages\n")
        self.assertEqual(aptmod.repos_from_policy(policy), ["http://deb.debian.org/debian bookworm/main",
                                                            "file:/tmp/r ./"])
        sim = "Inst a [1.0] (2.0 Debian-Security:12/stable-security [all])\nConf a (2.0 x [all])\n"
        self.assertEqual(aptmod.upgrades_from_simulation(sim),
                         [{"name": "a", "installed": "1.0", "version": "2.0",
                           "origin": "Debian-Security:12/stable-security [all]"}])
        self.assertEqual(aptmod.regex_literal("g++.x"), r"g\+\+\.x")
        self.assertEqual(aptmod.regex_literal("-oDir=x"), "[-]oDir=x")  # never an apt-cache option
        self.assertEqual(aptmod.regex_literal("a-b"), "a-b")


class Rights(unittest.TestCase):
    """Changes need full access and are jobs of pkg_queue; nothing reaches the dispatcher
    for a limited user or a bad name."""

    def setUp(self):
        self.submitted = []
        test = self

        class Dispatcher:
            active = {}

            def submit(self, job_id, commands, queue, owner, origin):
                test.submitted.append((job_id, commands, queue, owner))
                return SimpleNamespace(record=SimpleNamespace(seq=7))

        class Api:
            def add(self, namespace, name, handler, limited):
                test.table = handler

        cfg = make_config(short_tempdir(self))
        self.packages = pkgmod.route(Api(), None, cfg, Dispatcher())

    def test_limited_users_cannot_change_packages(self):
        for action in ("pkg_install", "pkg_remove", "pkg_lock", "pkg_unlock", "pkg_update", "pkg_upgrade",
                       "pkg_check_upgrade", "pkg_autoremove", "pkg_audit"):
            with self.assertRaises(ApiError) as e:
                self.table(session_of("alice", full=False), request({"action": action, "pkg_origins": "curl"}))
            self.assertEqual(e.exception.code, "403", action)
        self.assertEqual(self.submitted, [])

    def test_a_change_is_one_pkg_queue_job_in_upstreams_reply_shape(self):
        reply = self.table(session_of(), request({"action": "pkg_install", "pkg_origins": ["curl", "jq"]}))
        queued = reply["pkg_install"]
        self.assertEqual(set(queued), JOB_REPLY_KEYS)
        self.assertEqual((queued["status"], queued["id"]), ("pending", 7))
        [(job_id, commands, queue, owner)] = self.submitted
        self.assertEqual((job_id, queue, commands), (queued["proc_id"], "pkg_queue", [queued["proc_cmd"]]))
        self.assertRegex(job_id, r"^sysadm_pkg_install-\{[0-9a-f-]{36}\}$")
        self.assertEqual(owner.user, "root")
        with self.assertRaises(ApiError) as e:
            self.table(session_of(), request({"action": "pkg_install", "pkg_origins": "curl; rm -rf /"}))
        self.assertIn("not a Debian package name", e.exception.detail)
        self.assertEqual(len(self.submitted), 1)


def build_package(build, repo, name, version, depends="", postinst=""):
    root = os.path.join(build, f"{name}-{version}")
    os.makedirs(os.path.join(root, "DEBIAN"))
    os.makedirs(os.path.join(root, "usr", "share", "doc", name))
    with open(os.path.join(root, "usr", "share", "doc", name, "README"), "w") as f:
        f.write(f"{name} {version}\n")
    control = (f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: test <t@example.invalid>\n"
               f"Section: sdtest\nPriority: optional\n" + (f"Depends: {depends}\n" if depends else "")
               + f"Description: sysadmd test package {name}\n built by tests/test_sysclass_pkg.py\n")
    with open(os.path.join(root, "DEBIAN", "control"), "w") as f:
        f.write(control)
    if postinst:
        path = os.path.join(root, "DEBIAN", "postinst")
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + postinst + "\n")
        os.chmod(path, 0o755)
    subprocess.run(["dpkg-deb", "-Zgzip", "--build", root, repo], check=True, capture_output=True)


def index_repo(repo):
    with open(os.path.join(repo, "Packages"), "wb") as f:
        subprocess.run(["dpkg-scanpackages", "-m", "."], cwd=repo, check=True, stdout=f, stderr=subprocess.DEVNULL)
    with open(os.path.join(repo, "Release"), "wb") as f:
        subprocess.run(["apt-ftparchive", "release", "."], cwd=repo, check=True, stdout=f)


def installed():
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\n", *NAMES],
                         capture_output=True, text=True).stdout
    return {p[0]: p[1] for p in (line.split() for line in out.splitlines()) if len(p) == 3 and p[2][1:2] == "i"}


def held():
    return set(subprocess.run(["apt-mark", "showhold"], capture_output=True, text=True).stdout.split())


def usable() -> bool:
    return aptmod.present() and bool(shutil.which("dpkg-scanpackages")) and bool(shutil.which("apt-ftparchive")) \
        and os.geteuid() == 0


def make_local_repo(testcase):
    """A file: repository (sdpkgt-lib 1.0, sdpkgt-a 1.0 needing it, sdpkgt-b 1.0) and a
    private apt configuration using only it; the test packages are purged at cleanup.
    Returns ``(root, repo, build dir, apt.conf path)``."""
    if installed():
        raise unittest.SkipTest(f"test packages already installed: {installed()}")
    root = short_tempdir(testcase)
    repo, build = os.path.join(root, "repo"), os.path.join(root, "build")
    for d in ("repo", "build", "lists/partial", "cache/archives/partial", "log", "parts"):
        os.makedirs(os.path.join(root, d))
    build_package(build, repo, "sdpkgt-lib", "1.0")
    # Configuring 1.0 takes a moment, so a client sees the job running with its progress.
    build_package(build, repo, "sdpkgt-a", "1.0", "sdpkgt-lib", postinst="sleep 1.5")
    build_package(build, repo, "sdpkgt-b", "1.0")
    index_repo(repo)
    with open(os.path.join(root, "sources.list"), "w") as f:
        f.write(f"deb [trusted=yes] file:{repo} ./\n")
    apt_conf = os.path.join(root, "apt.conf")
    with open(apt_conf, "w") as f:
        f.write(f'Dir::Etc::sourcelist "{root}/sources.list";\nDir::Etc::sourceparts "{root}/parts";\n'
                f'Dir::State::Lists "{root}/lists";\nDir::Cache "{root}/cache";\nDir::Log "{root}/log";\n')
    testcase.addCleanup(purge, apt_conf)
    return root, repo, build, apt_conf


def purge(apt_conf):
    subprocess.run(["apt-mark", "unhold", *NAMES], capture_output=True)
    left = sorted(installed())
    if left:
        subprocess.run(["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=120", "purge", *left],
                       env=dict(os.environ, APT_CONFIG=apt_conf, DEBIAN_FRONTEND="noninteractive"),
                       capture_output=True)


@pytest.mark.slow  # a real daemon, apt and dpkg
class AptOverWss(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        if not usable():
            raise unittest.SkipTest("needs root, apt, dpkg-dev and apt-utils (a Debian host)")
        self.root, self.repo, self.build, self.apt_conf = make_local_repo(self)
        cfg = make_config(short_tempdir(self), PKG_APT_CONFIG=self.apt_conf)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.client = yield open_client(self, self.running)
        reply = yield self.client.call("rpc", "auth", {"username": "root", "password": "pw"})
        self.assertEqual(reply["name"], "response", reply)
        self.events = []
        self.client.event_listeners.append(lambda m: self.events.append(m["args"]) if m.get("name") == "jobs" else None)
        yield self.client.call("events", "subscribe", ["jobs"])
        print("\nsysadm/pkg backend that ran: apt (Debian; dnf not present on this host)")

    def ok(self, reply):
        self.assertEqual(reply["name"], "response", reply)
        return reply["args"]

    @defer.inlineCallbacks
    def pkg(self, action, **args):
        reply = yield self.client.call("sysadm", "pkg", dict(args, action=action))
        return self.ok(reply)[action]

    @defer.inlineCallbacks
    def job(self, action, cls="pkg", **args):
        """Run a change; its reply checked against upstream's shape; wait for its job."""
        reply = yield self.client.call("sysadm", cls, dict(args, action=action))
        queued = self.ok(reply)[action]
        if cls == "pkg":
            self.assertEqual(set(queued), JOB_REPLY_KEYS)
            self.assertEqual(queued["status"], "pending")
            self.assertTrue(queued["proc_id"].startswith(f"sysadm_{action}-{{"), queued)
            self.assertNotIn("sh -c", queued["proc_cmd"])
        while True:
            job = self.ok((yield self.client.call("core", "job_wait", [queued["id"], {"timeout": 60}])))
            if job["state"] in ("SUCCESS", "FAILED", "ABORTED"):
                break
        self.assertEqual(job["state"], "SUCCESS", job)
        self.assertEqual(job["queue"], "pkg_queue")
        return job

    @defer.inlineCallbacks
    def test_install_hold_upgrade_remove_autoremove_real_packages(self):
        listed = self.ok((yield self.client.call("rpc", "query", {})))
        self.assertIn("sysadm/pkg", listed)
        self.assertIn("sysadm/update", listed)
        yield self.job("pkg_update")
        self.assertEqual((yield self.pkg("list_repos")), [f"file:{self.repo} ./"])
        found = yield self.pkg("pkg_search", search_term="sdpkgt", search_excludes=["-b"])
        self.assertEqual(found["results_order"], ["sdpkgt-a", "sdpkgt-lib"])
        self.assertEqual(found["sdpkgt-a"], {"name": "sdpkgt-a", "origin": "sdpkgt-a",
                                             "comment": "sysadmd test package sdpkgt-a"})
        self.assertIn("sdpkgt-lib", (yield self.pkg("pkg_search", search_term="-lib"))["results_order"])
        self.assertIn("sdtest", (yield self.pkg("list_categories")))
        info = (yield self.pkg("pkg_info", pkg_origins="sdpkgt-a"))["sdpkgt-a"]
        self.assertEqual((info["version"], info["installed"], info["dependencies"], info["categories"]),
                         ("1.0", "false", ["sdpkgt-lib"], ["sdtest"]))
        missing = yield self.client.call("sysadm", "pkg", {"action": "pkg_info", "pkg_origins": "sdpkgt-nosuch"})
        self.assertEqual(missing["args"]["code"], "400")

        install = yield self.job("pkg_install", pkg_origins=["sdpkgt-a", "sdpkgt-b"])
        self.assertEqual(installed(), {"sdpkgt-a": "1.0", "sdpkgt-b": "1.0", "sdpkgt-lib": "1.0"})
        self.assertEqual(install["progress"]["extra"].get("source"), "apt", install)
        seen = [e["job"]["progress"] for e in self.events
                if e["job"]["id"] == install["id"] and e["kind"] == "changed" and e["job"].get("progress")]
        self.assertTrue(any((p.get("extra") or {}).get("stage") == "install" and p.get("percent") for p in seen), seen)
        print(f"pkg_install progress events: {len(seen)}, last {install['progress']}")

        lock = yield self.job("pkg_lock", pkg_origins="sdpkgt-b")
        self.assertIn("sdpkgt-b", held())
        self.assertEqual((yield self.pkg("pkg_info", pkg_origins="sdpkgt-b"))["sdpkgt-b"]["locked"], "true")

        for name in ("sdpkgt-a", "sdpkgt-b"):
            build_package(self.build, self.repo, name, "2.0", "sdpkgt-lib" if name == "sdpkgt-a" else "")
        index_repo(self.repo)
        update = yield self.job("pkg_update")
        self.assertGreaterEqual(update["time_started"], lock["time_finished"])  # pkg_queue: one at a time
        status = yield self.client.call("sysadm", "update", {"action": "checkupdates"})
        status = self.ok(status)["checkupdates"]
        self.assertEqual(status["status"], "updatesavailable", status)
        self.assertEqual([p["name"] for p in status["packageupdate"]["packages"]], ["sdpkgt-a"])  # b is held
        self.assertIn("last_check", status)
        yield self.job("pkg_check_upgrade")
        yield self.job("pkg_upgrade")
        self.assertEqual(installed(), {"sdpkgt-a": "2.0", "sdpkgt-b": "1.0", "sdpkgt-lib": "1.0"})  # held stays
        yield self.job("pkg_unlock", pkg_origins=["sdpkgt-b"])
        self.assertNotIn("sdpkgt-b", held())

        yield self.job("pkg_remove", pkg_origins=["sdpkgt-a", "sdpkgt-b"])
        self.assertEqual(installed(), {"sdpkgt-lib": "1.0"})  # installed as a dependency: left for autoremove
        simulated = subprocess.run(["apt-get", "-s", "autoremove"], capture_output=True, text=True,
                                   env=dict(os.environ, APT_CONFIG=self.apt_conf)).stdout
        others = [line.split()[1] for line in simulated.splitlines()
                  if line.startswith("Remv ") and line.split()[1] not in NAMES]
        if others:
            print(f"autoremove step left out: it would also remove {others} on this host")
        else:
            yield self.job("pkg_autoremove")
            self.assertEqual(installed(), {})

        logs = self.ok((yield self.client.call("sysadm", "update", {"action": "listlogs"})))["listlogs"]
        self.assertEqual(set(logs["history.log"]), {"name", "started", "finished"})
        text = self.ok((yield self.client.call("sysadm", "update", {"action": "readlogs", "logs": "history.log"})))
        self.assertIn("sdpkgt-a", text["readlogs"]["history.log"])
        bad = yield self.client.call("sysadm", "update", {"action": "readlogs", "logs": "../../etc/shadow"})
        self.assertEqual(bad["args"]["code"], "400")
        audit = yield self.client.call("sysadm", "pkg", {"action": "pkg_audit"})
        self.assertIn("not available on this host", audit["args"]["detail"])

        reply = self.ok((yield self.client.call("sysadm", "update", {"action": "startupdate"})))["startupdate"]
        self.assertEqual((set(reply), reply["comment"]), ({"command", "comment", "queueid", "id"}, "Task Queued"))
        self.assertTrue(reply["queueid"].startswith("sysadm_update_runupdates::{"))
        done = self.ok((yield self.client.call("core", "job_wait", [reply["id"], {"timeout": 60}])))
        self.assertEqual(done["state"], "SUCCESS", done)
        status = self.ok((yield self.client.call("sysadm", "update", {"action": "checkupdates"})))["checkupdates"]
        self.assertEqual(status["status"], "noupdates", status)
        forced = yield self.client.call("sysadm", "update", {"action": "checkupdates", "force": "true"})
        self.assertEqual(self.ok(forced)["checkupdates"], {"status": "checkingforupdates"})
        [check] = self.ok((yield self.client.call("core", "get_jobs",
                                                  [[["dispatcher_id", "=", "sysadm_update_checkupdates"]]])))
        self.assertEqual(check["queue"], "pkg_queue")
        done = self.ok((yield self.client.call("core", "job_wait", [check["id"], {"timeout": 60}])))
        self.assertEqual(done["state"], "SUCCESS", done)
