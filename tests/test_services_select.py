"""Which init backend sysadm/services uses: :func:`init_system` on fake roots, and
:func:`choose` (SERVICES_INIT, the bus socket, the tools being there)."""

import os
import socket

from twisted.trial import unittest

from sysadmd.sysclasses import services as services_mod
from sysadmd.sysclasses.openrc import OpenrcBackend
from sysadmd.sysclasses.systemd import SystemdBackend
from sysadmd.sysclasses.sysv import SysvBackend
from tests.support import make_config, short_tempdir


def fake_root(testcase, *dirs, files=None):
    root = short_tempdir(testcase, "root")
    for d in dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for path, text in (files or {}).items():
        os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
        with open(os.path.join(root, path), "w") as f:
            f.write(text)
    return root


class InitSystem(unittest.TestCase):
    def test_systemd_when_run_systemd_system_is_a_directory(self):
        self.assertEqual(services_mod.init_system(fake_root(self, "run/systemd/system", "etc/init.d", "run/openrc")),
                         "systemd")

    def test_a_run_systemd_system_file_is_not_systemd(self):
        root = fake_root(self, "etc/init.d", files={"run/systemd/system": ""})
        self.assertEqual(services_mod.init_system(root), "sysv")

    def test_openrc_by_run_openrc_or_by_pid_1(self):
        self.assertEqual(services_mod.init_system(fake_root(self, "run/openrc", "etc/init.d")), "openrc")
        root = fake_root(self, "etc/init.d", files={"proc/1/comm": "openrc-init\n"})
        self.assertEqual(services_mod.init_system(root), "openrc")
        root = fake_root(self, "etc/init.d", files={"proc/1/comm": "init\n"})
        self.assertEqual(services_mod.init_system(root), "sysv")

    def test_nothing_found(self):
        self.assertIsNone(services_mod.init_system(fake_root(self, "etc")))


class Choose(unittest.TestCase):
    def config(self, **keys):
        return make_config(short_tempdir(self), **keys)

    def listening_socket(self):
        path = os.path.join(short_tempdir(self, "bus"), "bus")
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path)
        sock.listen(4)
        self.addCleanup(sock.close)
        return path

    def test_systemd_needs_its_bus_socket(self):
        root = fake_root(self, "run/systemd/system")
        cfg = self.config(SERVICES_SYSTEMD_BUS="unix:path=/nonexistent/system_bus_socket")
        kind, why = services_mod.choose(cfg, root)
        self.assertIsNone(kind)
        self.assertIn("its bus '/nonexistent/system_bus_socket' cannot be reached: No such file or directory", why)
        self.assertEqual(services_mod.backends_for(None, cfg, root), [])
        path = self.listening_socket()
        os.rename(path, path + ".x")
        dead = socket.socket(socket.AF_UNIX)
        dead.bind(path)  # bound, never listening: nobody answers
        self.addCleanup(dead.close)
        kind, why = services_mod.choose(self.config(SERVICES_SYSTEMD_BUS=f"unix:path={path}"), root)
        self.assertIsNone(kind)
        self.assertIn("cannot be reached: Connection refused", why)
        dead.close()
        os.unlink(path)
        os.rename(path + ".x", path)
        cfg = self.config(SERVICES_SYSTEMD_BUS=f"unix:path={path}", SERVICES_SYSTEMD_JOB_TIMEOUT=7)
        self.assertEqual(services_mod.choose(cfg, root)[0], "systemd")
        [backend] = services_mod.backends_for(None, cfg, root)
        self.assertIsInstance(backend, SystemdBackend)
        self.assertEqual((backend.path, backend.job_timeout), (path, 7.0))

    def test_without_dbus_fast_systemd_is_not_chosen_and_says_why(self):
        import sys
        path = self.listening_socket()
        hidden = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "dbus_fast"}
        self.addCleanup(sys.modules.update, hidden)
        for name in hidden:
            del sys.modules[name]
        for name in ("dbus_fast", "dbus_fast.constants", "dbus_fast._private.unmarshaller"):
            sys.modules[name] = None  # what an import of a missing package meets
        self.addCleanup(lambda: [sys.modules.pop(n, None) for n in ("dbus_fast", "dbus_fast.constants",
                                                                    "dbus_fast._private.unmarshaller")])
        cfg = self.config(SERVICES_SYSTEMD_BUS=f"unix:path={path}")
        kind, why = services_mod.choose(cfg, fake_root(self, "run/systemd/system"))
        self.assertIsNone(kind)
        self.assertIn("needs D-Bus, but the Python package dbus-fast is not importable", why)

    def test_a_bus_address_that_is_not_unix_is_refused_naming_the_key(self):
        cfg = self.config(SERVICES_INIT="systemd", SERVICES_SYSTEMD_BUS="tcp:host=127.0.0.1,port=1")
        kind, why = services_mod.choose(cfg, fake_root(self))
        self.assertIsNone(kind)
        self.assertTrue(why.startswith("SERVICES_SYSTEMD_BUS: "), why)

    def test_sysv_needs_the_script_directory(self):
        root = fake_root(self, "etc/init.d")
        initd = os.path.join(root, "etc/init.d")
        [backend] = services_mod.backends_for(None, self.config(SERVICES_INITD_DIR=initd), root)
        self.assertIsInstance(backend, SysvBackend)
        kind, why = services_mod.choose(self.config(SERVICES_INITD_DIR=os.path.join(root, "none")), root)
        self.assertIsNone(kind)
        self.assertIn("is not a directory", why)

    def test_openrc_needs_its_tools(self):
        root = fake_root(self, "run/openrc", "etc/init.d")
        kind, why = services_mod.choose(self.config(), root)
        if OpenrcBackend.present():
            self.assertEqual(kind, "openrc")
        else:
            self.assertIsNone(kind)
            self.assertIn("rc-service/rc-update/rc-status are not installed", why)

    def test_services_init_overrides_what_the_root_shows(self):
        root = fake_root(self, "run/systemd/system", "etc/init.d")
        cfg = self.config(SERVICES_INIT="sysv", SERVICES_INITD_DIR=os.path.join(root, "etc/init.d"))
        kind, why = services_mod.choose(cfg, root)
        self.assertEqual(kind, "sysv")
        self.assertIn("(SERVICES_INIT)", why)

    def test_an_unknown_services_init_is_a_config_error(self):
        from sysadmd.runtime.configfile import ConfigError
        with self.assertRaises(ConfigError) as e:
            self.config(SERVICES_INIT="upstart")
        self.assertIn("SERVICES_INIT", str(e.exception))
