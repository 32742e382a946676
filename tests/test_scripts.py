"""scripts/run.sh installs the project only when the venv is new or the project changed."""

import os
import shutil
import subprocess
import tempfile

import pytest
from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAKE_PYTHON = """#!/bin/sh
echo "python $*" >> "$(dirname "$0")/../calls.log"
"""
FAKE_TWISTD = """#!/bin/sh
echo "twistd $*" >> "$(dirname "$0")/../calls.log"
"""


@pytest.mark.slow  # child processes
class RunScriptTests(unittest.TestCase):
    def setUp(self):
        self.top = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.top)
        os.makedirs(os.path.join(self.top, "scripts"))
        shutil.copy(os.path.join(ROOT, "scripts", "run.sh"), os.path.join(self.top, "scripts"))
        for d in ("sysadmd", "bridge", os.path.join("twisted", "plugins"), os.path.join(".venv", "bin")):
            os.makedirs(os.path.join(self.top, d))
        self.write("setup.py", "# setup\n")
        self.write("sysadmd/core.py", "X = 1\n")
        self.write("bridge/relay.py", "Y = 1\n")
        self.write(".venv/bin/python", FAKE_PYTHON, mode=0o755)
        self.write(".venv/bin/twistd", FAKE_TWISTD, mode=0o755)

    def write(self, rel, text, mode=0o644):
        path = os.path.join(self.top, rel)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)

    def run_script(self):
        subprocess.run(["bash", os.path.join(self.top, "scripts", "run.sh"), "--port", "1"], check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        with open(os.path.join(self.top, ".venv", "calls.log")) as f:
            lines = f.read().splitlines()
        os.unlink(os.path.join(self.top, ".venv", "calls.log"))
        return lines

    def test_installs_once_then_only_after_a_change(self):
        first = self.run_script()
        self.assertEqual(first, ["python -m pip install --quiet .", "twistd -n --pidfile= sysadmd --port 1"])
        # Nothing changed: no pip (so it works offline), straight to twistd.
        self.assertEqual(self.run_script(), ["twistd -n --pidfile= sysadmd --port 1"])
        self.write("sysadmd/core.py", "X = 2\n")
        self.assertEqual(self.run_script()[0], "python -m pip install --quiet .")
        self.write("bridge/new.py", "Z = 1\n")
        self.assertEqual(self.run_script()[0], "python -m pip install --quiet .")
        self.assertEqual(self.run_script(), ["twistd -n --pidfile= sysadmd --port 1"])
