"""The shared layer's boundary (issue 9 item 2) and the one module of close codes (item 4).

``sysadmd/wire/`` and ``sysadmd/runtime/`` are what the daemon, the bridge and the client
share; ``bridge/`` and the client (``sysadmd/client/``) stand on that layer alone.  Checked
twice: statically, every import (function-level ones too) in those packages is read with
:mod:`ast`; and at run time, importing the bridge's tap or the client's entry point in a
fresh interpreter loads neither PAM, psutil, the dispatcher nor the request pipeline.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from unittest import mock

import pytest
from twisted.trial import unittest

from tests.import_graph import ROOT, Import, ImportGraph
from tests.support import short_tempdir

LAYER = ("sysadmd.wire", "sysadmd.runtime")
PROJECT_TOPS = {"sysadmd", "bridge", "tests", "bench"}

# Modules of the daemon that the bridge and the client must never load.
FORBIDDEN = ("pam", "psutil", "sysadmd.dispatcher", "sysadmd.api", "sysadmd.session", "sysadmd.server", "sysadmd.rpc")


def within(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


# Which project modules each part may import: itself and the shared layer.  "sysadmd"
# itself (the package: its __init__ is a docstring and __version__) is allowed to all.
ALLOWED = {
    "bridge": ("bridge",) + LAYER,
    "sysadmd.client": ("sysadmd.client",) + LAYER,
    "sysadmd.wire": LAYER,
    "sysadmd.runtime": LAYER,
}


def layer_violations(graph: ImportGraph, part: str):
    allowed = ALLOWED[part]
    problems = []
    for module, found in sorted(graph.imports.items()):
        if not within(module, (part,)):
            continue
        where = os.path.relpath(graph.files[module], ROOT)
        for imp in found:
            top = imp.target.split(".")[0]
            if top not in PROJECT_TOPS:
                if top not in sys.stdlib_module_names and importlib.util.find_spec(top) is None:
                    problems.append(f"{where}:{imp.line}: imports {imp.target}, neither the standard library "
                                    "nor an installed package")
                continue
            if imp.target not in graph.files:
                problems.append(f"{where}:{imp.line}: imports {imp.target}, which is not a module of the project")
                continue
            for target in graph.modules_run_by(imp):
                if target == "sysadmd" or within(target, allowed):
                    continue
                problems.append(f"{where}:{imp.line}: imports {target}; {part} may import only "
                                f"{', '.join(allowed)}, the standard library and third-party packages")
    return problems


class StaticBoundary(unittest.TestCase):
    """Every import in bridge/, sysadmd/client/, sysadmd/wire/ and sysadmd/runtime/."""

    def setUp(self):
        self.graph = ImportGraph(["sysadmd", "bridge"])

    def check(self, part):
        self.assertTrue(any(within(m, (part,)) for m in self.graph.files), part)
        problems = layer_violations(self.graph, part)
        if problems:
            self.fail("imports across the layer boundary:\n  " + "\n  ".join(problems))

    def test_bridge_imports_only_the_shared_layer(self):
        self.check("bridge")

    def test_client_imports_only_the_shared_layer(self):
        self.check("sysadmd.client")

    def test_wire_imports_nothing_daemon_only(self):
        self.check("sysadmd.wire")

    def test_runtime_imports_nothing_daemon_only(self):
        self.check("sysadmd.runtime")

    def test_the_top_package_imports_nothing(self):
        # Everyone may import the "sysadmd" package itself (for __version__), so it must stay empty.
        self.assertEqual(self.graph.imports["sysadmd"], [])

    def test_the_check_sees_a_daemon_import(self):
        """A function-level import of the daemon's config (what the client once did to
        find the socket) is reported, with file and line."""
        graph = ImportGraph(["sysadmd", "bridge"])
        path = graph.files["sysadmd.client.connect"]
        tree_line = 10_000
        graph.imports["sysadmd.client.connect"] = graph.imports["sysadmd.client.connect"] + [
            Import("sysadmd.client.connect", tree_line, "sysadmd", ("config",), False),
            Import("sysadmd.client.connect", tree_line + 1, "sysadmd.session", ("CLOSE_POLICY",), True),
            Import("sysadmd.client.connect", tree_line + 2, "sysadmd.nosuchmodule", ("x",), True),
        ]
        problems = layer_violations(graph, "sysadmd.client")
        where = os.path.relpath(path, ROOT)
        self.assertEqual(problems, [
            f"{where}:{tree_line}: imports sysadmd.config; sysadmd.client may import only sysadmd.client, "
            "sysadmd.wire, sysadmd.runtime, the standard library and third-party packages",
            f"{where}:{tree_line + 1}: imports sysadmd.session; sysadmd.client may import only sysadmd.client, "
            "sysadmd.wire, sysadmd.runtime, the standard library and third-party packages",
            f"{where}:{tree_line + 2}: imports sysadmd.nosuchmodule, which is not a module of the project",
        ])


def console_script_modules():
    """``{script: module}`` from setup.py's console_scripts."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        text = f.read()
    return dict(re.findall(r'"([a-z-]+) = ([a-z_.]+):[a-z_]+"', text))


