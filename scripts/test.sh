#!/usr/bin/env bash
# Set up a virtualenv with everything the tests need, check the code with pyflakes,
# then run the suite; arguments go to pytest (e.g. -m "not slow" -n 2 for the fast
# inner loop: tests that start real daemons or child processes are marked slow).
#
# The tests import the checkout itself (and put it on PYTHONPATH for the daemons they
# start), so .venv only has to hold the dependencies: the project is (re)installed when
# the venv is new or setup.py changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.sysadmd-test-installed
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
digest=$(cat setup.py bridge/relayscan.c | sha256sum | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$digest" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet ".[test]"
    echo "$digest" > "$STAMP"
fi
# Lint first: an unused import or an undefined name fails the run in seconds.
.venv/bin/python -m pyflakes setup.py sysadmd bridge twisted/plugins tests bench
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@" tests
