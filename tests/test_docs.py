"""The documents in docs/ stay in step with the code.

* docs/protocol.md and docs/architecture.md exist and the README links both;
* every route a running daemon serves (``namespace/name`` in its Api's route table), every
  ``rpc/settings`` action, every event type and every ``rpc/logs`` log name is named in
  docs/protocol.md, so a new API cannot land undocumented;
* every ``docs/protocol.md §N`` that a docstring or comment cites is a section of it;
* no source file cites design notes that are not in the repository.

(That every config key is in conf/sysadmd.conf is checked by tests/test_config.py.)
"""

from __future__ import annotations

import os
import re

from twisted.internet import defer
from twisted.trial import unittest

from tests.support import FakePasswords, make_config, short_tempdir, start_daemon

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOCOL = os.path.join(ROOT, "docs", "protocol.md")
ARCHITECTURE = os.path.join(ROOT, "docs", "architecture.md")
# Trees whose files must cite only documents in the repository.
SOURCE_TREES = ("sysadmd", "bridge", "tests", "twisted", "bench", "scripts", "conf")
SOURCE_SUFFIXES = (".py", ".js", ".sh", ".conf", ".service", ".md")
# Citations of design notes kept outside the repository (this file, which names them, is
# not scanned).
FOREIGN_DOCUMENTS = re.compile(r"DECISIONS\.md|DECISIONS §|-wire\.md|\bseed 0\d\d\b|\.\./shared/")
CITATION = re.compile(r"docs/protocol\.md((?:[ ,/]*§\d+(?:\.\d+)?)+)")


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def source_files():
    for tree in SOURCE_TREES:
        for directory, subdirs, files in os.walk(os.path.join(ROOT, tree)):
            subdirs[:] = [d for d in subdirs if not d.startswith(".") and d not in ("__pycache__", "node_modules")]
            for name in files:
                path = os.path.join(directory, name)
                if name.endswith(SOURCE_SUFFIXES) and path != os.path.abspath(__file__):
                    yield path


def protocol_sections(text: str) -> set:
    """Section numbers of docs/protocol.md: "## 8. Bridge framing" → 8, "### 8.1 …" → 8.1."""
    return {m.group(1) for m in re.finditer(r"^#{2,4} (\d+(?:\.\d+)?)\.? ", text, re.MULTILINE)}


class DocumentsExist(unittest.TestCase):
    def test_both_documents_exist_and_say_something(self):
        for path in (PROTOCOL, ARCHITECTURE):
            self.assertTrue(os.path.isfile(path), f"{os.path.relpath(path, ROOT)} is missing")
            self.assertGreater(len(read(path)), 2000, f"{os.path.relpath(path, ROOT)} is nearly empty")

    def test_readme_links_both(self):
        readme = read(os.path.join(ROOT, "README.md"))
        section = readme.split("## Where things are", 1)
        self.assertEqual(len(section), 2, "README.md has no 'Where things are' section")
        for name in ("docs/protocol.md", "docs/architecture.md"):
            self.assertIn(name, section[1], f"README's 'Where things are' does not mention {name}")

    def test_protocol_has_a_deviations_section(self):
        self.assertRegex(read(PROTOCOL), r"(?m)^## \d+\. Deliberate deviations from upstream, and why$")


class NoForeignCitations(unittest.TestCase):
    def test_no_source_file_cites_documents_outside_the_repository(self):
        offenders = []
        for path in source_files():
            for number, line in enumerate(read(path).splitlines(), 1):
                if FOREIGN_DOCUMENTS.search(line):
                    offenders.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
        self.assertEqual(offenders, [], "cite docs/protocol.md or docs/architecture.md instead")

    def test_the_pattern_catches_what_it_is_meant_to(self):
        # The check above passes trivially if the pattern matches nothing: show it does.
        for text in ("see upstream-server-wire.md §5", "DECISIONS.md §3", "(DECISIONS §3)",
                     "shape of seed 001", "../shared/spec"):
            self.assertIsNotNone(FOREIGN_DOCUMENTS.search(text), text)
        self.assertIsNone(FOREIGN_DOCUMENTS.search("docs/protocol.md §8.1, random.seed(0)"))

    def test_every_cited_protocol_section_exists(self):
        sections = protocol_sections(read(PROTOCOL))
        self.assertIn("8.1", sections)  # the heading pattern reads the document
        cited = 0
        missing = []
        for path in source_files():
            for match in CITATION.finditer(read(path)):
                for number in re.findall(r"§(\d+(?:\.\d+)?)", match.group(1)):
                    cited += 1
                    if number not in sections:
                        missing.append(f"{os.path.relpath(path, ROOT)}: docs/protocol.md §{number}")
        self.assertGreater(cited, 5, "docstrings should point at docs/protocol.md sections")
        self.assertEqual(missing, [], f"sections that docs/protocol.md does not have (it has {sorted(sections)})")


class EveryApiIsDocumented(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        cfg = make_config(short_tempdir(self))
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({}))
        self.protocol = read(PROTOCOL)

    def test_every_route_is_named(self):
        routes = sorted(f"{r.namespace}/{r.name}" for r in self.running.server.api.routes.values())
        # A daemon that serves nothing would make this test pass vacuously.
        for expected in ("rpc/identify", "rpc/auth_ssl", "rpc/dispatcher", "events/subscribe"):
            self.assertIn(expected, routes)
        missing = [route for route in routes
                   if not re.search(rf"(?<![\w/]){re.escape(route)}(?![\w/])", self.protocol)]
        self.assertEqual(missing, [], "routes the daemon serves that docs/protocol.md does not name")

    def test_every_settings_action_is_named(self):
        actions = sorted(self.running.daemon.settings)
        self.assertIn("add_bridge", actions)
        missing = [a for a in actions if f'"action":"{a}"' not in self.protocol]
        self.assertEqual(missing, [], "rpc/settings actions without their request shape in docs/protocol.md")

    def test_every_event_type_and_log_is_named(self):
        server = self.running.server
        self.assertIn("system-state", server.events.names())
        self.assertIn("events-state", server.logs.names)
        missing = [name for name in server.events.names() if f"**{name}**" not in self.protocol]
        missing += [name for name in server.logs.names if f"`{name}`" not in self.protocol]
        self.assertEqual(missing, [], "event types or rpc/logs log names that docs/protocol.md does not describe")