def loaded_after(code: str):
    """The sorted ``sys.modules`` of a fresh interpreter after running *code*."""
    program = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))\n"
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    if proc.returncode != 0:
        raise AssertionError(f"{code!r} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # child processes
class RuntimeBoundary(unittest.TestCase):
    """What a fresh interpreter has loaded after importing one side."""

    def assertStandsOnTheLayer(self, code, own):
        modules = loaded_after(code)
        forbidden = [m for m in modules if within(m, FORBIDDEN)]
        self.assertEqual(forbidden, [], f"{code!r} loaded daemon-only modules")
        project = [m for m in modules if m.split(".")[0] in ("sysadmd", "bridge")]
        outside = [m for m in project if m != "sysadmd" and not within(m, own + LAYER)]
        self.assertEqual(outside, [], f"{code!r} loaded modules outside {own} and the shared layer")
        self.assertTrue(any(within(m, LAYER) for m in project), project)  # it did load something
        return modules

    def test_the_bridge_tap(self):
        self.assertStandsOnTheLayer("import bridge.tap", ("bridge",))

    def test_the_client_entry_point_and_its_default_socket(self):
        modules = self.assertStandsOnTheLayer(
            "import sysadmd.client.main\nfrom sysadmd.client.connect import default_socket\ndefault_socket()",
            ("sysadmd.client",))
        self.assertIn("sysadmd.client.main", modules)

    def test_the_console_scripts(self):
        scripts = console_script_modules()
        self.assertEqual(scripts["sysadm"], "sysadmd.client.main")
        self.assertStandsOnTheLayer(f"import {scripts['sysadm']}", ("sysadmd.client",))
        self.assertStandsOnTheLayer(f"import {scripts['sysadm-bridge']}", ("bridge",))

    def test_every_module_of_the_bridge(self):
        modules = [m for m in ImportGraph(["bridge"]).files]
        self.assertStandsOnTheLayer("\n".join(f"import {m}" for m in modules), ("bridge",))

    def test_every_module_of_the_client(self):
        modules = [m for m in ImportGraph(["sysadmd.client"]).files]
        self.assertStandsOnTheLayer("\n".join(f"import {m}" for m in modules), ("sysadmd.client",))

    def test_every_module_of_the_layer(self):
        modules = [m for m in ImportGraph(list(LAYER)).files]
        self.assertStandsOnTheLayer("\n".join(f"import {m}" for m in modules), ())


class ClientDefaults(unittest.TestCase):
    def test_the_client_default_socket_is_the_daemon_default(self):
        """runtime.paths computes the socket the daemon's Config does with STATE_DIR and
        SOCKET empty; the client uses the first without loading the second."""
        from sysadmd import config as configmod
        from sysadmd.runtime import paths

        for euid in (0, 1000):
            with mock.patch.object(os, "geteuid", return_value=euid), \
                    mock.patch.dict(os.environ, {"XDG_STATE_HOME": "/nonexistent/state"}):
                self.assertEqual(paths.default_socket_path(), configmod.load(None).socket, euid)
                self.assertEqual(paths.default_state_dir(), configmod.load(None).state_dir, euid)
        self.assertIs(configmod.SYSTEM_SOCKET, paths.SYSTEM_SOCKET)


# --- close codes ------------------------------------------------------------------------
CLOSE_CALLS = {"close", "close_with", "close_where", "sendClose", "sendCloseFrame", "shut", "failConnection"}


def close_code_problems(graph: ImportGraph):
    problems = []
    for module, path in sorted(graph.files.items()):
        if module == "sysadmd.wire.close":
            continue
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        where = os.path.relpath(path, ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, int):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id.startswith("CLOSE_"):
                        problems.append(f"{where}:{node.lineno}: defines {target.id}; close codes belong in "
                                        "sysadmd/wire/close.py")
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if name not in CLOSE_CALLS:
                    continue
                for arg in list(node.args) + [k.value for k in node.keywords]:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, int) and 1000 <= arg.value <= 4999:
                        problems.append(f"{where}:{node.lineno}: {name}(…{arg.value}…): use the name from "
                                        "sysadmd/wire/close.py")
    return problems


class CloseCodes(unittest.TestCase):
    def test_close_codes_are_defined_once(self):
        problems = close_code_problems(ImportGraph(["sysadmd", "bridge"]))
        if problems:
            self.fail("close codes outside sysadmd/wire/close.py:\n  " + "\n  ".join(problems))

    def test_each_code_has_a_name_and_a_meaning(self):
        from sysadmd.wire import close

        with open(close.__file__) as f:
            lines = [line for line in f if re.match(r"CLOSE_[A-Z_]+ = \d+", line)]
        self.assertEqual(len(lines), len(close.ALL))
        self.assertEqual(len(set(close.ALL)), len(close.ALL))
        for line in lines:
            self.assertRegex(line, r"^CLOSE_[A-Z_]+ = 1\d{3}  # \S.{10,}$")

    def test_the_check_sees_a_bare_code(self):
        root = short_tempdir(self)
        os.makedirs(os.path.join(root, "pkg"))
        with open(os.path.join(root, "pkg", "__init__.py"), "w") as f:
            f.write("CLOSE_POLICY = 1008\n\ndef stop(session):\n    session.close('bye', 1001)\n"
                    "    session.close_with(code=1011, reason='x')\n    session.close('fine', 5)\n")
        problems = close_code_problems(ImportGraph(["pkg"], root=root))
        self.assertEqual(len(problems), 3, problems)
        self.assertIn("defines CLOSE_POLICY", problems[0])
        self.assertIn("close(…1001…)", problems[1])
        self.assertIn("close_with(…1011…)", problems[2])
