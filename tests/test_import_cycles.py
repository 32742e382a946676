"""No import cycle in sysadmd/ or bridge/ (issue 9 item 1).

The graph is read from the source with :mod:`ast` (see ``tests/import_graph.py``): an edge
for every import that runs when a module is imported (module level, class bodies, module
level ``if``/``try``; not inside functions, not under ``TYPE_CHECKING``), to every module
that import runs, packages included: ``from a.b import c`` runs ``a/__init__``,
``a/b/__init__`` and ``a/b/c``.  So a package ``__init__`` that imports its own modules
makes a cycle with any of them that imports a sibling; keep ``__init__`` files to a
docstring.
"""

from __future__ import annotations

import os
import textwrap

from twisted.trial import unittest

from tests.import_graph import ImportGraph, cycles
from tests.support import short_tempdir


def describe(found):
    return "\n".join("  " + " -> ".join(cycle) for cycle in found)


class NoImportCycles(unittest.TestCase):
    def test_the_project_has_no_import_cycle(self):
        graph = ImportGraph(["sysadmd", "bridge"])
        self.assertGreater(len(graph.files), 100)  # the walk found the tree
        found = cycles(graph.edges())
        if found:
            self.fail("import cycles (module-level imports, package __init__ files included):\n" + describe(found))

    def test_package_inits_are_docstrings(self):
        """Packages whose __init__ is imported by their own modules import nothing there."""
        graph = ImportGraph(["sysadmd", "bridge"])
        for package in ("sysadmd", "sysadmd.dispatcher", "sysadmd.bridgelink", "sysadmd.wire", "sysadmd.runtime",
                        "sysadmd.auth", "sysadmd.rpc", "sysadmd.events", "sysadmd.transports", "sysadmd.client",
                        "sysadmd.admin", "bridge"):
            self.assertEqual([i.target for i in graph.imports[package]], [], package)


class TheCheckFindsCycles(unittest.TestCase):
    """The graph and the cycle search on a small tree written here."""

    def tree(self, files):
        root = short_tempdir(self)
        for path, text in files.items():
            full = os.path.join(root, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w") as f:
                f.write(textwrap.dedent(text))
        return root

    def test_an_init_that_imports_its_modules_makes_a_cycle(self):
        # pkg/__init__ imports pkg.service, whose "from pkg.runner import …" runs pkg/__init__ again
        root = self.tree({
            "pkg/__init__.py": "from pkg.service import Service\n",
            "pkg/service.py": "from pkg.runner import spawn\n",
            "pkg/runner.py": "import os\n",
        })
        self.assertEqual(cycles(ImportGraph(["pkg"], root=root).edges()), [["pkg", "pkg.service", "pkg"]])
        with open(os.path.join(root, "pkg", "__init__.py"), "w") as f:
            f.write('"""docstring only"""\n')
        self.assertEqual(cycles(ImportGraph(["pkg"], root=root).edges()), [])

    def test_a_longer_cycle_is_printed_whole(self):
        root = self.tree({
            "pkg/__init__.py": "",
            "pkg/a.py": "import pkg.b\n",
            "pkg/b.py": "class B:\n    from pkg import c\n",
            "pkg/c.py": "from pkg.a import A\n",
        })
        found = cycles(ImportGraph(["pkg"], root=root).edges())
        self.assertEqual(found, [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]])
        self.assertIn("pkg.a -> pkg.b -> pkg.c -> pkg.a", describe(found))

    def test_function_level_and_type_checking_imports_do_not_count(self):
        root = self.tree({
            "pkg/__init__.py": '"""docstring only"""\n',
            "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n",
            "pkg/b.py": "def f():\n    from pkg import a\n    return a\n",
        })
        graph = ImportGraph(["pkg"], root=root)
        self.assertEqual(cycles(graph.edges()), [])
        self.assertEqual(cycles(graph.edges(module_level_only=False)), [["pkg.a", "pkg.b", "pkg.a"]])

    def test_relative_imports_resolve(self):
        root = self.tree({
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "from . import x\n",
            "pkg/sub/x.py": "import os\n",
            "pkg/sub/y.py": "try:\n    from ..sub import x\nexcept ImportError:\n    x = None\n",
        })
        graph = ImportGraph(["pkg"], root=root)
        self.assertEqual(graph.edges()["pkg.sub.y"], {"pkg", "pkg.sub", "pkg.sub.x"})
        self.assertEqual(graph.edges()["pkg.sub"], {"pkg", "pkg.sub.x"})
